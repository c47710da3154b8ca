"""Thread backend: one daemon thread per worker, all fed from one queue.

Data flow::

    submit() --put--> _tasks (one SimpleQueue per pool) --get--> worker threads
    worker thread --owner.put(outcome)--> the task's owner (stream queue or Future)
    watchdog --busy()/stack()/fail()--> slots and claims (see below)

Who owns what:

* `_tasks` is written by `submit` (any thread) and by `shutdown` (stop sentinels), and
  read by the workers.  `_lock` guards `_closed` (and `_sentinels`, the count of stop
  sentinels queued) together with every put onto `_tasks`,
  so that no task is ever queued behind the stop sentinels: such a task would never
  run, and its owner would wait for it forever.  `_lock` also guards `_broken`,
  `_live` and `_slots` (worker replacement).
* Each `_Slot` is written only by its own thread, except `abandoned`, which `fail`
  sets under `_lock`.  `current` is one tuple, so the watchdog reads it atomically.
* `_claims` (token -> task) decides who delivers a running task's outcome.  The worker
  inserts the token before running the task and pops it after; `fail` pops it to claim
  the task for the watchdog.  `dict.pop` is atomic, so exactly one of them gets it:
  the worker delivers the result, or the watchdog delivers its error, never both.  A
  worker that finds its claim gone was abandoned: it exits without delivering, and a
  replacement (started by `fail`) holds its index.

What wakes whom: a worker blocks only in ``_tasks.get()``, and a task or a stop
sentinel (None) wakes it; one sentinel is queued per live worker at shutdown (a
replacement consumes the sentinel of the worker it replaces).  ``shutdown(wait=True)``
joins the live threads (never abandoned ones, whose task may never return).

Threads are daemons: a task stuck in CUDA, a lock or I/O must not keep the interpreter
from exiting (the seed's program hung exactly there).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import sys
import threading
import time
import traceback
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from .._devices import activate
from .._exceptions import BrokenPool, Halted, PoolClosed
from .._records import Busy, setup_busy
from .._stats import WorkerStats, count_failure, per_worker
from .._worker import Worker, bind, describe, leave_signals_to_the_main_thread
from ._base import Backend, give_up_on_setup

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._records import Task
    from ._base import BackendOptions

__all__ = ["BACKEND", "ThreadBackend"]

logger = logging.getLogger("steadypool")

_JOIN_SLICE = 0.5  # seconds; joins wait in slices so that Ctrl-C is noticed between them
# The claim a worker holds while it runs setup (see `_claims` in the module docstring).
_SETUP_CLAIM: Any = ("setup",)
_pool_ids = itertools.count()


class _Slot:
    """Bookkeeping of one worker thread (see the module docstring for who writes what)."""

    __slots__ = (
        "abandoned",
        "busy",
        "current",
        "failed",
        "items",
        "recycled",
        "setup_started",
        "thread",
        "waited",
        "worker",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread: threading.Thread | None = None
        self.current: tuple[Task, float] | None = None  # (task, started) while running
        self.setup_started: float | None = None  # time.monotonic() while in setup
        self.abandoned = False
        self.items = 0
        self.failed = 0
        self.busy = 0.0
        self.waited = 0.0
        self.recycled = False  # threads are never recycled (check_options refuses it)


class ThreadBackend(Backend):
    """Runs tasks on daemon threads of this process (the default backend)."""

    can_kill = False
    replacing = (
        "its thread was abandoned (a running thread cannot be killed) and a fresh worker "
        "took its place; use backend='processes' to kill stuck work instead"
    )

    def __init__(
        self,
        workers: Sequence[Worker],
        setup: Callable[[Worker], Any] | None,
        options: BackendOptions,
    ) -> None:
        self.name = options.name or f"pool{next(_pool_ids)}"
        self.last_done = 0.0
        self._setup = setup
        self._tasks: SimpleQueue[Task | None] = SimpleQueue()
        self._claims: dict[int, Task] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._sentinels = 0  # stop sentinels in `_tasks` (not work: counts() leaves them out)
        self._broken: BrokenPool | None = None
        self._slots: list[_Slot] = []  # every slot ever, for stats
        self._live: dict[int, _Slot] = {}  # worker index -> the slot holding it now
        try:
            with self._lock:
                for worker in workers:
                    self._start(worker)
        except BaseException:
            # Out of threads (or interrupted) part-way: stop those already running.
            self.shutdown(wait=True, cancel=True)
            raise

    def _start(self, worker: Worker) -> None:
        """Start a thread for `worker` (caller holds `_lock`)."""
        slot = _Slot(worker)
        earlier = sum(1 for s in self._slots if s.worker.index == worker.index)
        suffix = f".{earlier}" if earlier else ""  # replacements: w1.1, w1.2, ...
        slot.thread = threading.Thread(
            target=self._run,
            args=(slot,),
            name=f"steadypool-{self.name}-w{worker.index}{suffix}",
            daemon=True,
        )
        slot.thread.start()
        self._slots.append(slot)
        self._live[worker.index] = slot

    @property
    def stopped(self) -> bool:
        with self._lock:
            return self._closed and not any(_alive(s) for s in self._slots)

    @property
    def broken(self) -> BrokenPool | None:
        return self._broken

    def submit(self, task: Task) -> None:
        with self._lock:
            if self._closed:
                raise PoolClosed("cannot submit to a steadypool Pool after shutdown()")
            if self._broken is not None:
                raise self._broken
            self._tasks.put(task)

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        dropped: list[Task] = []
        with self._lock:
            first, self._closed = not self._closed, True
            if cancel:
                # Also on a second call: it may cancel what a first one left queued.  The
                # drain takes sentinels too, so they are queued again (extras are harmless).
                dropped = [task for task in _drain(self._tasks) if task is not None]
                self._sentinels = 0
                # What idle workers were about to take still runs (see Backend.shutdown).
                free = sum(1 for slot in self._live.values() if slot.current is None)
                for task in dropped[:free]:
                    self._tasks.put(task)
                dropped = dropped[free:]
            if first or cancel:
                for _ in self._live:
                    self._tasks.put(None)
                    self._sentinels += 1
        # Owners are told outside the lock: a Future's done-callbacks run user code.
        for task in dropped:
            task[4].drop(task[0])
        me = threading.current_thread()
        with self._lock:
            own = any(s.thread is me for s in self._slots)
        # A task that shuts its own pool down does not wait: the other workers may be
        # waiting for it (two tasks calling shutdown(wait=True) at once would deadlock).
        if wait and not own:
            while True:
                with self._lock:
                    live = [s.thread for s in self._live.values() if s.thread is not None]
                pending = [t for t in live if t.is_alive()]
                if not pending:
                    break
                pending[0].join(_JOIN_SLICE)

    def _run(self, slot: _Slot) -> None:
        """Body of one worker thread: setup, then tasks until a stop sentinel (or `halt`)."""
        try:
            self._serve(slot)
        except Halted:
            bind(None)  # halted (the exception may land between two tasks, too)

    def halt(self) -> None:
        """Raise `Halted` in every thread of this pool running a task or setup, abandoned
        ones included, at the next line of Python it runs; what they ran fails.  Queued
        tasks are left to `shutdown`."""
        with self._lock:
            slots = [s for s in self._slots if _alive(s)]
        for slot in slots:
            thread = slot.thread
            busy = slot.current is not None or slot.setup_started is not None
            if thread is not None and thread.ident is not None and (busy or slot.abandoned):
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread.ident), ctypes.py_object(Halted)
                )

    def _serve(self, slot: _Slot) -> None:
        leave_signals_to_the_main_thread()
        worker = slot.worker
        bind(worker)
        try:
            activate(worker.device)
        except BaseException as exc:  # a device that fails to start breaks the pool
            self._break(worker, exc)
        if self._setup is not None and self._broken is None:
            # Watched like a task: the claim decides between this thread and the watchdog.
            token = id(slot)
            self._claims[token] = _SETUP_CLAIM
            slot.setup_started = time.monotonic()
            state: Any = None
            failed: BaseException | None = None
            try:
                state = self._setup(worker)
            except BaseException as exc:  # any failure breaks the pool
                failed = exc
            slot.setup_started = None
            if self._claims.pop(token, None) is None:
                bind(None)
                return  # the watchdog gave up on this setup: abandoned (the pool broke)
            if failed is not None:
                self._break(worker, failed)
            else:
                worker = slot.worker = worker.with_state(state)
                bind(worker)
            del state, failed
        get = self._tasks.get
        claims = self._claims
        clock = time.monotonic
        while True:
            # Wake-up path: a task, or the stop sentinel that shutdown() queues.
            task = get()
            if task is None:
                with self._lock:
                    self._sentinels = max(0, self._sentinels - 1)
                break
            key, fn, args, kwargs, owner, queued_at = task
            wanted = owner.begin(key)
            if not wanted or self._broken is not None:
                if wanted:
                    owner.put((key, False, self._broken, worker))
                # Nothing is held while idle: a skipped task's arguments must not live on.
                del task, key, fn, args, kwargs, owner
                continue
            token = id(task)
            claims[token] = task
            started = clock()
            slot.current = (task, started)
            slot.waited += started - queued_at
            try:
                result = fn(*args) if kwargs is None else fn(*args, **kwargs)
                ok = True
            except BaseException as exc:  # reported to the owner, never lost
                result, ok = exc, False
            finished = clock()
            slot.current = None
            slot.busy += finished - started
            if claims.pop(token, None) is None:
                break  # the watchdog claimed this task: abandoned, and replaced
            self.last_done = finished
            slot.items += 1
            if not ok:
                slot.failed += 1
            owner.put((key, ok, result, worker))
            # Drop references while idle: a finished task's arguments must not live on.
            del task, key, fn, args, kwargs, owner, result
        bind(None)

    def _break(self, worker: Worker, exc: BaseException) -> None:
        with self._lock:
            if self._broken is None:
                broken = BrokenPool(
                    f"setup(worker) raised {type(exc).__name__}: {exc} on "
                    f"{describe(worker.index, worker.device)} of pool {self.name!r}; the "
                    "pool cannot run tasks. Fix setup (its traceback is the cause below) "
                    "and create a new Pool.",
                    worker=worker,
                )
                broken.__cause__ = exc
                self._broken = broken

    def _set_broken(self, broken: BrokenPool) -> None:
        """Break the pool and fail what is queued (no worker may be left to do it)."""
        with self._lock:
            if self._broken is None:
                self._broken = broken
            taken = _drain(self._tasks)
            queued = [task for task in taken if task is not None]
            for _ in range(len(taken) - len(queued)):
                self._tasks.put(None)  # stop sentinels stay
        for task in queued:
            if task[4].begin(task[0]):
                task[4].put((task[0], False, self._broken, None))

    # --- the watchdog's view -----------------------------------------------------------

    def busy(self) -> list[Busy]:
        found = []
        for slot in list(self._live.values()):
            setup_started = slot.setup_started
            if setup_started is not None and slot.thread is not None and not slot.abandoned:
                found.append(
                    setup_busy(
                        id(slot), slot.worker, setup_started, slot.thread.name, (slot, _SETUP_CLAIM)
                    )
                )
                continue
            current = slot.current
            if current is None or slot.abandoned or slot.thread is None:
                continue
            task, started = current
            found.append(
                Busy(
                    id(task), slot.worker, task[0], task[4], started, slot.thread.name, (slot, task)
                )
            )
        return found

    def stack(self, busy: Busy) -> str:
        slot, task = busy.handle
        thread = slot.thread
        frame = sys._current_frames().get(thread.ident) if thread is not None else None
        current = slot.current
        if task is _SETUP_CLAIM:
            if frame is None or slot.setup_started is None:
                return ""
        elif frame is None or current is None or current[0] is not task:
            return ""
        frames = traceback.extract_stack(frame)
        # Keep the task's own frames: drop this backend's loop and what is above it.
        for i, entry in enumerate(frames):
            if entry.filename == __file__ and entry.name == "_run":
                frames = traceback.StackSummary.from_list(frames[i + 1 :])
                break
        return "".join(frames.format())

    def fail(self, busy: Busy, error: BaseException, *, retry: bool = False) -> bool:
        slot, task = busy.handle
        if self._claims.pop(busy.token, None) is None:
            return False  # it finished first; its worker delivered the result
        if task is _SETUP_CLAIM:
            # A setup that does not finish: its thread is abandoned, and the pool breaks
            # (a thread cannot be killed, and a fresh one's setup would likely hang too).
            index = slot.worker.index
            with self._lock:
                slot.abandoned = True
                if self._live.get(index) is slot:
                    del self._live[index]
            broken = give_up_on_setup(self.name, busy, error, attempt=1, retries=0, fresh="")
            assert broken is not None  # no retries on threads
            self._set_broken(broken)
            return True
        with self._lock:
            slot.abandoned = True
            self._start(slot.worker.with_state(None))  # runs setup afresh
            abandoned = sum(1 for s in self._slots if s.abandoned and _alive(s))
        count_failure(slot, busy.started, time.monotonic())
        task[4].put((task[0], False, error, slot.worker))
        if abandoned > max(4, len(self._live)):
            logger.error(
                "steadypool: pool %r has %d abandoned threads still stuck in tasks that "
                "never returned; it is leaking threads (and whatever they hold). Fix the "
                "hang, or use backend='processes', whose stuck workers are killed.",
                self.name,
                abandoned,
            )
        return True

    def counts(self) -> tuple[int, int]:
        return sum(s.items for s in self._slots), max(0, self._tasks.qsize() - self._sentinels)

    def worker_stats(self) -> tuple[tuple[WorkerStats, ...], int, int]:
        with self._lock:
            slots = list(self._slots)
            workers = [self._live[index].worker for index in sorted(self._live)]
        abandoned = sum(1 for s in slots if s.abandoned and _alive(s))
        return per_worker(workers, slots), abandoned, len(slots) - len(workers)


def _alive(slot: _Slot) -> bool:
    return slot.thread is not None and slot.thread.is_alive()


def _drain(tasks: SimpleQueue[Task | None]) -> list[Task | None]:
    """Take everything queued right now, without blocking."""
    taken: list[Task | None] = []
    while True:
        try:
            taken.append(tasks.get(block=False))
        except Empty:
            return taken


BACKEND = ThreadBackend
