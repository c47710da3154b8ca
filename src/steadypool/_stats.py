"""Snapshots of a pool's work: `PoolStats` and `WorkerStats`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._worker import Worker

__all__ = ["PoolStats", "WorkerRecord", "WorkerStats", "count_failure", "per_worker"]


@final
@dataclass(frozen=True)
class WorkerStats:
    """What one worker index has done (summed over the workers that held it).

    Attributes:
        index: The worker's index.
        device: Its device, or None.
        items: Items it finished: results, task errors, timeouts and crashes.
        failed: Of those, items that failed (raised, timed out, or crashed it).
        busy_seconds: Time spent running items.
        queue_wait_seconds: Total time its items waited in the queue before it took them.
        replaced: How many times a fresh worker took this index's place after a
            crash, a timeout or a stall.
        recycled: How many of its workers were recycled (``max_tasks_per_worker``,
            ``max_worker_memory``): each left after its items, a successor in its place.
    """

    index: int
    device: str | None
    items: int
    failed: int
    busy_seconds: float
    queue_wait_seconds: float
    replaced: int
    recycled: int = 0


@final
@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, from `Pool.stats()`.

    Attributes:
        done: Items finished: results, task errors, timeouts and crashes (an item
            retried after a crash counts once, when it ends).
        failed: Of those, items that failed: the task raised, timed out
            (`TaskTimeout`), was stopped by a stall (`StallError`) or crashed its
            worker (`WorkerCrashed`).
        in_flight: Items running now.
        queued: Items waiting for a worker.
        timed_out: Items failed with `TaskTimeout`.
        stalls: Stall episodes the watchdog has seen.
        replaced: Workers replaced (after a timeout, a stall or a crash).
        abandoned_running: Abandoned threads still running their stuck task.
        workers: Per-worker figures, by index.
        recycled: Workers recycled (``max_tasks_per_worker``, ``max_worker_memory``);
            none of their items was lost, failed or run twice.
    """

    done: int
    failed: int
    in_flight: int
    queued: int
    timed_out: int
    stalls: int
    replaced: int
    abandoned_running: int
    workers: tuple[WorkerStats, ...]
    recycled: int = 0

    @property
    def queue_wait_seconds(self) -> float:
        """Total time items waited in the queue."""
        return sum(w.queue_wait_seconds for w in self.workers)

    @property
    def busy_seconds(self) -> float:
        """Total time workers spent running items."""
        return sum(w.busy_seconds for w in self.workers)


class WorkerRecord(Protocol):
    """What a backend keeps per worker it ran (a thread, a process, an actor)."""

    worker: Worker
    items: int
    failed: int
    busy: float
    waited: float
    recycled: bool  # it left by recycling (a successor took its index)


def count_failure(record: WorkerRecord, started: float, now: float) -> None:
    """Count an item that failed without a result from its worker (a timeout, a stall,
    a crash) on the record of the worker that ran it."""
    record.items += 1
    record.failed += 1
    record.busy += now - started


def per_worker(
    workers: Iterable[Worker], records: Iterable[WorkerRecord]
) -> tuple[WorkerStats, ...]:
    """Sum the records of each worker index (a replaced worker leaves several)."""
    records = list(records)
    stats = []
    for worker in workers:
        mine = [r for r in records if r.worker.index == worker.index]
        recycled = sum(1 for r in mine if r.recycled)
        stats.append(
            WorkerStats(
                index=worker.index,
                device=worker.device,
                items=sum(r.items for r in mine),
                failed=sum(r.failed for r in mine),
                busy_seconds=sum(r.busy for r in mine),
                queue_wait_seconds=sum(r.waited for r in mine),
                replaced=max(0, len(mine) - 1 - recycled),
                recycled=recycled,
            )
        )
    return tuple(stats)
