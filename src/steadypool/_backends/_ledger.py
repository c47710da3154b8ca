"""The ledger: every item's life on a backend that queues items itself, and its one outcome.

Pure bookkeeping, no threads, no processes: the processes and Ray backends move items
(spawn, send, receive, kill) and tell the ledger what happened; the ledger decides what
follows and delivers each item's outcome to its owner, exactly once.

Life of one item (a `Run`)::

    add() --> QUEUED --take(holder)--> HELD by a worker --settle()--> CLOSED (outcome)
                 ^                         |
                 |   release(holder) ------+  (its worker died, was killed or stopped)
                 +------ REQUEUED <--------+  (sent ahead and not the culprit, or retried)

* `take` hands a worker the next runs, calling ``owner.begin`` once per run (a run that
  comes back from a dead worker has begun already: its future stays RUNNING).
* `settle` (one run) and `close_held` (a batch) are the one gate to an outcome: they
  move a run to CLOSED, and a run already CLOSED is not delivered again.  So whoever
  learns of an outcome first (a result frame, a drain, the watchdog's `fail`, a crash,
  a failed send) wins, and the others do nothing: every item gets exactly one outcome,
  by construction.
* `release` is what a worker's end means for the runs it held: the culprit (the item it
  was running, or whose result died on the way back) fails or, with retries left, goes
  again; the others go back to the head of the queue in order.
* `cancel` (``shutdown(cancel_futures=True)``) drops queued runs that have not begun;
  a REQUEUED run's owner was told it runs, so it stays and runs (issue 17, hole 3).
* `break_pool` fails every queued run with the pool's `BrokenPool`.

Counts: `done` and `failed` count every outcome delivered, with or without a worker
(an argument that cannot be pickled fails its item before any worker sees it).

Locking: `_lock` guards the queue, every run's `state`/`holder`, every holder's `held`
and the counts.  Owners are called outside it (a Future's done-callbacks run user
code), except ``owner.begin`` in `take`, which only flips the owner's own state.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import threading
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .._exceptions import BrokenPool, PoolClosed

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

    from .._records import Task
    from .._worker import Worker

__all__ = ["Ledger", "Run", "RunState", "ahead"]


class RunState(enum.Enum):
    """Where a run is in its life (see the module docstring)."""

    QUEUED = "queued"  # waiting for a worker; its owner has not been told it begins
    REQUEUED = "requeued"  # waiting again after a worker lost it; it has begun
    HELD = "held"  # handed to a worker: sent ahead, running, or its result on the way
    CLOSED = "closed"  # its outcome is delivered, or it was dropped or skipped


_ids = itertools.count()


class Run:
    """One item on its way through a backend.

    Attributes:
        key, fn, args, kwargs, owner, queued_at: The task as the core submitted it.
        task_id: Identifies the run on the wire (unique in this process).
        attempts: 1, then 2, 3... each time it goes again after a crash or a kill.
        state: Its `RunState` (written under the ledger's lock).
        holder: The worker holding it while HELD (a backend's own object).
        started: ``time.monotonic()`` when its worker started it (as last known).
        solo: It must go alone to a worker (to find which item of a batch fails).
        withdrawn: Its worker was told not to start it (its owner stopped waiting).
        wire: What the transport made of it to send it (pickled frames...), or None.
    """

    __slots__ = (
        "args",
        "attempts",
        "fn",
        "holder",
        "key",
        "kwargs",
        "owner",
        "queued_at",
        "solo",
        "started",
        "state",
        "task_id",
        "wire",
        "withdrawn",
    )

    def __init__(self, task: Task, wire: Any = None) -> None:
        self.key, self.fn, self.args, self.kwargs, self.owner, self.queued_at = task
        self.task_id = next(_ids)
        self.attempts = 1
        self.state = RunState.QUEUED
        self.holder: Hashable | None = None
        self.started = 0.0
        self.solo = False
        self.withdrawn = False
        self.wire = wire

    @property
    def position(self) -> int | None:
        """The input position it stands for (None for `submit`)."""
        return self.owner.position(self.key)

    def forget(self) -> None:
        """Let go of the function, arguments and wire form (its outcome is delivered,
        or it was discarded): nothing is held after delivery."""
        self.fn = _spent
        self.args, self.kwargs, self.wire = (), None, None


def _spent() -> None:
    """Stands for the function of a run whose outcome is delivered."""


def ahead(task_time: float, *, below: float, budget: float, most: int) -> int:
    """How many items one worker holds at once: 1 while items average `below` seconds
    or more; else `budget` seconds' worth, at least 2 (so it never waits for the next
    between two items) and at most `most`.  The one send-ahead formula (processes send
    ahead, Ray sends batches)."""
    if task_time >= below:
        return 1
    return max(2, min(most, int(budget / max(task_time, 1e-7))))


class Ledger:
    """Every item of one backend, from `add` to its one outcome (module docstring).

    Args:
        retries: How often a run whose worker died or was killed with it goes again.
    """

    def __init__(self, *, retries: int = 0) -> None:
        self.retries = retries
        self._lock = threading.Lock()
        self._queue: deque[Run] = deque()
        self._held: dict[Hashable, OrderedDict[int, Run]] = {}
        self.closed = False  # no more `add` (shutdown); set under `_lock`
        self.broken: BrokenPool | None = None  # set once, under `_lock`
        self.done = 0
        self.failed = 0

    # --- queue -------------------------------------------------------------------------

    def add(self, run: Run) -> bool:
        """Queue `run`; True when the queue was empty before (the caller may wake its
        dispatcher only then).

        Raises:
            PoolClosed: After `close`.
            BrokenPool: After `break_pool`.
        """
        with self._lock:
            self._check_open()
            was_empty = not self._queue
            self._queue.append(run)
        return was_empty

    def check_open(self) -> None:
        """Raise what `add` would raise now (a cheap early check, before pickling)."""
        # Unlocked read: both fields are set once and never cleared, so a stale read
        # only lets a submit get as far as `add`, which checks again under the lock.
        self._check_open()

    def _check_open(self) -> None:
        if self.closed:
            raise PoolClosed("cannot submit to a steadypool Pool after shutdown()")
        if self.broken is not None:
            raise self.broken

    def close(self) -> None:
        """No more `add` (shutdown)."""
        with self._lock:
            self.closed = True

    @property
    def queued(self) -> int:
        """Runs waiting for a worker.  Unlocked: ``len`` of a deque is atomic under the
        GIL, and the figure is a snapshot anyway."""
        return len(self._queue)

    def idle(self) -> bool:
        """Nothing queued and nothing held by any worker."""
        with self._lock:
            return not self._queue and not any(self._held.values())

    # --- workers -----------------------------------------------------------------------

    def take(self, holder: Hashable, count: int, *, same_fn: bool = False) -> list[Run]:
        """Hand `holder` up to `count` runs (fewer if it holds some already), in queue
        order, whose owners still want them; a `solo` run goes alone, and with
        `same_fn` every run has the first one's function (a batch)."""
        taken: list[Run] = []
        with self._lock:
            held = self._held.setdefault(holder, OrderedDict())
            room = count - len(held)
            queue = self._queue
            while len(taken) < room and queue:
                run = queue[0]
                if taken and (run.solo or (same_fn and run.fn is not taken[0].fn)):
                    break  # it starts the next batch
                queue.popleft()
                if run.state is RunState.QUEUED:
                    wanted = run.owner.begin(run.key)
                else:  # REQUEUED: it has begun; a stream that ended waits for it no more
                    wanted = run.owner.wanted(run.key)
                if not wanted:
                    run.state = RunState.CLOSED  # its owner gave up on it: no outcome
                    run.forget()
                    continue
                run.state, run.holder = RunState.HELD, holder
                held[run.task_id] = run
                taken.append(run)
                if run.solo:
                    break
        return taken

    def held(self, holder: Hashable) -> list[Run]:
        """The runs `holder` holds, in the order it was given them."""
        with self._lock:
            held = self._held.get(holder)
            return [] if held is None else list(held.values())

    def holds(self, holder: Hashable) -> int:
        """How many runs `holder` holds.  Unlocked: ``len`` of a dict is atomic under the
        GIL, and the figure is a snapshot, as `queued`."""
        held = self._held.get(holder)
        return 0 if held is None else len(held)

    def find(self, holder: Hashable, task_id: int) -> Run | None:
        """The run `holder` holds by that task id, if it still does."""
        with self._lock:
            held = self._held.get(holder)
            return None if held is None else held.get(task_id)

    def unwanted(self, holder: Hashable) -> list[Run]:
        """The runs `holder` holds whose owners no longer want them and that it was not
        told of yet; marked `withdrawn` (the caller tells the worker)."""
        with self._lock:
            runs = [
                run
                for run in self._held.get(holder, {}).values()
                if not run.withdrawn and not run.owner.wanted(run.key)
            ]
            for run in runs:
                run.withdrawn = True
        return runs

    def release(
        self, holder: Hashable, culprit: Run | None = None, *, retry: bool = True
    ) -> Run | None:
        """`holder` ended (died, was killed, was stopped): every run it held goes back to
        the head of the queue in order, but `culprit` (the run it ran, or whose result
        died with it), which goes back too only with `retry` while it has retries left.

        Returns `culprit` if it did not go back: the caller settles it with its error
        (it stays HELD until then, so nobody else settles it).
        """
        with self._lock:
            held = self._held.pop(holder, OrderedDict())
            keep = culprit if culprit is not None and culprit.task_id in held else None
            if keep is not None and retry and keep.attempts <= self.retries:
                keep.attempts += 1
                keep = None
            back = [run for run in held.values() if run is not keep]
            for run in back:
                run.state, run.holder = RunState.REQUEUED, None
            self._queue.extendleft(reversed(back))
            if keep is not None:
                # Held by nobody now, but HELD: only `settle` may end it.
                self._held.setdefault(_ORPHANS, OrderedDict())[keep.task_id] = keep
        return keep

    def requeue(self, runs: Iterable[Run], *, solo: bool) -> None:
        """Put `runs` (held, not run, in order) back at the head of the queue; with `solo`
        each goes alone to a worker (a batch failed as a whole and each item must answer
        for itself)."""
        runs = list(runs)
        with self._lock:
            mine = [r for r in runs if r.state is RunState.HELD]
            for run in mine:
                held = self._held.get(run.holder)
                if held is not None:
                    held.pop(run.task_id, None)
                run.state, run.holder = RunState.REQUEUED, None
                run.solo = run.solo or solo
            self._queue.extendleft(reversed(mine))

    # --- outcomes ----------------------------------------------------------------------

    def _claim(self, run: Run) -> bool:
        if run.state is RunState.CLOSED:
            return False
        if run.state is RunState.HELD:
            held = self._held.get(run.holder)
            if held is not None:
                held.pop(run.task_id, None)
            orphans = self._held.get(_ORPHANS)
            if orphans is not None:
                orphans.pop(run.task_id, None)
        else:
            with contextlib.suppress(ValueError):  # never queued (failed at submit)
                self._queue.remove(run)
        run.state, run.holder = RunState.CLOSED, None
        return True

    def settle(self, run: Run, ok: bool, value: Any, worker: Worker | None) -> bool:
        """Deliver `run`'s one outcome (a result when `ok`, else the exception `value`),
        unless another path delivered it already (False)."""
        with self._lock:
            if not self._claim(run):
                return False
            self.done += 1
            if not ok:
                self.failed += 1
        self._deliver(run, ok, value, worker)
        return True

    def close_held(self, holder: Hashable, task_ids: Iterable[int]) -> list[Run | None]:
        """Close the runs `holder` holds by these task ids, in one go (a batch of
        outcomes arrived): the caller owns each returned run's outcome, and delivers it
        with `deliver` (None where the holder no longer holds that id: it was settled
        by another path, or went back to the queue)."""
        with self._lock:
            held = self._held.get(holder)
            if held is None:
                return [None for _ in task_ids]
            runs = [held.pop(task_id, None) for task_id in task_ids]
            for run in runs:
                if run is not None:
                    run.state, run.holder = RunState.CLOSED, None
        return runs

    def deliver(self, run: Run, ok: bool, value: Any, worker: Worker | None) -> None:
        """Deliver the outcome of a run the caller closed with `close_held` (and counts
        with `count`, once per batch)."""
        self._deliver(run, ok, value, worker)

    def count(self, done: int, failed: int) -> None:
        """Count outcomes delivered with `deliver`."""
        with self._lock:
            self.done += done
            self.failed += failed

    @staticmethod
    def _deliver(run: Run, ok: bool, value: Any, worker: Worker | None) -> None:
        key, owner = run.key, run.owner
        run.forget()
        owner.put((key, ok, value, worker))

    def fail_held(self, holder: Hashable, error: Callable[[Run], BaseException]) -> None:
        """Fail every run `holder` still holds (the pool gave up on it at stop)."""
        for run in self.held(holder):
            self.settle(run, False, error(run), None)

    # --- the pool ------------------------------------------------------------------------

    def cancel(self, free: int) -> None:
        """``shutdown(cancel_futures=True)``: drop the queued runs that have not begun,
        but the first `free` (the idle workers' next items: they count as started, as
        with ThreadPoolExecutor); their owners learn it through ``owner.drop``.  A
        REQUEUED run has begun (its future is RUNNING) and stays: it runs."""
        with self._lock:
            dropped = []
            kept: deque[Run] = deque()
            for run in self._queue:
                if run.state is RunState.QUEUED and free <= 0:
                    run.state = RunState.CLOSED
                    dropped.append(run)
                    continue
                if run.state is RunState.QUEUED:
                    free -= 1
                kept.append(run)
            self._queue = kept
        for run in dropped:
            key, owner = run.key, run.owner
            run.forget()
            owner.drop(key)

    def break_pool(self, broken: BrokenPool) -> BrokenPool:
        """The pool cannot run tasks: remember why (the first reason wins) and fail every
        queued run with it.  Returns the reason in force."""
        with self._lock:
            if self.broken is None:
                self.broken = broken
            broken = self.broken
            runs = [(run, run.state is RunState.REQUEUED) for run in self._queue]
            self._queue.clear()
            for run, _begun in runs:
                run.state = RunState.CLOSED
        for run, begun in runs:
            if not begun and not run.owner.begin(run.key):
                run.forget()
                continue  # a cancelled stream's: nobody waits
            with self._lock:
                self.done += 1
                self.failed += 1
            self._deliver(run, False, broken, None)
        return broken


# The holder of culprits `release` returned, until they are settled.
_ORPHANS: Any = ("released",)
