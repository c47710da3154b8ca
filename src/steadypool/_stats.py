"""Snapshots of a pool's work: `PoolStats` and `WorkerStats`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["PoolStats", "WorkerStats"]


@final
@dataclass(frozen=True)
class WorkerStats:
    """What one worker index has done (summed over the workers that held it).

    Attributes:
        index: The worker's index.
        device: Its device, or None.
        items: Items it finished (results and task errors).
        failed: Of those, items whose task raised.
        busy_seconds: Time spent running items.
        queue_wait_seconds: Total time its items waited in the queue before it took them.
        replaced: How many times a fresh worker took this index's place.
    """

    index: int
    device: str | None
    items: int
    failed: int
    busy_seconds: float
    queue_wait_seconds: float
    replaced: int


@final
@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, from `Pool.stats()`.

    Attributes:
        done: Items finished (results and task errors).
        failed: Items whose task raised.
        in_flight: Items running now.
        queued: Items waiting for a worker.
        timed_out: Items failed with `TaskTimeout`.
        stalls: Stall episodes the watchdog has seen.
        replaced: Workers replaced (after a timeout, a stall or a crash).
        abandoned_running: Abandoned threads still running their stuck task.
        workers: Per-worker figures, by index.
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

    @property
    def queue_wait_seconds(self) -> float:
        """Total time items waited in the queue."""
        return sum(w.queue_wait_seconds for w in self.workers)

    @property
    def busy_seconds(self) -> float:
        """Total time workers spent running items."""
        return sum(w.busy_seconds for w in self.workers)
