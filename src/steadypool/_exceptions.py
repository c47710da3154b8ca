"""The exceptions steadypool raises, named by cause.

A task's own exception is never wrapped: it reaches the consumer as the same object, with
a note (`BaseException.add_note`) that names the input position and the worker.  The
classes here are for failures of the pool itself.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["BrokenPool", "PoolClosed", "add_task_note"]


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


class PoolClosed(RuntimeError):
    """Internal: a task was submitted to a pool after its shutdown.

    Users see it as a `RuntimeError` (the `concurrent.futures` convention); a stream
    catches it to deliver what is already in flight before raising it.
    """


def add_task_note(exc: BaseException, position: int | None, worker: Worker | None) -> None:
    """Note on a task's exception where it came from: input position and worker.

    The exception keeps its type and traceback; only the note is added.
    """
    where = "a task" if position is None else f"the task for input position {position}"
    if worker is not None:
        from ._worker import describe

        where += f", on {describe(worker.index, worker.device)}"
    exc.add_note(f"steadypool: raised by {where}")
