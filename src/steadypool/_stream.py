"""Streams: `imap` and `imap_batches` over a backend, in a bounded window.

Data flow of one stream::

    input --(read only while the window has room)--> backend.submit(task)
    worker --owner.put(outcome)--> _results (SimpleQueue, one per stream)
    consumer --get--> Window (reorder buffer) --> yield in input order

Who owns what: the consumer's thread (whoever iterates the generator) is the only one
that reads the input, touches the `Window` or reads `_results`.  Workers only put onto
`_results` and read `StreamOwner.cancelled`, which only the consumer sets (once, when
the stream ends for any reason: exhausted, error, break, close() or garbage collection).
A worker that reads it as set skips the task, so abandoning a stream cancels what is
queued; only items a backend has already sent ahead to a worker (processes, Ray) need
to be told, which `withdraw` does once the flag is set.  The frame keeps nothing it handed
out while suspended at a yield (`_take`).

What wakes the consumer: the outcome of each task it submitted.  By the backend
contract every submitted task ends in an outcome or a drop (which `StreamOwner.drop`
turns into an outcome), unless it is skipped, which happens only after `cancelled` is
set, when nobody waits any more.  So the consumer's wait always ends.
"""

from __future__ import annotations

import time
from concurrent.futures import CancelledError
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from ._exceptions import BrokenPool, PoolClosed, StallError, add_note, add_task_note
from ._exit import track_stream
from ._sizes import nbytes
from ._window import Window

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator

    from ._records import Outcome, Task

__all__ = ["FATAL", "SIGNAL_SLICE", "StreamOwner", "run_stream"]


class StreamOwner:
    """The owner of every task of one stream (see the module docstring)."""

    __slots__ = ("__weakref__", "cancelled", "put", "results")

    def __init__(self) -> None:
        self.cancelled = False
        self.results: SimpleQueue[Outcome] = SimpleQueue()
        self.put = self.results.put

    def begin(self, key: Any) -> bool:
        return not self.cancelled

    def drop(self, key: Any) -> None:
        error = CancelledError(
            f"steadypool: the pool was shut down with cancel_futures=True while input "
            f"position {key} of this stream was still queued"
        )
        self.put((key, False, error, None))

    def position(self, key: Any) -> int | None:
        return int(key)

    def wanted(self, key: Any) -> bool:
        return not self.cancelled


# Seconds a consumer blocks at most before it looks at pending signals (Ctrl-C).
SIGNAL_SLICE = 0.25

# The adaptive window (imap without `window`).  It starts at 2 x workers and doubles
# while items are handed out faster than GROW_BELOW seconds apiece (then a hand-off per
# item, ~50 us of wake-ups, is what costs; with more items queued, workers and consumer
# rarely sleep), halves back while slower than SHRINK_ABOVE, and never exceeds
# ADAPTIVE_MAX items nor, by the sizes of an item and a result (`nbytes`: the memory behind
# arrays, tensors and images too), ADAPTIVE_BYTES.
GROW_BELOW = 1e-3
SHRINK_ABOVE = 10e-3
ADAPTIVE_MAX = 1024
ADAPTIVE_BYTES = 64 << 20

# An input read slower than this is "slow": once every worker has an item, the consumer
# hands out a result that is ready (or waits up to one read for it) before reading on,
# so a slow input does not delay results whose turn has come.
SLOW_READ = 1e-3

# Failures of the pool rather than of a task: raised whatever on_error says.
FATAL = (BrokenPool, StallError, CancelledError)


def _take(out: list[Any], batched: bool) -> Any:
    """What to yield: the batch (a new list) or its one result; `out` is left empty."""
    if not batched:
        return out.pop()
    taken = out.copy()
    out.clear()
    return taken


def run_stream(
    submit: Callable[[Task], None],
    fn: Callable[[Any], Any],
    source: Iterator[Any],
    *,
    capacity: int,
    workers: int,
    adaptive: bool,
    ordered: bool,
    on_error: str,
    batch_size: int,
    batched: bool,
    progress: Any = None,
    keepalive: object = None,
    withdraw: Callable[[], None] | None = None,
) -> Generator[Any, None, None]:
    """Run `fn` over `source`, yielding results (or lists of `batch_size` of them).

    `capacity` (>= `batch_size`) bounds the items read and not yet handed out; a batch
    counts until it is yielded, and the window is refilled before each yield, so the
    workers stay busy while the consumer works.  With `adaptive`, `capacity` is where
    the window starts and it adapts to the items' pace (GROW_BELOW above), within
    ADAPTIVE_MAX and ADAPTIVE_BYTES.  `workers` is how many items run at once.
    `progress` is a tqdm-like bar or None.
    `keepalive` is held for the stream's life (the Pool, so it is not collected and
    shut down under a running stream).  `withdraw` is called when the stream ends with
    items still in flight (the backend may take back those sent ahead).
    """
    owner = StreamOwner()
    track_stream(owner)  # cancelled at interpreter exit if still open
    get = owner.results.get
    window: Window[Outcome] = Window(capacity, ordered=ordered)
    exhausted = False
    # Why reading stopped short, raised once everything read before it is delivered:
    # the pool was shut down under this stream (PoolClosed), or the input raised.
    stopped: Exception | None = None
    raise_errors = on_error == "raise"
    clock = time.monotonic
    slow_read = 0.0  # how long the last read of the input took, if over SLOW_READ
    # Sizes (not the objects: nothing handed out is held) of the last item read and of
    # a result, for the adaptive window's memory bound.
    item_size = value_size = 0
    floor, checked_at, checked_count = capacity, clock(), 0
    out: list[Any] = []  # the results of the batch being built
    outcome: Outcome | None = None
    arrived: Outcome | None = None
    value: Any = None

    def result_soon(timeout: float) -> bool:
        """Wait up to `timeout` for a result that may be handed out now."""
        deadline = clock() + timeout
        while not window.ready():
            left = deadline - clock()
            if left <= 0:
                return False
            try:
                arrived = get(True, min(left, SIGNAL_SLICE))
            except Empty:
                continue
            window.add(arrived[0], arrived)
        return True

    def adapt() -> None:
        """Resize the adaptive window from the pace of the items handed out since the
        last look (once per window's worth)."""
        nonlocal checked_at, checked_count
        now = clock()
        count = window.handed - checked_count
        per_item = (now - checked_at) / count
        size = item_size + value_size
        ceiling = max(floor, min(ADAPTIVE_MAX, ADAPTIVE_BYTES // max(size, 1)))
        if per_item < GROW_BELOW:
            window.capacity = min(ceiling, 2 * window.capacity)
        elif per_item > SHRINK_ABOVE:
            window.capacity = max(floor, window.capacity // 2)
        window.capacity = min(window.capacity, ceiling)
        checked_at, checked_count = now, window.handed

    def refill() -> None:
        nonlocal exhausted, stopped, slow_read, item_size
        while not exhausted and window.has_room():
            if slow_read and window.unpopped >= workers and result_soon(slow_read):
                return  # every worker has an item: hand out what is ready first
            begun = clock()
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                return
            except Exception as exc:
                # Like builtin map: the results of the items read before come first.
                add_note(exc, f"steadypool: raised by the input at input position {window.read}")
                exhausted, stopped = True, exc
                return
            read = clock()
            slow_read = read - begun if read - begun > SLOW_READ else 0.0
            if adaptive:
                item_size = nbytes(item)
            try:
                submit((window.read, fn, (item,), None, owner, read))
            except PoolClosed as exc:
                # Deliver what is in flight (or its CancelledError) first, then say why
                # the stream stopped short.
                exhausted, stopped = True, exc
                return
            window.take_key()

    try:
        refill()
        while window.unpopped:
            out = []
            while len(out) < batch_size and window.unpopped:
                outcome = window.pop()
                while outcome is None:
                    # Wake-up path: every submitted task's outcome (see module docstring).
                    # In slices: Ctrl-C that the kernel handed to another thread is
                    # acted on only when this thread runs Python code again.
                    try:
                        arrived = get(True, SIGNAL_SLICE)
                    except Empty:
                        continue
                    outcome = window.offer(arrived[0], arrived)
                key, ok, value, worker = outcome
                if not ok:
                    if isinstance(value, FATAL):
                        raise value  # the pool, not the task, failed: never a result
                    add_task_note(value, key, worker)
                    if raise_errors:
                        raise value
                out.append(value)
            # Nothing handed out stays referenced by this frame while it is suspended.
            outcome = arrived = value = None
            window.hand_out()
            if adaptive and window.handed - checked_count >= window.capacity:
                value_size = nbytes(out[-1])
                adapt()
            if not slow_read and (not adaptive or window.room() >= window.capacity // 8):
                # Before the yield: the workers stay busy while the consumer works.  A
                # grown window is topped up an eighth at a time (7/8 stay queued).
                refill()
            if progress is not None:
                progress.update(len(out))
            yield _take(out, batched)  # empties `out`: the consumer holds what it got
            if slow_read:
                refill()  # after it: a slow read does not delay a result that is ready
        if stopped is not None:
            raise stopped
    finally:
        owner.cancelled = True
        if withdraw is not None and window.unpopped:
            withdraw()
        if progress is not None:
            progress.close()
        del keepalive
