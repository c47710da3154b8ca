"""Thread backend: one daemon thread per worker, all fed from one queue.

Data flow::

    submit() --put--> _tasks (one SimpleQueue per pool) --get--> worker threads
    worker thread --owner.put(outcome)--> the task's owner (stream queue or Future)

Who owns what:

* `_tasks` is written by `submit` (any thread) and by `shutdown` (stop sentinels), and
  read by the workers.  `_lock` guards `_closed` together with every put onto `_tasks`,
  so that no task is ever queued behind the stop sentinels: such a task would never
  run, and its owner would wait for it forever.
* `_broken` is written once, under `_lock`, by the first worker whose setup fails;
  workers read it before each task (a stale read only lets one more task run).

What wakes whom: a worker blocks only in ``_tasks.get()``, and a task or a stop
sentinel (None) wakes it; one sentinel is queued per worker.  ``shutdown(wait=True)``
joins the threads, which exit after their sentinel.

Threads are daemons: a task stuck in CUDA, a lock or I/O must not keep the interpreter
from exiting (the seed's program hung exactly there).  Pools are shut down when the
`Pool` is garbage collected and at exit, so queued work is not silently dropped by a
well-behaved program.
"""

from __future__ import annotations

import itertools
import threading
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from .._exceptions import BrokenPool, PoolClosed
from .._worker import Worker, bind, describe
from ._base import Backend

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._base import Task

__all__ = ["BACKEND", "ThreadBackend"]

_JOIN_SLICE = 0.5  # seconds; joins wait in slices so that Ctrl-C is noticed between them
_pool_ids = itertools.count()


class ThreadBackend(Backend):
    """Runs tasks on daemon threads of this process (the default backend)."""

    def __init__(
        self,
        workers: Sequence[Worker],
        setup: Callable[[Worker], Any] | None,
        *,
        name: str,
    ) -> None:
        self.name = name or f"pool{next(_pool_ids)}"
        self._setup = setup
        self._tasks: SimpleQueue[Task | None] = SimpleQueue()
        self._lock = threading.Lock()  # guards _closed, _broken and puts onto _tasks
        self._closed = False
        self._broken: BrokenPool | None = None
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(worker,),
                name=f"steadypool-{self.name}-w{worker.index}",
                daemon=True,
            )
            for worker in workers
        ]
        try:
            for thread in self._threads:
                thread.start()
        except BaseException:
            # Out of threads (or interrupted) part-way: stop those already running.
            self._threads = [t for t in self._threads if t.ident is not None]
            self.shutdown(wait=True, cancel=True)
            raise

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
            if first or cancel:
                for _ in self._threads:
                    self._tasks.put(None)
        # Owners are told outside the lock: a Future's done-callbacks run user code.
        for key, _fn, _args, _kwargs, owner in dropped:
            owner.drop(key)
        if wait:
            me = threading.current_thread()
            for thread in self._threads:
                while thread is not me and thread.is_alive():
                    thread.join(_JOIN_SLICE)

    def _run(self, worker: Worker) -> None:
        """Body of one worker thread: setup, then tasks until a stop sentinel."""
        bind(worker)
        if self._setup is not None:
            try:
                worker = worker.with_state(self._setup(worker))
                bind(worker)
            except BaseException as exc:  # any failure breaks the pool
                self._break(worker, exc)
        get = self._tasks.get
        while True:
            # Wake-up path: a task, or the stop sentinel that shutdown() queues.
            task = get()
            if task is None:
                break
            key, fn, args, kwargs, owner = task
            del task
            if not owner.begin(key):
                continue
            if self._broken is not None:
                owner.put((key, False, self._broken, worker))
                continue
            try:
                result = fn(*args) if kwargs is None else fn(*args, **kwargs)
            except BaseException as exc:  # reported to the owner, never lost
                owner.put((key, False, exc, worker))
                del exc
            else:
                owner.put((key, True, result, worker))
                del result
            # Drop references while idle: a finished task's arguments must not live on.
            del key, fn, args, kwargs, owner
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


def _drain(tasks: SimpleQueue[Task | None]) -> list[Task | None]:
    """Take everything queued right now, without blocking."""
    taken: list[Task | None] = []
    while True:
        try:
            taken.append(tasks.get(block=False))
        except Empty:
            return taken


BACKEND = ThreadBackend
