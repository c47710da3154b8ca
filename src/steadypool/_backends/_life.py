"""A worker's life as a state machine, the same for a worker process and a Ray actor.

::

    STARTING --setup_began--> SETUP --ready--> READY --retire--> RETIRING
                                                 |                  |
                                                 +------leave-------+--leave--> LEAVING

    any living state --doom--> DOOMED;  any state --end--> GONE

* STARTING: spawned (or scheduled), not yet heard from; only stall reports watch it.
* SETUP: running ``setup(worker)``; `since` is when it began (task_timeout applies).
* READY: takes items.
* RETIRING: crossed ``max_worker_memory``; its successor is starting, and it goes on
  taking items until the successor is ready, so the pool's capacity does not dip.
* LEAVING: recycled (``max_tasks_per_worker`` reached, or its successor is ready): it
  takes no more items, finishes those it holds, then is told to stop; its end is not a
  crash and starts no replacement (its successor is already there).
* DOOMED: killed on purpose (the watchdog, shutdown, interpreter exit): its end is not a
  crash, it takes no items, and no replacement is started for it by its death.
* GONE: ended; its runs were released.

Each backend changes a `Life` only through these methods, under the lock that guards its
workers (the processes backend's `_lock`, Ray's `_lock`); a method called in a state it
does not leave from returns False and changes nothing, so two paths racing to end a
worker (the watchdog's kill and its death) agree on who acted.
"""

from __future__ import annotations

import enum
import time

__all__ = ["Life", "WorkerState"]


class WorkerState(enum.Enum):
    """Where a worker is in its life (see the module docstring)."""

    STARTING = "starting"
    SETUP = "setup"
    READY = "ready"
    RETIRING = "retiring"
    LEAVING = "leaving"
    DOOMED = "doomed"
    GONE = "gone"


_RUNS_ITEMS = (WorkerState.READY, WorkerState.RETIRING, WorkerState.LEAVING)
_ALIVE = (WorkerState.STARTING, WorkerState.SETUP, *_RUNS_ITEMS)
_LIVED = (*_ALIVE, WorkerState.DOOMED)  # every state but GONE


class Life:
    """The state of one worker and since when (``time.monotonic()``)."""

    __slots__ = ("born", "since", "state")

    def __init__(self) -> None:
        self.state = WorkerState.STARTING
        self.since = self.born = time.monotonic()

    def _move(self, sources: tuple[WorkerState, ...], state: WorkerState) -> bool:
        """Go to `state` if in one of `sources` (True), else change nothing (False)."""
        if self.state not in sources:
            return False
        self.state = state
        self.since = time.monotonic()
        return True

    def setup_began(self) -> bool:
        """STARTING -> SETUP."""
        return self._move((WorkerState.STARTING,), WorkerState.SETUP)

    def ready(self) -> bool:
        """STARTING or SETUP -> READY."""
        return self._move((WorkerState.STARTING, WorkerState.SETUP), WorkerState.READY)

    def retire(self) -> bool:
        """READY -> RETIRING (its successor is being started)."""
        return self._move((WorkerState.READY,), WorkerState.RETIRING)

    def leave(self) -> bool:
        """READY or RETIRING -> LEAVING (it takes no more items)."""
        return self._move((WorkerState.READY, WorkerState.RETIRING), WorkerState.LEAVING)

    def doom(self) -> bool:
        """Any living state -> DOOMED (the caller kills it)."""
        return self._move(_ALIVE, WorkerState.DOOMED)

    def end(self) -> WorkerState | None:
        """-> GONE; returns the state it ended in (None if it had ended already)."""
        last = self.state
        return last if self._move(_LIVED, WorkerState.GONE) else None

    @property
    def in_setup(self) -> bool:
        return self.state is WorkerState.SETUP

    @property
    def takes_items(self) -> bool:
        return self.state is WorkerState.READY or self.state is WorkerState.RETIRING

    @property
    def runs_items(self) -> bool:
        """Past setup and not ended: what it holds is running or about to."""
        return self.state in _RUNS_ITEMS
