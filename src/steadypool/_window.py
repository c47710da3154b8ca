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

__all__ = ["Window"]

T = TypeVar("T")


class Window(Generic[T]):
    """Counts and reorders the items of one stream.

    Args:
        capacity: Most items read from the input and not yet handed out.
        ordered: Hand out in input order (a reorder buffer) or in arrival order.
    """

    __slots__ = ("_arrived", "_buffer", "capacity", "handed", "ordered", "popped", "read")

    def __init__(self, capacity: int, *, ordered: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"window capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.ordered = ordered
        self.read = 0  # items read from the input; the next key
        self.popped = 0  # items taken out of the buffer (handed or in a batch being built)
        self.handed = 0  # items handed to the consumer
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
