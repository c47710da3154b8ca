"""`Pool.map` helpers: yielding results in order, one item per task or in chunks.

Data flow of ``map(chunksize=1)``: every item is submitted at the call (the Executor
contract), as a task owned by one `StreamOwner`, whose queue the consumer alone reads
and reorders (no Future per item); workers only put outcomes onto it.  With a chunksize,
each chunk is a task with a Future (`run_chunk`).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import CancelledError
from queue import Empty
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from ._exceptions import (
    ArgumentNotRebuilt,
    ResultNotRebuilt,
    ResultNotSent,
    UnpicklableArgument,
    WorkerCrashed,
    add_task_note,
)
from ._resume import make_state, save_state
from ._stream import FATAL, SIGNAL_SLICE, StreamOwner
from ._worker import current_worker

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Generator
    from concurrent.futures import Future

__all__ = ["MapStream", "map_outcomes", "map_results", "run_chunk"]

T = TypeVar("T")
# A chunk failed as a whole, not by one of its items' own exceptions: its items run again
# one by one, so the one at fault fails alone and the others are delivered.
_RUN_ALONE = (
    WorkerCrashed,
    UnpicklableArgument,
    ArgumentNotRebuilt,
    ResultNotSent,
    ResultNotRebuilt,
)
_LATE = "steadypool: the next map() result was not ready in time"


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


def map_outcomes(
    owner: StreamOwner,
    count: int,
    end: float | None,
    *,
    first: int = 0,
    keepalive: object = None,
    withdraw: Callable[[], None] | None = None,
) -> Generator[Any, None, None]:
    """Yield the results of `count` submitted items (keys first..first+count-1) in
    order, raising an item's exception when its turn comes; what is not started when the
    generator is closed is skipped (`owner.cancelled`).  `keepalive` is held while it
    runs (the Pool); `withdraw` is called when it ends with items in flight."""
    get = owner.results.get
    buffer: dict[int, Any] = {}  # outcomes that arrived before their turn
    out: list[Any] = []  # the result being handed out (emptied by the yield)
    position = first
    count += first  # from here on: one past the last key
    try:
        while position < count:
            outcome = buffer.pop(position, None)
            while outcome is None:
                # Wake-up path: every submitted item ends in an outcome or a drop.
                step = SIGNAL_SLICE
                if end is not None:
                    step = min(step, end - time.monotonic())
                    if step <= 0:
                        raise TimeoutError(_LATE)
                try:
                    arrived = get(True, step)
                except Empty:
                    continue
                if arrived[0] == position:
                    outcome = arrived
                else:
                    buffer[arrived[0]] = arrived
                del arrived
            key, ok, value, worker = outcome
            del outcome
            position += 1
            if not ok:
                if not isinstance(value, FATAL):
                    add_task_note(value, key, worker)
                raise value
            out.append(value)
            del value
            yield out.pop()  # nothing handed out stays referenced by this frame
    finally:
        owner.cancelled = True
        if withdraw is not None and position < count:
            withdraw()
        del keepalive


def _wait_for(future: Future[Any], end: float | None) -> None:
    """Wait until `future` is done (TimeoutError past `end`), in slices, so that Ctrl-C
    handed by the kernel to another thread is still acted on within a slice."""
    while not future.done():
        step = SIGNAL_SLICE
        if end is not None:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(_LATE)
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
    the crash names its own item; so are those of a chunk whose arguments could not
    be pickled, or whose results (or error) could not come back, so that only the
    item at fault fails, named.
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
            except _RUN_ALONE:
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


@final
class MapStream(Generic[T]):
    """The iterator `Pool.map` returns: its results, in order, and how far its consumer
    got (`state_dict`, as `Stream.state_dict` for an ordered stream).

    `results` yields the results of the items from input position `consumed` on (a
    resumed map submits only those); `checkpoint` is saved every `checkpoint_every`
    seconds, when the consumer asks for a result, and when the map ends.  Only the
    consumer's thread calls it.
    """

    __slots__ = (
        "_checkpoint",
        "_checkpoint_every",
        "_ended",
        "_handed",
        "_length",
        "_results",
        "_saved_at",
        "_start",
    )

    def __init__(
        self,
        results: Generator[T, None, None],
        *,
        consumed: int = 0,
        length: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: float = 0.0,
    ) -> None:
        self._results = results
        # Handed out so far (input positions below it).  Consumed: all of them once the
        # map ended (the consumer asked past the last one, or the next one failed),
        # else all but the last, which the consumer may still hold.
        self._start = self._handed = consumed
        self._length = length
        self._checkpoint = checkpoint
        self._checkpoint_every = checkpoint_every
        self._saved_at = time.monotonic()
        self._ended = False

    def __iter__(self) -> MapStream[T]:
        return self

    def __next__(self) -> T:
        # The hot path of map(chunksize=k): one counter per item, nothing else.
        if (
            self._checkpoint is not None
            and time.monotonic() - self._saved_at >= self._checkpoint_every
        ):
            self._save()
        try:
            value = next(self._results)
        except BaseException:
            self._end()  # exhausted, failed or interrupted: the map is over
            raise
        self._handed += 1
        return value

    def state_dict(self) -> dict[str, Any]:
        """Return how far the consumer got (see `Stream.state_dict`)."""
        consumed = self._handed if self._ended else max(self._start, self._handed - 1)
        return make_state(ordered=True, length=self._length, consumed=consumed)

    def _save(self) -> None:
        assert self._checkpoint is not None
        save_state(self._checkpoint, self.state_dict())
        self._saved_at = time.monotonic()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            if self._checkpoint is not None:
                self._save()

    def close(self) -> None:
        """Cancel what has not started (as `Executor.map`'s iterator does); idempotent.

        The result handed out last is not counted as consumed (nobody asked past it).
        """
        try:
            self._results.close()
        finally:
            if not self._ended:
                self._handed = max(self._start, self._handed - 1)
            self._end()

    def __del__(self) -> None:
        if not getattr(self, "_ended", True):
            self.close()
