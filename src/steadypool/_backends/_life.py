"""A worker's life as a state machine, the same for a worker process and a Ray actor.

::

    STARTING --setup_began--> SETUP --ready--> READY
        |                       |                |
        +-----------------------+----------------+--doom--> DOOMED --end--> GONE
        +-----------------------+----------------+------------------end--> GONE

* STARTING: spawned (or scheduled), not yet heard from; only stall reports watch it.
* SETUP: running ``setup(worker)``; `since` is when it began (task_timeout applies).
* READY: takes items.
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
    DOOMED = "doomed"
    GONE = "gone"


_ALIVE = (WorkerState.STARTING, WorkerState.SETUP, WorkerState.READY)


class Life:
    """The state of one worker and since when (``time.monotonic()``)."""

    __slots__ = ("since", "state")

    def __init__(self) -> None:
        self.state = WorkerState.STARTING
        self.since = time.monotonic()

    def _to(self, state: WorkerState) -> None:
        self.state = state
        self.since = time.monotonic()

    def setup_began(self) -> bool:
        """STARTING -> SETUP."""
        if self.state is not WorkerState.STARTING:
            return False
        self._to(WorkerState.SETUP)
        return True

    def ready(self) -> bool:
        """STARTING or SETUP -> READY."""
        if self.state not in (WorkerState.STARTING, WorkerState.SETUP):
            return False
        self._to(WorkerState.READY)
        return True

    def doom(self) -> bool:
        """Any living state -> DOOMED (the caller kills it)."""
        if self.state not in _ALIVE:
            return False
        self._to(WorkerState.DOOMED)
        return True

    def end(self) -> WorkerState | None:
        """-> GONE; returns the state it ended in (None if it had ended already)."""
        if self.state is WorkerState.GONE:
            return None
        last = self.state
        self._to(WorkerState.GONE)
        return last

    @property
    def in_setup(self) -> bool:
        return self.state is WorkerState.SETUP

    @property
    def takes_items(self) -> bool:
        return self.state is WorkerState.READY
