"""Ray backend: one Ray actor per worker, on a local instance or a cluster.

Data flow::

    submit() --(_lock)--> _pending --> an idle actor gets a batch of the next items:
                          actor.run_batch.remote(fn_ref, [(task id, args, kwargs), ...])
    Ray completes the call's future --done callback (a Ray thread)--> _finished():
        owner.put(outcome) per item, then the next batch goes to the same actor
    watchdog --busy()/stack()/fail()--> fail() kills the actor (ray.kill), replaces it

Batches: one call per actor at a time, of one item while items take BATCH_BELOW or
more, else of as many (with the same function) as take BATCH_TIME (at most
BATCH_MAX), so Ray's ~1 ms per call is paid once per batch.  Each item keeps its own
outcome, error and position.  A batch still running after DRAIN_AFTER is *drained*
by the poller thread, then again at doubling intervals (at most DRAIN_MAX apart): a
control call, run by the actor beside the batch, hands over the outcomes finished so
far and says which item runs and since when.  So a result never waits long for the
rest of its batch (nor forever behind an item that waits for the consumer), and
timeouts and stall reports name one item; `fail()` drains once more before it kills,
to be sure of the item.  A batch whose actor dies is run again one item per call, so
the crash names its own item (those whose results died with the actor run again).

Who owns what: `_lock` guards `_pending`, `_closed`, `_broken`, `_slots`, every
`slot.batch` and every `run.closed`.  A run's outcome belongs to whoever sets its
`closed`: the batch's done-callback or a drain's (delivering what the actor
returned: each outcome comes back once, in one or the other), or `fail()` and the
crash handler (claiming what is left).  So every item gets exactly one outcome, also
when an actor dies (`WorkerCrashed`, retried up to `retries` times on a fresh actor)
or is killed by the watchdog.

What wakes whom: no thread of ours waits on Ray.  Ray completes each call's future;
the callbacks deliver and dispatch.  ``shutdown(wait=True)`` waits on `_idle`
(a Condition notified whenever an actor finishes or a drain returns) in slices.  The
poller sleeps on `_poke` (set when a batch is sent, and at the end) until the next
drain is due.

Ray is imported only when this backend is used.  If no Ray instance is connected, the
first pool starts a local one sized to the machine, and the last pool that used it
shuts it down: steadypool never leaves behind a Ray instance it started.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import _remote
from .._devices import activate
from .._exceptions import BrokenPool, PoolClosed, WorkerCrashed
from .._records import SETUP, Busy, setup_busy
from .._stats import WorkerStats, count_failure, per_worker
from .._worker import Worker, bind, describe
from ._base import Backend, FunctionCache, Run, give_up_on_setup, take_runnable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._records import Task

__all__ = ["BACKEND", "RayBackend"]

logger = logging.getLogger("steadypool")
_JOIN_SLICE = 0.5
_START_DEATHS = 5  # actors of one index dying in a row before setup: no node can host it
BATCH_BELOW = 0.005  # seconds: items shorter than this on average go in batches
BATCH_TIME = 0.005  # seconds of work per batch
BATCH_MAX = 256  # items per batch, at most
DRAIN_AFTER = 0.01  # seconds a batch runs before its first drain
DRAIN_MAX = 1.0  # seconds between drains of a long batch, at most
_DRAIN_WAIT = 2.0  # seconds fail() waits for a drain's answer
_pool_ids = itertools.count()

# The Ray instance steadypool started (if any) and how many pools use it.
_ray_lock = threading.Lock()
_ray_users = 0
_ray_started_here = False


def _connect(address: str | None) -> Any:
    global _ray_users, _ray_started_here
    import ray

    with _ray_lock:
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
                except ConnectionError as exc:
                    raise ConnectionError(
                        f"no Ray cluster at address {address!r}: {exc} (start one with "
                        "`ray start --head`, or give no address for a local Ray instance)"
                    ) from exc
            else:
                ray.init(
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
                _ray_started_here = True
        _ray_users += 1
    return ray


def _disconnect() -> None:
    global _ray_users, _ray_started_here
    import ray

    with _ray_lock:
        _ray_users -= 1
        if _ray_users == 0 and _ray_started_here:
            ray.shutdown()
            _ray_started_here = False


class _Actor:
    """The body of one worker actor (wrapped with ray.remote on first use)."""

    def __init__(self, worker: Worker, setup: bytes | None) -> None:
        self.worker = worker
        self.setup_bytes = setup
        self.ident = 0
        # The item running now: (task id, time.monotonic() here when it started).
        self.current: tuple[int, float] | None = None
        self.withdrawn: set[int] = set()  # task ids of the running batch not to start
        # Outcomes of the running batch not yet handed to the driver, in order; the
        # batch's thread appends, `drain` (the control thread) takes.  `lock` guards it.
        self.done: list[tuple[int, str, Any, float]] = []
        self.lock = threading.Lock()

    def begin(self) -> tuple[int, str]:
        """Answer as soon as the actor runs: (pid, node id); setup follows."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def setup(self) -> tuple[bool, Any, int, str]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        self.ident = threading.get_ident()  # stack() shows the setup while it runs
        try:
            bind(self.worker)
            activate(self.worker.device)
            if self.setup_bytes is not None:
                self.worker = self.worker.with_state(
                    cloudpickle.loads(self.setup_bytes)(self.worker)
                )
        except BaseException as exc:
            return False, _remote.exception_payload(exc), os.getpid(), node
        return True, None, os.getpid(), node

    def run_batch(
        self,
        fn: Callable[..., Any],
        items: list[tuple[int, tuple[Any, ...], dict[str, Any] | None]],
    ) -> list[tuple[int, str, Any, float]]:
        """Run each item in order; return the outcomes `drain` has not taken: (task id,
        tag, result or exception payload, seconds), tag "ok", "err", or "skipped"
        (withdrawn before it started)."""
        bind(self.worker)
        self.ident = threading.get_ident()
        for task_id, args, kwargs in items:
            if task_id in self.withdrawn:
                with self.lock:
                    self.done.append((task_id, "skipped", None, 0.0))
                continue
            started = time.monotonic()
            self.current = (task_id, started)
            try:
                tag, value = "ok", fn(*args) if kwargs is None else fn(*args, **kwargs)
            except BaseException as exc:
                tag, value = "err", _remote.exception_payload(exc)
            self.current = None
            with self.lock:
                self.done.append((task_id, tag, value, time.monotonic() - started))
            value = None
        self.withdrawn.difference_update(task_id for task_id, _, _ in items)
        with self.lock:
            out, self.done = self.done, []
        return out

    def drain(self) -> tuple[list[tuple[int, str, Any, float]], tuple[int, float] | None]:
        """(the outcomes finished since the last look, (task id, seconds it has run) of
        the item running now or None); a control call, beside the running batch."""
        with self.lock:
            out, self.done = self.done, []
        current = self.current
        return out, None if current is None else (current[0], time.monotonic() - current[1])

    def withdraw(self, task_ids: list[int]) -> None:
        """Do not start these items of the running batch (a control call)."""
        self.withdrawn.update(task_ids)

    def stack(self) -> str:
        frame = sys._current_frames().get(self.ident)
        if frame is None:
            return ""
        return "".join(traceback.format_stack(frame))


def _spent() -> None:
    """Stands for the function of an item whose outcome is delivered."""


class _Run(Run):
    """A `Run` that may have to go alone in a call (after its batch's actor died)."""

    __slots__ = ("closed", "solo", "withdrawn")

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.solo = False
        self.withdrawn = False  # the actor was told not to start it
        # Its outcome is taken care of (delivered, or claimed by fail or a crash); set
        # under `_lock` by whoever does, once per trip to an actor.
        self.closed = False


class _Slot:
    """One actor holding a worker index."""

    __slots__ = (
        "actor",
        "batch",
        "begun",
        "busy",
        "current",
        "draining",
        "drains",
        "failed",
        "items",
        "next_drain",
        "ready",
        "setup_started",
        "waited",
        "where",
        "worker",
    )

    def __init__(self, worker: Worker, actor: Any) -> None:
        self.worker = worker
        self.actor = actor
        self.ready = False
        self.begun = False  # the actor process runs (setup is timed from then)
        self.setup_started: float | None = time.monotonic()  # until setup is done
        # The batch in the actor's call, in order ([] while idle), and when it was sent.
        self.batch: list[_Run] = []
        # The item the actor last said it runs, with its start here.
        self.current: tuple[int, float] | None = None
        self.draining = 0  # drain calls in flight
        self.drains = 0  # drains of this batch so far (they back off)
        self.next_drain = 0.0  # when the poller drains this batch next
        self.where = "actor starting"
        self.items = self.failed = 0
        self.busy = self.waited = 0.0


class RayBackend(Backend):
    """Runs tasks on Ray actors (a local instance, or the cluster at `address`)."""

    options = frozenset({"retries", "address"})
    can_kill = True
    replacing = "its Ray actor was killed and a fresh one took its place"

    def __init__(
        self,
        workers: Sequence[Worker],
        setup: Callable[[Worker], Any] | None,
        *,
        name: str,
        retries: int = 0,
        start_method: str | None = None,
        address: str | None = None,
    ) -> None:
        self.name = name or f"pool{next(_pool_ids)}"
        self.last_done = 0.0
        self._retries = retries
        try:
            self._setup = None if setup is None else cloudpickle.dumps(setup)
        except Exception as why:
            raise TypeError(f"setup {setup!r} cannot be sent to Ray actors: {why}") from why
        self._ray = _connect(address)
        self._actor_class = self._ray.remote(concurrency_groups={"control": 1})(_Actor)
        # Re-entrant: a call's done-callback may run at once, in the thread that added it.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._pending: deque[_Run] = deque()
        self._closed = False
        self._disconnected = False
        self._broken: BrokenPool | None = None
        self._workers = list(workers)
        self._slots: dict[int, _Slot] = {}
        self._history: list[_Slot] = []
        self._fn_refs: FunctionCache[Any] = FunctionCache(128)
        self._start_deaths: dict[int, int] = {}  # index -> actors that died starting, in a row
        self._setup_kills: dict[int, int] = {}  # index -> setups killed by the watchdog
        self._poke = threading.Event()
        self._poller = threading.Thread(
            target=self._poll, name=f"steadypool-{self.name}-drain", daemon=True
        )
        with self._lock:
            for worker in self._workers:
                self._start(worker)
        self._poller.start()

    # --- actors ------------------------------------------------------------------------------

    def _start(self, worker: Worker) -> None:
        """Create the actor for `worker` and run its setup (caller holds `_lock`)."""
        # CPU actors reserve no CPU (a pool may have more workers than the cluster has
        # CPUs, e.g. for I/O) and are spread over the nodes; a GPU actor asks for one GPU,
        # which Ray picks and shows it as cuda:0.
        seen: str | None = worker.device
        options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
        if worker.device is not None and worker.device.startswith("cuda"):
            seen, options = "cuda:0", {"num_cpus": 0, "num_gpus": 1}
        actor = self._actor_class.options(name=None, max_concurrency=1, **options).remote(
            Worker(worker.index, seen), self._setup
        )
        slot = _Slot(worker, actor)
        self._slots[worker.index] = slot
        self._history.append(slot)
        actor.begin.remote().future().add_done_callback(
            lambda future, slot=slot: self._begun(slot, future)
        )
        actor.setup.remote().future().add_done_callback(
            lambda future, slot=slot: self._set_up(slot, future)
        )

    def _begun(self, slot: _Slot, future: Any) -> None:
        """The actor runs: its setup is timed (task_timeout) from now, as on the other
        backends; until now it was being scheduled and started (stall reports only)."""
        try:
            pid, node = future.result()
        except Exception:
            return  # it died first: _set_up hears of it too
        with self._lock:
            if slot.setup_started is not None and not slot.begun:
                slot.setup_started = time.monotonic()
                slot.begun = True
                slot.where = f"Ray actor pid {pid} on node {node[:12]}"

    def _set_up(self, slot: _Slot, future: Any) -> None:
        with self._lock:
            current = self._slots.get(slot.worker.index) is slot and slot.setup_started is not None
            slot.setup_started = None
        if not current:
            return  # the watchdog gave up on this setup (fail) and killed the actor
        try:
            ok, error, pid, node = future.result()
        except self._ray.exceptions.RayActorError as exc:
            self._died_starting(slot, exc)
            return
        except Exception as exc:  # the setup call failed without the actor dying
            ok, error, pid, node = False, (exc, "".join(traceback.format_exception(exc))), 0, ""
        if not ok:
            cause, text = error
            broken = BrokenPool(
                f"setup(worker) raised {type(cause).__name__}: {cause} on "
                f"{describe(slot.worker.index, slot.worker.device)} of pool {self.name!r} "
                "(a Ray actor); the pool cannot run tasks. Fix setup (its traceback is the "
                "cause below) and create a new Pool.",
                worker=slot.worker,
            )
            broken.__cause__ = _remote.rebuild_exception(cause, text)
            self._break(broken)
            return
        with self._lock:
            slot.where = f"Ray actor pid {pid} on node {node[:12]}"
            slot.ready = True
            self._start_deaths.pop(slot.worker.index, None)
            self._setup_kills.pop(slot.worker.index, None)
        self._dispatch(slot)

    def _died_starting(self, slot: _Slot, cause: BaseException) -> None:
        """An actor died before its setup finished (its node was lost, it was killed):
        a crash, not a failing setup; start a fresh one, unless this keeps happening."""
        index = slot.worker.index
        with self._lock:
            deaths = self._start_deaths[index] = self._start_deaths.get(index, 0) + 1
            again = deaths < _START_DEATHS and self._broken is None and not self._closed
            if again:
                self._start(slot.worker)
        first = str(cause).splitlines()[0] if str(cause) else ""
        if again:
            logger.warning(
                "steadypool: the Ray actor of %s in pool %r died while starting (%s: %s); "
                "starting a fresh one (likely cause: its node was lost)",
                describe(index, slot.worker.device),
                self.name,
                type(cause).__name__,
                first,
            )
            return
        if self._closed:
            return
        broken = BrokenPool(
            f"the Ray actor of {describe(index, slot.worker.device)} in pool {self.name!r} "
            f"died {deaths} times in a row while starting, last with {type(cause).__name__}: "
            f"{first}; no node of the cluster could host it. Check the cluster (ray status): "
            "nodes lost, or none with the resources this worker asks for.",
            worker=slot.worker,
        )
        broken.__cause__ = cause
        self._break(broken)

    def _dispatch(self, slot: _Slot) -> None:
        """Give `slot` its next batch of pending items, if it is idle."""
        with self._lock:
            if not slot.ready or slot.batch or self._slots.get(slot.worker.index) is not slot:
                return
            batch = self._take_batch()
            if not batch:
                self._idle.notify_all()
                return
            now = time.monotonic()
            slot.batch, slot.current = batch, None
            slot.drains, slot.next_drain = 0, now + DRAIN_AFTER
            for run in batch:
                run.closed = False
        fn = batch[0].task[1]
        items = []
        for run in batch:
            run.started = now
            slot.waited += now - run.task[5]
            items.append((run.task_id, run.task[2], run.task[3]))
        ref = slot.actor.run_batch.remote(self._fn_ref(fn), items)
        ref.future().add_done_callback(
            lambda future, slot=slot, batch=batch: self._finished(slot, batch, future)
        )
        if len(batch) > 1:
            self._poke.set()

    def _take_batch(self) -> list[_Run]:
        """The next items to send together (`_lock` held): one while items are long or
        must go alone, else up to BATCH_TIME's worth with the same function."""
        size = 1
        if self._task_time < BATCH_BELOW:
            size = max(1, min(BATCH_MAX, int(BATCH_TIME / max(self._task_time, 1e-7))))
        batch: list[_Run] = []
        while len(batch) < size and (run := take_runnable(self._pending)) is not None:
            if batch and (run.solo or run.task[1] is not batch[0].task[1]):
                self._pending.appendleft(run)  # it starts the next batch
                break
            batch.append(run)
            if run.solo:
                break
        return batch

    def _fn_ref(self, fn: Callable[..., Any]) -> Any:
        """The function in Ray's object store, put once while the function lives."""
        ref = self._fn_refs.get(fn)
        if ref is None:
            ref = self._ray.put(fn)
            self._fn_refs.put(fn, ref)
        return ref

    def _finished(self, slot: _Slot, batch: list[_Run], future: Any) -> None:
        with self._lock:
            if slot.batch is not batch:
                return  # claimed by the watchdog: its outcomes are delivered
            slot.batch, slot.current = [], None
        try:
            outcomes = future.result()
        except Exception as exc:
            self._crashed(slot, batch, exc)
            return
        self._deliver(slot, batch, outcomes)
        del outcomes
        self._dispatch(slot)

    def _deliver(
        self, slot: _Slot, batch: list[_Run], outcomes: list[tuple[int, str, Any, float]]
    ) -> None:
        """Hand the owners the outcomes an actor returned (those of runs nobody closed)."""
        finished = time.monotonic()
        by_id = {run.task_id: run for run in batch}
        mine = []
        with self._lock:
            for outcome in outcomes:
                run = by_id[outcome[0]]
                if not run.closed:
                    run.closed = True
                    mine.append((run, outcome))
                    # Its batch may run on: keep its key, not its function or arguments.
                    task = run.task
                    run.task = (task[0], _spent, (), None, task[4], task[5])
        del by_id
        for run, (_, tag, value, took) in mine:
            if tag == "skipped":
                continue  # withdrawn: its owner waits for nothing
            self._count_done(slot, run, finished, took)
            self._hand_over(slot, run, tag == "ok", value)
        del mine

    def _claim(self, batch: list[_Run], spare: _Run | None = None) -> list[_Run]:
        """Close and return the runs of `batch` nobody closed yet (`_lock` held), but
        `spare`."""
        mine = [r for r in batch if not r.closed and r is not spare]
        for run in mine:
            run.closed = True
        return mine

    def _poll(self) -> None:
        """Drain the batches that run long (see the module docstring); ends at _stop."""
        while True:
            with self._lock:
                if self._disconnected:
                    return
                now = time.monotonic()
                due = []
                for slot in self._slots.values():
                    # A slot being drained is looked at again when its drain returns.
                    if len(slot.batch) > 1 and not slot.draining and now >= slot.next_drain:
                        slot.drains += 1
                        slot.next_drain = now + min(DRAIN_MAX, DRAIN_AFTER * 2**slot.drains)
                        due.append((slot, slot.batch))
                wake = min(
                    (
                        s.next_drain
                        for s in self._slots.values()
                        if len(s.batch) > 1 and not s.draining
                    ),
                    default=None,
                )
            for slot, batch in due:
                self._drain(slot, batch)
            # Wake-up path: the next drain due, a batch sent or a drain returned
            # (`_poke`), or _stop.
            self._poke.wait(None if wake is None else max(0.0, wake - now))
            self._poke.clear()

    def _drain(self, slot: _Slot, batch: list[_Run], done: threading.Event | None = None) -> None:
        """Ask the actor of `slot` for what `batch` has finished and what runs now; the
        answer is handled by `_drained` (then `done` is set)."""
        with self._lock:
            slot.draining += 1
        try:
            ref = slot.actor.drain.options(concurrency_group="control").remote()
        except Exception:
            with self._lock:
                slot.draining -= 1
            if done is not None:
                done.set()
            return
        ref.future().add_done_callback(lambda future: self._drained(slot, batch, future, done))

    def _drained(
        self, slot: _Slot, batch: list[_Run], future: Any, done: threading.Event | None
    ) -> None:
        try:
            try:
                outcomes, current = future.result()
            except Exception:
                # The actor died: the batch's call fails too and claims what is left,
                # unless it ended already, leaving this answer's outcomes with nobody.
                with self._lock:
                    lost = [] if slot.batch is batch else self._claim(batch)
                self._run_alone(lost)
                return
            with self._lock:
                if slot.batch is batch:
                    slot.current = (
                        None if current is None else (current[0], time.monotonic() - current[1])
                    )
            self._deliver(slot, batch, outcomes)
        finally:
            with self._lock:
                slot.draining -= 1
                self._idle.notify_all()
            self._poke.set()  # the poller schedules this batch's next drain
            if done is not None:
                done.set()

    def _run_alone(self, runs: list[_Run]) -> None:
        """Queue `runs` again, each for a call of its own, at the head (in order)."""
        if not runs:
            return
        for run in runs:
            run.solo = True
        with self._lock:
            self._pending.extendleft(reversed(runs))
            idle = [s for s in self._slots.values() if s.ready and not s.batch]
        for slot in idle:
            self._dispatch(slot)

    def _crashed(self, slot: _Slot, batch: list[_Run], cause: BaseException) -> None:
        ray = self._ray
        actor_died = isinstance(cause, ray.exceptions.RayActorError)
        with self._lock:
            runs = self._claim(batch)
            requeue = len(runs) == 1 and actor_died and runs[0].attempts <= self._retries
            if requeue:
                runs[0].attempts += 1
                self._pending.appendleft(runs[0])
            if actor_died and self._slots.get(slot.worker.index) is slot and not self._broken:
                self._start(slot.worker)
        if not runs:
            if not actor_died:
                self._dispatch(slot)
            return
        if len(runs) > 1:
            # Which item failed is not known: each goes again in a call of its own, so
            # the failure names its item (attempts unchanged: none of them failed yet).
            logger.warning(
                "steadypool: a batch of %d items on %s (%s) failed (%s: %s); running them "
                "again one per call to find the item",
                len(runs),
                describe(slot.worker.index, slot.worker.device),
                slot.where,
                type(cause).__name__,
                str(cause).splitlines()[0] if str(cause) else "",
            )
            self._run_alone(runs)
            return
        (run,) = runs
        if not actor_died:
            # The call failed without the actor dying: its result could not travel back.
            count_failure(slot, run.started, time.monotonic())
            run.task[4].put(
                (
                    run.task[0],
                    False,
                    _remote.rebuild_exception(
                        RuntimeError(
                            f"the result could not be sent back from the Ray actor: "
                            f"{type(cause).__name__}: {cause}"
                        ),
                        "",
                    ),
                    slot.worker,
                )
            )
            self._dispatch(slot)
            return
        item = run.task[4].position(run.task[0])
        crash = WorkerCrashed(
            f"{describe(slot.worker.index, slot.worker.device)} ({slot.where}) died while "
            f"running {'a submitted task' if item is None else f'item {item}'}: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}; "
            "likely cause: the actor was killed (ray.kill, the OOM killer) or its node was "
            "lost. "
            + ("Retrying it; " if requeue else "The item failed; ")
            + "a fresh actor takes its place.",
            worker=slot.worker,
        )
        if requeue:
            logger.warning("steadypool: %s", crash)
        else:
            count_failure(slot, run.started, time.monotonic())
            run.task[4].put((run.task[0], False, crash, slot.worker))

    def _break(self, broken: BrokenPool) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = broken
            dropped = list(self._pending)
            self._pending.clear()
            self._idle.notify_all()
        for run in dropped:
            run.task[4].put((run.task[0], False, self._broken, None))

    # --- the Backend interface -------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._disconnected

    @property
    def broken(self) -> BrokenPool | None:
        return self._broken

    def prepare(self, fn: Callable[..., Any]) -> None:
        try:
            cloudpickle.dumps(fn, protocol=5)
        except Exception as why:
            raise TypeError(
                f"the function {fn!r} cannot be sent to Ray actors: it cannot be pickled "
                f"({type(why).__name__}: {why})"
            ) from why

    def submit(self, task: Task) -> None:
        run = _Run(task)
        with self._lock:
            if self._closed:
                raise PoolClosed("cannot submit to a steadypool Pool after shutdown()")
            if self._broken is not None:
                raise self._broken
            self._pending.append(run)
            idle = [s for s in self._slots.values() if s.ready and not s.batch]
        for slot in idle[:1]:
            self._dispatch(slot)

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        with self._lock:
            self._closed = True
            dropped = []
            if cancel:
                # What idle or starting workers take next still runs (Backend.shutdown).
                busy = sum(1 for s in self._slots.values() if s.batch)
                free = max(0, len(self._workers) - busy)
                while len(self._pending) > free:
                    dropped.append(self._pending.pop())
                dropped.reverse()
        for run in dropped:
            run.task[4].drop(run.task[0])
        if wait:
            self._stop()
        else:
            threading.Thread(
                target=self._stop, name=f"steadypool-{self.name}-stop", daemon=True
            ).start()

    def _stop(self) -> None:
        """Wait until nothing runs or is queued, then kill the actors (once)."""
        with self._lock:
            # Like the other backends, every worker finishes its setup before it stops.
            while self._broken is None and (
                self._pending
                or any(s.batch or s.draining or not s.ready for s in self._slots.values())
            ):
                self._idle.wait(_JOIN_SLICE)  # notified whenever an actor goes idle
            if self._disconnected:
                return
            self._disconnected = True
            slots = list(self._slots.values())
        self._poke.set()
        if threading.current_thread() is not self._poller:
            self._poller.join(_JOIN_SLICE * 4)
        for slot in slots:
            with contextlib.suppress(Exception):
                self._ray.kill(slot.actor, no_restart=True)
        _disconnect()

    def busy(self) -> list[Busy]:
        found = []
        for slot in list(self._slots.values()):
            started = slot.setup_started
            if started is not None:
                found.append(
                    setup_busy(
                        id(slot), slot.worker, started, slot.where, (slot, SETUP), timed=slot.begun
                    )
                )
                continue
            batch = slot.batch
            if not batch:
                continue
            run, started = self._running(slot, batch)
            found.append(
                Busy(
                    run.task_id,
                    slot.worker,
                    run.task[0],
                    run.task[4],
                    started,
                    slot.where,
                    (slot, run, batch),
                )
            )
        return found

    def _running(self, slot: _Slot, batch: list[_Run]) -> tuple[_Run, float]:
        """The item of `batch` running now and since when (here): a lone item's; in a
        batch, the one its actor named at the last drain, else the first not finished,
        timed from when the batch was sent (earlier than it started: an estimate that
        `fail` checks before acting on it)."""
        current = slot.current
        with self._lock:
            open_runs = [r for r in batch if not r.closed]
        for run in open_runs:
            if current is not None and run.task_id == current[0]:
                return run, current[1]
        first = open_runs[0] if open_runs else batch[-1]
        return first, batch[0].started

    def stack(self, busy: Busy) -> str:
        slot, run = busy.handle[:2]
        if run is SETUP:
            if slot.setup_started is None:
                return ""
        elif run not in slot.batch:
            return ""
        try:
            ref = slot.actor.stack.options(concurrency_group="control").remote()
            text: str = self._ray.get(ref, timeout=2.0)
        except Exception as exc:
            return f"(no stack from the Ray actor: {type(exc).__name__})"
        if not text and run is SETUP:
            return (
                "(no stack yet: the Ray actor has not started running setup; it is still "
                "being scheduled or started, e.g. waiting for a node with the resources "
                "it asks for)\n"
            )
        return text

    def fail(self, busy: Busy, error: BaseException, *, retry: bool = False) -> bool:
        slot, run = busy.handle[:2]
        if run is SETUP:
            return self._fail_setup(busy, slot, error, retry=retry)
        batch = busy.handle[2]
        if len(batch) > 1:
            # Be sure of the item first: what finished is delivered, and the actor says
            # what runs now and since when.
            drained = threading.Event()
            self._drain(slot, batch, drained)
            drained.wait(_DRAIN_WAIT)
            current = slot.current
            if current is None or current[0] != run.task_id or current[1] > busy.started + 1e-3:
                return False  # another item runs, or this one for less: look again later
        with self._lock:
            if slot.batch is not batch or run.closed:
                return False  # finished (or died) first
            slot.batch, slot.current = [], None
            requeue = retry and run.attempts <= self._retries
            if requeue:
                run.attempts += 1
            # The others go back as they were: those before it finished, but their
            # results die with the actor, and run again.
            back = self._claim(batch, spare=None if requeue else run)
            run.closed = True
            self._pending.extendleft(reversed(back))
            self._start(slot.worker)  # the replacement takes the index at once
        with contextlib.suppress(Exception):
            self._ray.kill(slot.actor, no_restart=True)
        if not requeue:
            count_failure(slot, run.started, time.monotonic())
            run.task[4].put((run.task[0], False, error, slot.worker))
        return True

    def withdraw(self) -> None:
        """Tell each actor not to start the items of its batch whose owners no longer
        want them; waits for the answers, so none of them starts after this returns."""
        asked = []
        for slot in list(self._slots.values()):
            with self._lock:
                unwanted = [
                    r
                    for r in slot.batch
                    if not (r.withdrawn or r.closed or r.task[4].wanted(r.task[0]))
                ]
                for run in unwanted:
                    run.withdrawn = True
            if unwanted:
                call = slot.actor.withdraw.options(concurrency_group="control")
                asked.append(call.remote([r.task_id for r in unwanted]))
        with contextlib.suppress(Exception):  # an actor that died runs nothing more
            self._ray.get(asked, timeout=5.0)

    def _fail_setup(self, busy: Busy, slot: _Slot, error: BaseException, *, retry: bool) -> bool:
        """The watchdog gives up on an actor's setup: kill it; a fresh actor runs setup
        again while `retries` allow, else the pool breaks."""
        index = slot.worker.index
        with self._lock:
            if slot.setup_started is None or self._slots.get(index) is not slot:
                return False  # it finished (or died) first
            slot.setup_started = None
            kills = self._setup_kills[index] = self._setup_kills.get(index, 0) + 1
            retries = self._retries if retry else 0
            broken = give_up_on_setup(
                self.name, busy, error, attempt=kills, retries=retries, fresh="Ray actor"
            )
            if broken is None:
                self._start(slot.worker)
        with contextlib.suppress(Exception):
            self._ray.kill(slot.actor, no_restart=True)
        if broken is not None:
            self._break(broken)
        return True

    def counts(self) -> tuple[int, int]:
        return sum(s.items for s in self._history), len(self._pending)

    def worker_stats(self) -> tuple[tuple[WorkerStats, ...], int, int]:
        history = list(self._history)
        replaced = max(0, len(history) - len(self._workers))
        return per_worker(self._workers, history), 0, replaced


BACKEND = RayBackend
