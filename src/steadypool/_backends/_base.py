"""The one interface between the core and a way of running tasks.

The core (`Pool`, streams, windows) never touches a thread, a process or a cluster.  It
puts *tasks* into a backend and receives *outcomes* through each task's *owner*:

    core --submit(task)--> backend queue --> worker runs fn(*args, **kwargs)
    worker --owner.put(outcome)--> owner (a stream's result queue, or a Future)

Contract every backend keeps (the core relies on it to never wait unboundedly):

* Every task accepted by `submit` ends in exactly one of: `owner.begin(key)` returns
  False (the owner gave up on it; nothing else happens), `owner.put(outcome)`, or
  `owner.drop(key)` (discarded by ``shutdown(cancel=True)``).
* `begin` and `put` are called from the thread that ran the task; `put` may be called
  from any thread and must not block.
* A task's exception never kills a worker; it becomes a failed outcome.
* `fail(busy, error)` claims a running task for the watchdog: from then on the task's
  own outcome is discarded, the owner gets `error` instead (exactly one outcome), and
  the worker is replaced (abandoned, or killed where the backend can).
"""

from __future__ import annotations

import logging
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._exceptions import BrokenPool
    from .._records import Busy, Task
    from .._stats import WorkerRecord, WorkerStats
    from .._worker import Worker

__all__ = ["Backend", "BackendOptions", "FunctionCache", "give_up_on_setup"]


def give_up_on_setup(
    name: str, busy: Busy, error: BaseException, *, attempt: int, retries: int, fresh: str
) -> BrokenPool | None:
    """Say what follows a setup the watchdog claimed (timed out or stalled): None, and a
    WARNING, when attempt `attempt` (1, 2, ...) leaves `retries` for a fresh `fresh`
    worker to run setup again; else the `BrokenPool` to break the pool with, logged."""
    if attempt <= retries:
        logger.warning(
            "steadypool: %s; starting setup again on a fresh %s (attempt %d of %d)",
            error,
            fresh,
            attempt + 1,
            retries + 1,
        )
        return None
    broken = _setup_broken(name, busy, error)
    logger.error("steadypool: %s", broken)
    return broken


def _setup_broken(name: str, busy: Busy, error: BaseException) -> BrokenPool:
    from .._exceptions import BrokenPool
    from .._worker import describe

    broken = BrokenPool(
        f"setup(worker) on {describe(busy.worker.index, busy.worker.device)} of pool "
        f"{name!r} did not finish ({type(error).__name__}); the pool cannot run tasks. "
        "Its stack is in the cause below: fix what setup waits for, or raise "
        "task_timeout/stall_timeout if it is only slow (with backend='processes' or "
        "'ray', retries=N starts it again on a fresh worker first)",
        worker=busy.worker,
    )
    broken.__cause__ = error
    return broken


logger = logging.getLogger("steadypool")


V = TypeVar("V")


class FunctionCache(Generic[V]):
    """What a backend made of a function (its pickle, its object-store ref), reused while
    the same function object is submitted again; it never keeps the function alive.

    Entries are keyed by ``id(fn)`` and hold only a weak reference to `fn`, which tells a
    live entry from one whose function died and whose id was reused.  A function that
    cannot be weakly referenced is not cached (its value is made again each time).  The
    `size` most recently used entries are kept.  `_lock` guards `_entries`.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[weakref.ref[Any], V]] = OrderedDict()

    def get(self, fn: Callable[..., Any]) -> V | None:
        """The value stored for this very function object, or None."""
        with self._lock:
            entry = self._entries.get(id(fn))
            if entry is None or entry[0]() is not fn:
                return None
            self._entries.move_to_end(id(fn))
            return entry[1]

    def put(self, fn: Callable[..., Any], value: V) -> None:
        """Store `value` for `fn` (nothing, if `fn` cannot be weakly referenced)."""
        try:
            ref = weakref.ref(fn)
        except TypeError:
            return
        with self._lock:
            self._entries[id(fn)] = (ref, value)
            self._entries.move_to_end(id(fn))
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


@dataclass(frozen=True)
class BackendOptions:
    """What a `Pool` asks of its backend beyond its workers and setup.

    Attributes:
        name: A label for threads, processes and log lines ("" for a generated one).
        retries: How often an item whose worker crashed or was killed (timeout,
            ``on_stall="restart"``) is run again on a fresh worker.
        start_method: How worker processes start, where the backend has processes.
        address: The cluster to connect to, where the backend has one (Ray).
        max_tasks: Recycle a worker once it has been given this many items.
        max_memory: Recycle a worker once its resident memory passed this many bytes
            after an item.
    """

    name: str = ""
    retries: int = 0
    start_method: str | None = None
    address: str | None = None
    max_tasks: int | None = None
    max_memory: int | None = None


class Backend(ABC):
    """A set of workers that run tasks; one instance per `Pool`.

    Args:
        workers: One `Worker` (index, device) per worker to start.
        setup: Run once in each worker before its first task; its return value becomes
            ``worker.state``.  If it raises, the backend becomes broken.
        options: The rest (`BackendOptions`); a backend reads those it accepts.
    """

    name: str
    # The keywords beyond (workers, setup, name) this backend accepts; `Pool` refuses
    # the others before creating it, so backends never check for options they lack.
    options: ClassVar[frozenset[str]] = frozenset()
    can_kill: ClassVar[bool]  # whether a stuck worker can be killed (else abandoned)
    replacing: ClassVar[str]  # says, in messages, what happens to a failed worker
    last_done: float  # time.monotonic() when any task last finished (0.0: never)

    @abstractmethod
    def __init__(
        self,
        workers: Sequence[Worker],
        setup: Callable[[Worker], Any] | None,
        options: BackendOptions,
    ) -> None: ...

    # Moving average of item durations, for backends that send items ahead in batches
    # while items are short (processes, Ray); updated where outcomes arrive.  It starts
    # from a cautious prior (one item at a time until items prove short).
    _task_time: float = 1.0
    # The same average without the prior (None until an item is measured): when to
    # start a recycled worker's successor, which a guess would start far too early.
    _item_time: float | None = None

    def _count_done(self, record: WorkerRecord, ok: bool, finished: float, took: float) -> None:
        """Account for an item a worker ran in `took` seconds, its outcome arriving at
        `finished` (stats, the moving average that sizes batches, the watchdog's
        progress clock)."""
        self._task_time = 0.8 * self._task_time + 0.2 * took
        last = self._item_time
        self._item_time = took if last is None else 0.8 * last + 0.2 * took
        record.busy += took
        record.items += 1
        if not ok:
            record.failed += 1
        self.last_done = finished

    def prepare(self, fn: Callable[..., Any]) -> None:  # noqa: B027 - optional hook
        """Check, before any work starts, that `fn` can run here (e.g. can be pickled).

        The default accepts every function (in-process backends).

        Raises:
            TypeError: It cannot.
        """

    def halt(self) -> None:  # noqa: B027 - optional hook
        """Stop now (Ctrl-C, interpreter exit): start nothing more and, where workers can
        be killed, kill them; what they ran fails.  The default (threads, which cannot
        be killed) does nothing beyond `shutdown`."""

    def stop_unwanted(self) -> None:  # noqa: B027 - optional hook
        """Where workers can be killed, kill those running an item nobody waits for any
        more (a stream left by an exception); the default does nothing."""

    @property
    def failed(self) -> int:
        """Items failed so far, with or without a worker (stats)."""
        return sum(w.failed for w in self.worker_stats()[0])

    def withdraw(self) -> None:  # noqa: B027 - optional hook
        """An owner stopped wanting some of its items (a stream ended early): items the
        backend has sent ahead to a worker and that have not started may be taken back
        now.  The default has nothing sent ahead (threads)."""

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Queue `task` for the next free worker; never blocks.

        Raises:
            PoolClosed: After `shutdown` (a RuntimeError).
            BrokenPool: After a worker's setup failed.
        """

    @abstractmethod
    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        """Stop accepting tasks and stop the workers once the queue is done.

        With `cancel`, queued tasks are discarded (`owner.drop`) instead of run, except
        the first few that the workers with nothing running (idle, or still starting)
        take next, one each: a task submitted to an idle pool counts as started, as it
        does with `ThreadPoolExecutor`, whose submit hands it to a fresh thread.  With
        `wait`, return only when every worker has stopped.  Idempotent.
        """

    @property
    @abstractmethod
    def stopped(self) -> bool:
        """Whether every worker has ended (after `shutdown`), abandoned ones included."""

    @property
    @abstractmethod
    def broken(self) -> BrokenPool | None:
        """Why the backend cannot run tasks, or None while it can."""

    @abstractmethod
    def busy(self) -> list[Busy]:
        """Snapshot the running tasks (not those of abandoned workers)."""

    @abstractmethod
    def stack(self, busy: Busy) -> str:
        """The current Python stack of a running task ("" if it has finished)."""

    @abstractmethod
    def fail(self, busy: Busy, error: BaseException, *, retry: bool = False) -> bool:
        """Claim a running task: its owner gets `error`, its worker is replaced.

        With `retry`, a backend that kills workers queues the item again instead, while
        it has retries left.  Returns False (and does nothing) if the task finished first.
        """

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(items finished, items queued) right now."""

    @abstractmethod
    def worker_stats(self) -> tuple[tuple[WorkerStats, ...], int, int]:
        """(per-worker stats, abandoned workers still running, workers replaced)."""
