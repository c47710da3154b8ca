"""`Pool.map` helpers: running a chunk of items in a worker, yielding results in order."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, TypeVar

from ._exceptions import WorkerCrashed, add_task_note
from ._stream import SIGNAL_SLICE
from ._worker import current_worker

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from concurrent.futures import Future

__all__ = ["map_results", "run_chunk"]

T = TypeVar("T")


def run_chunk(
    fn: Callable[..., T], start: int, chunk: list[tuple[Any, ...]]
) -> tuple[list[T], BaseException | None]:
    """Run `fn` over one chunk of `map`, up to its first error.

    Returns the results before the error and the error (noted with its exact input
    position), so that `map` yields those results before raising: nothing is lost.
    """
    results = []
    for offset, args in enumerate(chunk):
        try:
            results.append(fn(*args))
        except BaseException as exc:
            add_task_note(exc, start + offset, current_worker())
            return results, exc
    return results, None


def _wait_for(future: Future[Any], end: float | None) -> None:
    """Wait until `future` is done (TimeoutError past `end`), in slices, so that Ctrl-C
    handed by the kernel to another thread is still acted on within a slice."""
    while not future.done():
        step = SIGNAL_SLICE
        if end is not None:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("steadypool: the next map() result was not ready in time")
            step = min(step, remaining)
        with contextlib.suppress(TimeoutError, CancelledError):
            future.exception(step)  # returns once done; the caller reads the outcome


def map_results(
    futures: list[Future[Any]],
    end: float | None,
    *,
    chunks: list[tuple[int, list[tuple[Any, ...]]]] | None = None,
    resubmit: Callable[[int, tuple[Any, ...]], Future[Any]] | None = None,
) -> Generator[Any, None, None]:
    """Yield `map` results in order; cancel what is left when closed or failed.

    Unchunked, `futures` holds one future per item.  Chunked, `chunks` holds each
    future's (first input position, argument tuples), and each future's result is
    ``(results, error)`` from `run_chunk`.  A chunk whose worker crashed lost the
    results of the items it had run: its items are run again one by one through
    `resubmit(position, args)`, so those before the crashing item are delivered and
    the crash names its own item.
    """
    # Invariant: nothing here refers to a result once it is yielded (the caller may
    # want it collected): each future is popped before its result is handed out, and a
    # chunk's results are popped one by one.  pop() from the end is O(1).
    futures.reverse()
    if chunks is not None:
        chunks.reverse()
    singles: list[Future[Any]] = []
    try:
        while futures:
            # Wake-up path: the task's outcome, a drop on shutdown(cancel), or the timeout.
            _wait_for(futures[-1], end)
            if chunks is None:
                yield futures.pop().result()
                continue
            try:
                futures[-1].result()
            except WorkerCrashed:
                if resubmit is None:
                    raise
                futures.pop()
                start, items = chunks.pop()
                singles = [resubmit(start + i, args) for i, args in enumerate(items)]
                yield from map_results(singles, end)
                continue
            chunks.pop()
            results, error = futures.pop().result()
            results.reverse()
            while results:
                yield results.pop()
            if error is not None:
                raise error
    finally:
        for future in (*futures, *singles):
            future.cancel()
