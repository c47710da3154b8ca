"""What the backends whose items wait in a `Ledger` share (processes, Ray).

Their workers live elsewhere (a process, an actor), so an item's arguments are pickled
at `submit` -- a failure there is that item's outcome at once -- and its outcome comes
back as frames; their workers can be killed, so the watchdog's `fail` and `halt` kill
them; their items' lives are the ledger's.  What differs (spawning, sending,
receiving, killing) stays in each backend.
"""

from __future__ import annotations

import itertools
import time
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import cloudpickle

from .. import _remote
from .._stats import per_worker
from . import _wire as wire
from ._base import Backend
from ._ledger import Ledger, Run

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from .._exceptions import BrokenPool
    from .._records import Task
    from .._stats import WorkerRecord, WorkerStats
    from .._worker import Worker
    from ._base import BackendOptions
    from ._life import Life

__all__ = ["QueuedBackend"]

_pool_ids = itertools.count()


class QueuedBackend(Backend):
    """A backend whose items wait in a `Ledger` for workers that can be killed.

    An item's arguments are pickled, with a copy of every big buffer, when it is
    submitted: what it sends is what it was given then (a numpy array changed after
    `submit` does not change the item).
    """

    can_kill = True
    # Where items go, as messages say it: "a worker process", "a Ray actor".
    destination: ClassVar[str]
    # Recycled workers finishing their items (a WorkerProcess, a Ray Slot), guarded by
    # the backend's `_lock`; see `_life` for RETIRING and LEAVING.
    _lock: Any
    _leaving: list[Any]
    _max_tasks: int | None
    # Seconds a fresh worker took from its start to READY (a moving average): when to
    # start a successor for max_tasks_per_worker.  Written by whoever hears of READY.
    _startup = 0.0

    def __init__(
        self,
        workers: Sequence[Worker],
        setup: Callable[[Worker], Any] | None,
        options: BackendOptions,
    ) -> None:
        """The shared part: name, setup pickled (TypeError if it cannot be), the ledger,
        the record of every worker ever started (stats); then `_open` starts the
        backend's own machinery (its manager thread, its actors)."""
        self.name = options.name or f"pool{next(_pool_ids)}"
        self.last_done = 0.0
        try:
            self._setup = None if setup is None else cloudpickle.dumps(setup)
        except Exception as why:
            raise TypeError(
                f"setup {setup!r} cannot be sent to {self.destination}: it cannot be pickled "
                f"({type(why).__name__}: {why}); define it at module level, or make what "
                "it captures picklable"
            ) from why
        self._workers = list(workers)
        self._ledger = Ledger(retries=options.retries)
        self._history: list[WorkerRecord] = []
        self._setup_kills: dict[int, int] = {}  # index -> setups killed by the watchdog
        self._open(options)

    @abstractmethod
    def _open(self, options: BackendOptions) -> None:
        """Start the workers and whatever drives them."""

    @abstractmethod
    def _leave_if_done(self, worker: Any) -> None:
        """Let a LEAVING worker that holds nothing more go (its end is no crash)."""

    def _more_work(self) -> bool:
        """Whether items may still come (the pool is open) or wait in the queue, in a
        pool not broken: then a worker that leaves needs a successor."""
        ledger = self._ledger
        return ledger.broken is None and not (ledger.closed and not ledger.queued)

    def _started(self, life: Life) -> None:
        """A worker became READY: note how long its start took."""
        took = time.monotonic() - life.born
        self._startup = took if not self._startup else 0.5 * self._startup + 0.5 * took

    def _successor_due(self, worker: Any) -> bool:
        """max_tasks_per_worker: whether `worker`'s successor should start now, early
        enough to be READY as `worker` runs out: once the items it has left will take
        no longer than a fresh worker takes to start (1.5x, for margin)."""
        if self._max_tasks is None or self._item_time is None:
            return False
        left: int = self._max_tasks - worker.given
        return left * self._item_time <= 1.5 * self._startup

    def _succeeded(self, successor: Any) -> None:
        """`successor` is ready: the RETIRING workers of its index take no more items."""
        with self._lock:
            old = [w for w in self._leaving if w.worker.index == successor.worker.index]
            for worker in old:
                worker.life.leave()
        for worker in old:
            self._leave_if_done(worker)

    @property
    def broken(self) -> BrokenPool | None:
        return self._ledger.broken

    def _run_for(self, task: Task) -> Run | None:
        """A `Run` of `task` with its arguments pickled, or None when they cannot be:
        then the item has failed already, with `UnpicklableArgument`.

        Raises:
            PoolClosed: After `shutdown`.
            BrokenPool: After the pool broke.
        """
        ledger = self._ledger
        ledger.check_open()
        run = Run(task)
        try:
            # Big buffers are copied now, not read when the item is sent: a caller that
            # refills one array between submits must not send later data (hole 13).
            run.wire = [bytes(f) for f in _remote.dumps((run.args, run.kwargs))]
        except KeyboardInterrupt:
            raise
        except BaseException as why:  # SystemExit from a __reduce__ too (issue 17, hole 17)
            error = _remote.argument_error(run.args, run.kwargs, why, self.destination)
            ledger.settle(run, False, error, None)
            return None
        return run

    def _settle_outcomes(
        self,
        holder: Any,
        record: WorkerRecord,
        outcomes: Iterable[tuple[int, str, Any, float]],
        where: str,
    ) -> None:
        """Settle the items `holder` reported, (task id, tag, frames, seconds) each, in
        order: those it still holds (the others were settled by another path, or went
        back to the queue with a worker that ended)."""
        finished = time.monotonic()
        outcomes = list(outcomes)
        ledger = self._ledger
        runs = ledger.close_held(holder, [outcome[0] for outcome in outcomes])
        settled = []
        for run, (_, tag, frames, took) in zip(runs, outcomes, strict=True):
            if run is None:
                continue
            if tag == wire.SKIPPED:
                run.forget()  # withdrawn: its owner waits for nothing
                continue
            ok, value = wire.load_outcome(tag, frames, where)
            del frames
            self._count_done(record, ok, finished, took)
            settled.append((run, ok, value))
            del value
        del outcomes, runs
        # Counted before any owner hears of it: whoever an outcome wakes sees it in stats.
        ledger.count(len(settled), sum(1 for _, ok, _ in settled if not ok))
        settled.reverse()
        while settled:  # popped one by one: nothing delivered stays referenced here
            run, ok, value = settled.pop()
            ledger.deliver(run, ok, value, record.worker)
            del run, value

    def _cancel(self, busy: int) -> None:
        """``shutdown(cancel_futures=True)`` with `busy` workers running items: what the
        others (idle, or still starting) take next still runs (Backend.shutdown)."""
        self._ledger.cancel(max(0, len(self._workers) - busy))

    def counts(self) -> tuple[int, int]:
        return self._ledger.done, self._ledger.queued

    @property
    def failed(self) -> int:
        return self._ledger.failed

    def worker_stats(self) -> tuple[tuple[WorkerStats, ...], int, int]:
        history = list(self._history)
        workers = per_worker(self._workers, history)
        return workers, 0, sum(w.replaced for w in workers)
