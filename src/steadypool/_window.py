"""The bounded, ordered window of one stream: pure bookkeeping, no threads.

A stream reads an item from its input only while the window has room, gives it a key
(its input position), and later hands results to the consumer.  The window counts
every item read and not yet handed out, whether it is queued, running, finished and
waiting for its turn (the reorder buffer) or collected into a batch not yet yielded.
So the input is never read more than `capacity` items ahead of the consumer, and no
more than `capacity` results are ever held.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["ADAPTIVE_BYTES", "ADAPTIVE_MAX", "GROW_BELOW", "SHRINK_ABOVE", "Window", "adapted"]

T = TypeVar("T")

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


def adapted(capacity: int, *, floor: int, per_item: float, size: int) -> int:
    """The adaptive window's next capacity.

    Args:
        capacity: The capacity now.
        floor: The capacity it started at; it never shrinks below it.
        per_item: Seconds per item handed out since the last look.
        size: Bytes of one item plus one result (`nbytes`).

    Returns:
        Double `capacity` if items went faster than GROW_BELOW apiece, half of it if
        slower than SHRINK_ABOVE, else the same; always within ``[floor, ceiling]``,
        where the ceiling is ADAPTIVE_MAX items and ADAPTIVE_BYTES of items and results
        (but never below `floor`).
    """
    ceiling = max(floor, min(ADAPTIVE_MAX, ADAPTIVE_BYTES // max(size, 1)))
    if per_item < GROW_BELOW:
        capacity = 2 * capacity
    elif per_item > SHRINK_ABOVE:
        capacity = max(floor, capacity // 2)
    return min(capacity, ceiling)


class Window(Generic[T]):
    """Counts and reorders the items of one stream.

    Args:
        capacity: Most items read from the input and not yet handed out.
        ordered: Hand out in input order (a reorder buffer) or in arrival order.
        start: The first key (an ordered stream resumed past its first items).
    """

    __slots__ = ("_arrived", "_buffer", "capacity", "handed", "ordered", "popped", "read")

    def __init__(self, capacity: int, *, ordered: bool = True, start: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"window capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.ordered = ordered
        # The counters start at `start` (a resumed ordered stream: its first key is the
        # first input position not yet consumed); only their differences count room.
        self.read = start  # items read from the input; the next key
        self.popped = start  # items taken out of the buffer (handed or in a batch being built)
        self.handed = start  # items handed to the consumer
        self._buffer: dict[int, T] = {}  # ordered: finished items by key, waiting their turn
        self._arrived: deque[T] = deque()  # unordered: finished items in arrival order

    def has_room(self) -> bool:
        """Whether one more item may be read from the input."""
        return self.read - self.handed < self.capacity

    def room(self) -> int:
        """How many more items may be read from the input now."""
        return self.capacity - (self.read - self.handed)

    def take_key(self) -> int:
        """Account for one item read from the input and return its key."""
        key = self.read
        self.read = key + 1
        return key

    def add(self, key: int, result: T) -> None:
        """Store the finished item `key` until it may be handed out."""
        if self.ordered:
            self._buffer[key] = result
        else:
            self._arrived.append(result)

    def offer(self, key: int, result: T) -> T | None:
        """`add` then `pop`, without storing a result whose turn it is."""
        if not self.ordered or key == self.popped:
            self.popped += 1
            return result
        self._buffer[key] = result
        return None

    def pop(self) -> T | None:
        """Take the next result that may be handed out, or None if it has not arrived."""
        if self.ordered:
            result = self._buffer.pop(self.popped, None)
        elif self._arrived:
            result = self._arrived.popleft()
        else:
            return None
        if result is not None:
            self.popped += 1
        return result

    def ready(self) -> bool:
        """Whether `pop` would return a result now."""
        return self.popped in self._buffer if self.ordered else bool(self._arrived)

    def hand_out(self) -> None:
        """Account for everything popped as handed to the consumer (frees room)."""
        self.handed = self.popped

    @property
    def unpopped(self) -> int:
        """Items read but not yet popped: queued, running, or buffered."""
        return self.read - self.popped

    @property
    def held(self) -> int:
        """Results held right now: buffered plus popped but not yet handed out."""
        return len(self._buffer) + len(self._arrived) + self.popped - self.handed
