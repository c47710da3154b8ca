"""Workers as tasks see them: `Worker` and `current_worker()`.

Each backend binds the current `Worker` in the thread that runs a worker's `setup` and
tasks (`bind`); `current_worker()` reads it back.  The binding is thread-local, so the
core knows nothing of how workers are run.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, final

__all__ = ["Worker", "bind", "current_worker", "describe", "leave_signals_to_the_main_thread"]


@final
@dataclass(frozen=True)
class Worker:
    """One worker of a pool, as its `setup` and its tasks see it.

    Attributes:
        index: Position of the worker in its pool, ``0 .. workers - 1``.  A worker that
            replaces another keeps its index.
        device: The device this worker is pinned to (``"cuda:1"``, ``"cpu"``), or
            ``None`` when the pool was created without ``devices=``.
        state: What ``setup(worker)`` returned for this worker; ``None`` without a
            setup, and inside `setup` itself.
    """

    index: int
    device: str | None = None
    state: Any = None

    def with_state(self, state: Any) -> Worker:
        """Return a copy of this worker that carries `state`."""
        return dataclasses.replace(self, state=state)


# Invariant: `_local.worker` is set only in threads that run a worker's setup or tasks,
# by the backend that owns that thread, and only to that thread's own worker.
_local = threading.local()


def bind(worker: Worker | None) -> None:
    """Make `worker` what `current_worker()` returns in this thread (backends only)."""
    _local.worker = worker


def current_worker() -> Worker:
    """Return the worker running the calling task or setup.

    Returns:
        The `Worker` with its ``index``, ``device`` and ``state``.

    Raises:
        RuntimeError: When called outside a steadypool task or setup.
    """
    worker: Worker | None = getattr(_local, "worker", None)
    if worker is None:
        raise RuntimeError(
            "steadypool.current_worker() was called outside a steadypool task or setup; "
            "call it from inside the function you pass to Pool.submit/map/imap or setup"
        )
    return worker


def leave_signals_to_the_main_thread() -> None:
    """Block SIGINT and SIGTERM in the calling thread (a pool's own threads only).

    The kernel hands a process-directed signal to any thread that does not block it.
    If a pool thread takes SIGINT, the main thread, blocked waiting for a result, is not
    interrupted and sees Ctrl-C only when the next result arrives, possibly never.
    With our threads blocking them, Ctrl-C reaches a thread that acts on it at once.
    """
    import signal

    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def describe(index: int, device: str | None) -> str:
    """Name a worker the way messages and notes do: ``worker 1 (cuda:1)``."""
    return f"worker {index}" if device is None else f"worker {index} ({device})"
