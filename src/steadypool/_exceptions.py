"""The exceptions steadypool raises, named by cause.

A task's own exception is never wrapped: it reaches the consumer as the same object, with
a note (`BaseException.add_note`) that names the input position and the worker.  The
classes here are for failures of the pool itself.
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._records import StallReport
    from ._worker import Worker

__all__ = [
    "ArgumentNotRebuilt",
    "BrokenPool",
    "Halted",
    "PoolClosed",
    "RemoteError",
    "ResultNotRebuilt",
    "ResultNotSent",
    "StallError",
    "TaskTimeout",
    "UnpicklableArgument",
    "WorkerCrashed",
    "add_note",
    "add_task_note",
]


class TaskTimeout(TimeoutError):
    """One item ran longer than the pool's ``task_timeout``.

    Raised by the watchdog for that item only, measured from the moment a worker
    started it; `on_error` handles it like any task error (``"return"`` yields it).
    Unlike `StallError`, which says the whole pool stopped making progress, this is
    about one item, and the pool goes on: on threads the stuck thread is abandoned
    (a thread cannot be killed) and a fresh worker takes its place.

    Attributes:
        timeout: The ``task_timeout`` that was exceeded, in seconds.
        worker: The worker that was running the item.
        stack: The item's Python stack when it timed out ("" if unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        timeout: float = 0.0,
        worker: Worker | None = None,
        stack: str = "",
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.worker = worker
        self.stack = stack

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[str], dict[str, object]]:
        state: dict[str, object] = {
            "timeout": self.timeout,
            "worker": self.worker,
            "stack": self.stack,
        }
        return (type(self), (str(self),), state)


class StallError(RuntimeError):
    """The pool made no progress for ``stall_timeout`` seconds (``on_stall="raise"``).

    Raised in the consumer (from `imap`, `imap_batches`, `map` or a future) when the
    watchdog sees that no item finished for ``stall_timeout`` seconds while items were
    in flight.  Unlike `TaskTimeout` (one item too slow, handled by `on_error`), it
    always raises: the policy asked for it.  `report` says where the work is stuck.

    Attributes:
        report: The `StallReport`: each busy worker, its item, for how long, its stack.
    """

    def __init__(self, message: str, *, report: StallReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type[StallError], tuple[str], dict[str, object]]:
        return (type(self), (str(self),), {"report": self.report})


class WorkerCrashed(RuntimeError):
    """A worker process died while it ran an item (process backend).

    Raised for that item only (handled by `on_error` like a task error), after any
    ``retries``; the message gives the exit code with its signal name, the worker, its
    device, the item and the likely causes.  A fresh worker takes the dead one's place
    and the pool stays usable.  Unlike `TaskTimeout`, nobody asked for the kill: the
    process exited (``os._exit``), crashed (segfault) or was killed (OOM killer).

    Attributes:
        exitcode: The process's exit code (negative: killed by that signal).
        worker: The worker that died.
    """

    def __init__(
        self, message: str, *, exitcode: int | None = None, worker: Worker | None = None
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.worker = worker

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[str], dict[str, object]]:
        return (type(self), (str(self),), {"exitcode": self.exitcode, "worker": self.worker})


class RemoteError(Exception):
    """Stands for an exception raised in a worker process that could not be pickled back.

    It keeps what can travel: the original type's name, its message and its traceback
    text (also in ``str()``), and why it could not be pickled.

    Attributes:
        type_name: ``module.QualName`` of the original exception.
        message: ``str()`` of the original exception.
        traceback_text: Its formatted traceback, from the worker process.
        reason: Why the original could not be pickled.
    """

    def __init__(
        self, type_name: str, message: str, traceback_text: str = "", reason: str = ""
    ) -> None:
        super().__init__(type_name, message, traceback_text, reason)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.message} (raised in a worker process; the exception "
            f"could not be pickled back: {self.reason})"
        )


class UnpicklableArgument(pickle.PicklingError):
    """An item's arguments could not be pickled to send them to a worker (processes,
    Ray): that item fails with it, before any worker sees it; the pool goes on.

    The message names the argument, its type and why.  `map` with a `chunksize` runs
    the items of such a chunk one by one, so that only the item at fault fails.
    """


class ResultNotSent(pickle.PicklingError):
    """An item's result (or what `map` makes of a chunk's) could not be pickled in the
    worker to send it back; that item fails with it (a `pickle.PicklingError`)."""


class ArgumentNotRebuilt(pickle.UnpicklingError):
    """An item's arguments were pickled but could not be unpickled in the worker; that
    item fails with it (a `pickle.UnpicklingError`) and the worker goes on."""


class ResultNotRebuilt(pickle.UnpicklingError):
    """What a worker sent back for an item could not be unpickled in the pool's
    process; that item fails with it (a `pickle.UnpicklingError`)."""


class BrokenPool(BrokenExecutor):
    """The pool cannot run tasks any more, because a worker's `setup` raised.

    Raised by `Pool.submit`, `Pool.map`, `Pool.imap` and `Pool.imap_batches` (and set on
    every future still queued) once any worker's ``setup(worker)`` has failed.  The
    setup's exception is kept as ``__cause__``.  Unlike a task's exception, which fails
    one item and leaves the pool usable, this one means the pool is unusable: fix
    `setup` and create a new pool.  ``on_error="return"`` does not turn it into a
    result: it always raises.
    """

    def __init__(self, message: str, *, worker: Worker | None = None) -> None:
        super().__init__(message)
        self.worker = worker

    def __reduce__(self) -> tuple[type[BrokenPool], tuple[str], dict[str, object]]:
        return (type(self), (str(self),), {"worker": self.worker})


class Halted(BaseException):
    """Internal: raised inside a task on a worker thread when its pool is halted (Ctrl-C
    in the consumer, or interpreter exit while the task runs for nobody), at the next
    line of Python the task runs.

    A BaseException, like KeyboardInterrupt, so that a task's ``except Exception`` does
    not swallow it; the worker thread ends with it.  A thread stuck in one native call
    sees it only when that call returns.
    """


class PoolClosed(RuntimeError):
    """Internal: a task was submitted to a pool after its shutdown.

    Users see it as a `RuntimeError` (the `concurrent.futures` convention); a stream
    catches it to deliver what is already in flight before raising it.
    """


def add_task_note(exc: BaseException, position: int | None, worker: Worker | None) -> None:
    """Note on a task's exception where it came from: input position and worker.

    The exception keeps its type and traceback; only the note is added.  Failures of
    the pool itself (`BrokenPool`, shared by every item it fails) get no note.
    """
    if isinstance(exc, BrokenPool):
        return
    where = "a task" if position is None else f"the task for input position {position}"
    if worker is not None:
        from ._worker import describe

        where += f", on {describe(worker.index, worker.device)}"
    add_note(exc, f"steadypool: raised by {where}")


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on an exception that refuses attributes (a frozen
    dataclass: `add_note` sets ``__notes__`` through its ``__setattr__``)."""
    try:
        exc.add_note(note)
    except Exception:
        notes = list(getattr(exc, "__notes__", ()))
        object.__setattr__(exc, "__notes__", [*notes, note])
