"""The records every layer shares: a task, its outcome, its owner, a running task
(`Busy`) and a stall report.

They sit on the floor below the core, the backends, the watchdog and the exceptions,
so every import between those runs down to here and none runs back up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, final

from ._worker import describe

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._worker import Worker

__all__ = [
    "SETUP",
    "Busy",
    "BusyWorker",
    "Outcome",
    "Owner",
    "StallReport",
    "Task",
    "label",
    "setup_busy",
]


# What a worker reports for one task: (key, ok, value, worker).  `value` is the result,
# or the exception when not ok; `worker` is None when no worker ran it.  A plain tuple,
# since one is built per item on the hot path.
Outcome = tuple[Any, bool, Any, "Worker | None"]


class Owner(Protocol):
    """Who receives a task's outcome (a stream, or a future)."""

    def begin(self, key: Any) -> bool:
        """Return False to skip the task (cancelled); called just before it runs."""

    def put(self, outcome: Outcome) -> None:
        """Receive the outcome of a task that ran (or failed to)."""

    def drop(self, key: Any) -> None:
        """Learn that a queued task was discarded by ``shutdown(cancel=True)``."""

    def position(self, key: Any) -> int | None:
        """The input position a key stands for (for reports), if any."""

    def wanted(self, key: Any) -> bool:
        """Whether anyone still waits for this task's outcome (a cancelled stream's
        running tasks are not waited for at interpreter exit)."""


# (key, fn, args, kwargs or None, owner, queued_at): a plain tuple, built per item;
# queued_at is time.monotonic() at submit.
Task = tuple[Any, "Callable[..., Any]", tuple[Any, ...], "dict[str, Any] | None", Owner, float]


class Busy(NamedTuple):
    """A snapshot of one running task, for the watchdog."""

    token: int  # identifies this run of the task for `Backend.fail`
    worker: Worker
    key: Any
    owner: Owner
    started: float  # time.monotonic() when the worker started it
    where: str  # the thread or process running it
    handle: Any  # backend-private
    # Whether task_timeout applies: False while a worker is still being started (a Ray
    # actor waiting for a node), which only stall reports watch.
    timed: bool = True

    @property
    def position(self) -> int | None:
        return self.owner.position(self.key)

    @property
    def is_setup(self) -> bool:
        """Whether this is a worker running ``setup(worker)`` rather than an item."""
        return self.owner is SETUP


class _SetupOwner:
    """Stands, in a `Busy`, for a worker's ``setup(worker)``: no item, no outcome.

    Setup is watched like a task (task_timeout, stalls); when the watchdog claims it
    (`Backend.fail`), the backend starts a fresh worker (retries) or breaks the pool.
    """

    def begin(self, key: Any) -> bool:
        return True

    def put(self, outcome: Outcome) -> None:
        pass

    def drop(self, key: Any) -> None:
        pass

    def position(self, key: Any) -> int | None:
        return None

    def wanted(self, key: Any) -> bool:
        return False


SETUP = _SetupOwner()


def setup_busy(
    token: int, worker: Worker, started: float, where: str, handle: Any, *, timed: bool = True
) -> Busy:
    """The `Busy` snapshot of a worker running ``setup(worker)``."""
    return Busy(token, worker, None, SETUP, started, where, handle, timed)


@final
@dataclass(frozen=True)
class BusyWorker:
    """One busy worker in a `StallReport`.

    Attributes:
        index: The worker's index in its pool.
        device: Its device, or None.
        position: The input position of the item it runs (None for `submit`).
        running_for: Seconds since it started the item.
        stack: The item's current Python stack, innermost call last.
        where: The thread (or process) running it.
        setup: True when the worker is running ``setup(worker)``, not an item.
    """

    index: int
    device: str | None
    position: int | None
    running_for: float
    stack: str
    where: str
    setup: bool = False

    @property
    def what(self) -> str:
        """``setup(worker)``, ``item 7`` or ``a submitted task``."""
        return label(self.setup, self.position)


def label(setup: bool, position: int | None) -> str:
    """What a busy worker runs, as messages name it."""
    if setup:
        return "setup(worker)"
    return "a submitted task" if position is None else f"item {position}"


@final
@dataclass(frozen=True)
class StallReport:
    """Where a stalled pool is stuck; ``str(report)`` is a readable multi-line text.

    Attributes:
        pool: The pool's name.
        since_progress: Seconds since an item last finished (or since the oldest busy
            item started, if later).
        done: Items finished so far (including failures).
        in_flight: Items running now.
        queued: Items waiting for a worker.
        busy: Every busy worker: its item, for how long, and its stack.
        devices: Memory figures per CUDA device in use, if torch was already imported.
        episode: 1 for the first report of a stall, 2, 3... for repeats.
        hint: The likely cause, where the stacks show one ("" otherwise): every busy
            worker waiting on a pool's result while items are queued (a task waiting
            on a task of its own pool).
    """

    pool: str
    since_progress: float
    done: int
    in_flight: int
    queued: int
    busy: tuple[BusyWorker, ...]
    devices: tuple[str, ...] = ()
    episode: int = 1
    hint: str = ""

    def __str__(self) -> str:
        lines = [
            f"steadypool: pool {self.pool!r} has made no progress for "
            f"{self.since_progress:.1f}s ({self.done} items done, {self.in_flight} running, "
            f"{self.queued} queued; report {self.episode} of this stall)",
        ]
        for busy in self.busy:
            lines.append(
                f"  {describe(busy.index, busy.device)} [{busy.where}] has run {busy.what} for "
                f"{busy.running_for:.1f}s, now at:"
            )
            lines.extend("    " + line for line in busy.stack.rstrip().splitlines())
        lines.extend(f"  {line}" for line in self.devices)
        if self.hint:
            lines.append(f"  likely cause: {self.hint}")
        return "\n".join(lines)
