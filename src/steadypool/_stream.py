"""Streams: `imap` and `imap_batches` over a backend, in a bounded window.

Data flow of one stream::

    input --(read only while the window has room)--> backend.submit(task)
    worker --owner.put(outcome)--> _results (SimpleQueue, one per stream)
    consumer --Stream.__next__--> Window (reorder buffer) --> returned in input order

Who owns what: the consumer's thread (whoever calls `Stream.__next__`) is the only one
that reads the input, touches the `Window`, the consumed positions or reads `_results`.
Workers only put onto `_results` and read `StreamOwner.cancelled`, which only the
consumer sets (once, when the stream ends for any reason: exhausted, error, break,
close() or garbage collection).  A worker that reads it as set skips the task, so
abandoning a stream cancels what is queued; only items a backend has already sent ahead
to a worker (processes, Ray) need to be told, which `withdraw` does once the flag is
set.  The stream keeps nothing it handed out between two calls (`_take`).

What wakes the consumer: the outcome of each task it submitted.  By the backend
contract every submitted task ends in an outcome or a drop (which `StreamOwner.drop`
turns into an outcome), unless it is skipped, which happens only after `cancelled` is
set, when nobody waits any more.  So the consumer's wait always ends.

Resuming (`_resume`): an item is consumed when the consumer asks for the next one, so
each `__next__` first counts what the last one handed out as consumed; `state_dict`
reports that, and `checkpoint` saves it (at most every `checkpoint_every` seconds, and
when the stream ends), from the consumer's thread only.
"""

from __future__ import annotations

import enum
import time
from concurrent.futures import CancelledError
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from ._exceptions import BrokenPool, PoolClosed, StallError, add_note, add_task_note
from ._exit import track_stream
from ._resume import Consumed, make_state, save_state
from ._sizes import nbytes
from ._window import ADAPTIVE_BYTES, ADAPTIVE_MAX, GROW_BELOW, SHRINK_ABOVE, Window, adapted

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator

    from ._records import Outcome, Task

__all__ = [
    "ADAPTIVE_BYTES",
    "ADAPTIVE_MAX",
    "FATAL",
    "GROW_BELOW",
    "SHRINK_ABOVE",
    "SIGNAL_SLICE",
    "Stream",
    "StreamOwner",
]

T = TypeVar("T")


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

# An input read slower than this is "slow": once every worker has an item, the consumer
# hands out a result that is ready (or waits up to one read for it) before reading on,
# so a slow input does not delay results whose turn has come.
SLOW_READ = 1e-3

# Failures of the pool rather than of a task: raised whatever on_error says.
FATAL = (BrokenPool, StallError, CancelledError)


class _Phase(enum.Enum):
    """A stream's life: NEW (nothing read yet) -> OPEN -> ENDED (exhausted, failed,
    closed or collected; `__next__` raises StopIteration from then on)."""

    NEW = "new"
    OPEN = "open"
    ENDED = "ended"


_OPEN, _ENDED = _Phase.OPEN, _Phase.ENDED  # read per item: module globals, not lookups


def _take(out: list[Any], batched: bool) -> Any:
    """What to hand out: the batch (a new list) or its one result; `out` is left empty."""
    if not batched:
        return out.pop()
    taken = out.copy()
    out.clear()
    return taken


@final
class Stream(Generic[T]):
    """The iterator `Pool.imap` and `Pool.imap_batches` return (made by the pool only).

    Iterate it for the results (or lists of them); ``close()`` ends it early (what is
    queued is cancelled), as does garbage collection; ``state_dict()`` says how far the
    consumer got, for ``resume=``.  After it ends, ``next()`` raises StopIteration.

    The pool's arguments: it runs `fn` over `source`; `capacity` (>= `batch_size`) bounds
    the items read and not yet handed out; a batch counts until it is handed out, and
    the window is refilled before each hand-out, so the workers stay busy while the
    consumer works.  With `adaptive`, `capacity` is where the window starts and it
    adapts to the items' pace (`_window.adapted`).  `workers` is how many items run at
    once.  `progress` is a tqdm-like bar or None.  `keepalive` is held for the stream's
    life (the Pool, so it is not collected and shut down under a running stream).
    `withdraw` is called when the stream ends with items still in flight (the backend
    may take back those sent ahead).  A resumed stream gets `consumed` (from
    `_resume.parse_state`) and a `source` without the consumed items: ordered, its keys
    start at `consumed`; unordered (`keyed`), it yields ``(position, item)``.
    `checkpoint` is a path the state is saved to every `checkpoint_every` seconds and
    when the stream ends.
    """

    __slots__ = (
        "_batch_size",
        "_batched",
        "_checked_at",
        "_checked_count",
        "_checkpoint",
        "_checkpoint_every",
        "_consumed",
        "_done_below",
        "_exhausted",
        "_floor",
        "_fn",
        "_get",
        "_handed_keys",
        "_item_size",
        "_keepalive",
        "_keyed",
        "_length",
        "_owner",
        "_phase",
        "_progress",
        "_raise_errors",
        "_saved_at",
        "_slow_read",
        "_source",
        "_stopped",
        "_submit",
        "_value_size",
        "_window",
        "_withdraw",
        "_workers",
        "adaptive",
    )

    def __init__(
        self,
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
        length: int | None = None,
        consumed: int | Consumed = 0,
        keyed: bool = False,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: float = 0.0,
    ) -> None:
        self._submit: Callable[[Task], None] | None = submit  # None once ended
        self._fn: Callable[[Any], Any] | None = fn  # None once ended: nothing held
        self._source = source
        self._workers = workers
        self.adaptive = adaptive
        self._raise_errors = on_error == "raise"
        self._batch_size = batch_size
        self._batched = batched
        self._progress: Any = progress
        self._keepalive: object = keepalive
        self._withdraw: Callable[[], None] | None = withdraw
        self._owner = owner = StreamOwner()
        track_stream(owner)  # cancelled at interpreter exit if still open
        self._get = owner.results.get
        start = consumed if isinstance(consumed, int) else 0
        self._window: Window[Outcome] = Window(capacity, ordered=ordered, start=start)
        self._phase = _Phase.NEW
        self._exhausted = False
        # Why reading stopped short, raised once everything read before it is delivered:
        # the pool was shut down under this stream (PoolClosed), or the input raised.
        self._stopped: Exception | None = None
        self._slow_read = 0.0  # how long the last read of the input took, if over SLOW_READ
        # Sizes (not the objects: nothing handed out is held) of the last item read and
        # of a result, for the adaptive window's memory bound.
        self._item_size = self._value_size = 0
        self._floor, self._checked_at, self._checked_count = capacity, time.monotonic(), start
        # Consumed input positions: ordered, all below `_done_below`; unordered, those in
        # `_consumed`.  `_handed_keys`: unordered, the keys handed out by the last call,
        # consumed at the next.
        self._length = length
        self._done_below = start
        self._consumed = consumed if isinstance(consumed, Consumed) else None
        if not ordered and self._consumed is None:
            self._consumed = Consumed()
        self._handed_keys: list[int] = []
        self._keyed = keyed
        self._checkpoint = checkpoint
        self._checkpoint_every = checkpoint_every
        self._saved_at = time.monotonic()

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        """Hand out the next result (or batch); what the last call handed out is
        consumed from now on."""
        # One frame per item, locals for what the loop reads: this is the hot path.
        window = self._window
        if self._phase is not _OPEN:
            if self._phase is _ENDED:
                raise StopIteration
            self._phase = _OPEN
            first = True
        else:
            first = False
        try:
            if first:
                self._refill()
            else:
                if window.ordered:
                    self._done_below = window.handed
                elif self._handed_keys:
                    add = self._consumed.add  # type: ignore[union-attr]  # set if unordered
                    for key in self._handed_keys:
                        add(key)
                    self._handed_keys.clear()
                if self._slow_read:
                    self._refill()  # after a hand-out: a slow read does not delay a ready one
            if (
                self._checkpoint is not None
                and time.monotonic() - self._saved_at >= self._checkpoint_every
            ):
                self._save()
            if not window.unpopped:
                stopped, self._stopped = self._stopped, None
                if stopped is not None:
                    raise stopped
                raise StopIteration
            get, batch_size, raise_errors = self._get, self._batch_size, self._raise_errors
            keys = None if window.ordered else self._handed_keys
            out: list[Any] = []  # the results of the batch being built
            while len(out) < batch_size and window.unpopped:
                outcome = window.pop()
                while outcome is None:
                    # Wake-up path: every submitted task's outcome (module docstring).
                    # In slices: Ctrl-C that the kernel handed to another thread is
                    # acted on only when this thread runs Python code again.
                    try:
                        arrived = get(True, SIGNAL_SLICE)
                    except Empty:
                        continue
                    outcome = window.offer(arrived[0], arrived)
                    del arrived
                key, ok, value, worker = outcome
                del outcome
                if not ok:
                    if isinstance(value, FATAL):
                        raise value  # the pool, not the task, failed: never a result
                    add_task_note(value, key, worker)
                    if raise_errors:
                        raise value
                out.append(value)
                del value
                if keys is not None:
                    keys.append(key)
            window.hand_out()
            adaptive = self.adaptive
            if adaptive and window.handed - self._checked_count >= window.capacity:
                self._value_size = nbytes(out[-1])
                self._adapt()
            if not self._slow_read and (not adaptive or window.room() >= window.capacity // 8):
                # Before the hand-out: the workers stay busy while the consumer works.  A
                # grown window is topped up an eighth at a time (7/8 stay queued).
                self._refill()
            if self._progress is not None:
                self._progress.update(len(out))
        except BaseException:
            # Exhausted (StopIteration), failed, or interrupted: the stream is over.
            self._end()
            raise
        result: T = _take(out, self._batched)  # the consumer holds what it got, not us
        return result

    def _result_soon(self, timeout: float) -> bool:
        """Wait up to `timeout` for a result that may be handed out now."""
        window, clock = self._window, time.monotonic
        deadline = clock() + timeout
        while not window.ready():
            left = deadline - clock()
            if left <= 0:
                return False
            try:
                arrived = self._get(True, min(left, SIGNAL_SLICE))
            except Empty:
                continue
            window.add(arrived[0], arrived)
        return True

    def _adapt(self) -> None:
        """Resize the adaptive window from the pace of the items handed out since the
        last look (once per window's worth)."""
        window = self._window
        now = time.monotonic()
        per_item = (now - self._checked_at) / (window.handed - self._checked_count)
        window.capacity = adapted(
            window.capacity,
            floor=self._floor,
            per_item=per_item,
            size=self._item_size + self._value_size,
        )
        self._checked_at, self._checked_count = now, window.handed

    def _refill(self) -> None:
        """Read and submit items while the window has room (see SLOW_READ)."""
        window, source, clock = self._window, self._source, time.monotonic
        fn, owner, submit, keyed = self._fn, self._owner, self._submit, self._keyed
        adaptive, workers = self.adaptive, self._workers
        assert fn is not None  # only read while OPEN
        assert submit is not None
        while not self._exhausted and window.has_room():
            slow_read = self._slow_read
            if slow_read and window.unpopped >= workers and self._result_soon(slow_read):
                return  # every worker has an item: hand out what is ready first
            begun = clock()
            try:
                item = next(source)
            except StopIteration:
                self._exhausted = True
                return
            except Exception as exc:
                # Like builtin map: the results of the items read before come first.
                add_note(exc, f"steadypool: raised by the input at input position {window.read}")
                self._exhausted, self._stopped = True, exc
                return
            read = clock()
            self._slow_read = read - begun if read - begun > SLOW_READ else 0.0
            if keyed:
                key, item = item  # a resumed unordered stream: (input position, item)
            else:
                key = window.read
            if adaptive:
                self._item_size = nbytes(item)
            try:
                submit((key, fn, (item,), None, owner, read))
            except PoolClosed as exc:
                # Deliver what is in flight (or its CancelledError) first, then say why
                # the stream stopped short.
                self._exhausted, self._stopped = True, exc
                return
            window.take_key()

    def state_dict(self) -> dict[str, Any]:
        """Return how far the consumer got: a small JSON-safe dict.

        Cheap, and safe from any thread (from another than the consumer's it may lag
        behind by what is consumed meanwhile, never run ahead).

        An item counts as consumed once the consumer has asked for the next one (so an
        item just handed out is not, until the next ``next()``).  An ordered stream
        saves the first position not consumed; an unordered one the consumed positions,
        as half-open ranges.  Pass it to ``imap(..., resume=state)`` (same input, same
        mode) to go on from there without running the consumed items again.
        """
        ordered = self._consumed is None
        consumed = self._done_below if ordered else self._consumed
        assert consumed is not None
        return make_state(ordered=ordered, length=self._length, consumed=consumed)

    def _save(self) -> None:
        assert self._checkpoint is not None
        save_state(self._checkpoint, self.state_dict())
        self._saved_at = time.monotonic()

    def _end(self) -> None:
        """Cancel what is queued and let go of everything (once: `_fn` is None after).

        Not keyed on `owner.cancelled`: the exit hook (`_exit`) sets that first, and the
        stream must still withdraw and save.
        """
        self._phase = _ENDED
        if self._fn is None:
            return
        self._fn = None
        self._owner.cancelled = True
        try:
            if self._withdraw is not None and self._window.unpopped:
                self._withdraw()
            if self._progress is not None:
                self._progress.close()
        finally:
            self._keepalive = self._withdraw = self._progress = self._submit = None
            self._source = iter(())
            if self._checkpoint is not None:
                self._save()

    def close(self) -> None:
        """End the stream: what is queued is cancelled, what runs is discarded.

        Idempotent.  With `checkpoint`, the state is saved a last time.
        """
        if self._phase is _OPEN:
            self._end()
        else:
            self._phase = _Phase.ENDED
            self._owner.cancelled = True

    def __del__(self) -> None:
        if getattr(self, "_phase", _Phase.ENDED) is _Phase.OPEN:
            self._end()

    def __repr__(self) -> str:
        return f"<steadypool.Stream {self._phase.value} {self.state_dict()['count']} consumed>"
