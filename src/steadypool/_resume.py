"""Resuming a stream: how far its consumer got, as a small JSON-safe state.

Pure bookkeeping and file handling, no threads.  A stream counts an item as consumed
when its consumer asks for the next one (so whatever the consumer did with it is done).
An ordered stream's consumed items are a prefix of the input: one position says it.  An
unordered one's are any set of positions; `Consumed` holds them as everything below a
low mark plus a sparse set above it (the window bounds the gaps), and writes them as
half-open ranges.  `skip_consumed` rebuilds the input of a resumed stream: the items not
consumed, with their input positions, never running the consumed ones (a `Sequence` is
indexed past them; an iterator is read and discarded).  `save_state` writes a state
atomically (temp file, fsync, rename), so a crash leaves the old state or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "Consumed",
    "load_state",
    "make_state",
    "parse_state",
    "save_state",
    "skip_consumed",
]

_FORMAT = "steadypool.stream/1"  # the state's "format": changes when the layout does
DEFAULT_CHECKPOINT_EVERY = 5.0  # seconds between automatic saves of `checkpoint=`


class Consumed:
    """The consumed input positions of an unordered stream.

    Invariant: every position below `low` is consumed, `low` itself is not, and `above`
    holds the consumed positions over `low`.  `add` is O(1) amortized.
    """

    __slots__ = ("above", "low")

    def __init__(self, ranges: Iterable[Sequence[int]] = ()) -> None:
        self.low = 0
        self.above: set[int] = set()
        for start, stop in ranges:
            for position in range(start, stop):
                self.add(position)

    def add(self, position: int) -> None:
        """Record `position` as consumed."""
        if position != self.low:
            self.above.add(position)
            return
        low, above = position + 1, self.above
        while above and low in above:
            above.remove(low)
            low += 1
        self.low = low

    def __contains__(self, position: int) -> bool:
        return position < self.low or position in self.above

    def __len__(self) -> int:
        return self.low + len(self.above)

    def ranges(self) -> list[list[int]]:
        """The consumed positions as sorted, disjoint half-open ``[start, stop)`` ranges."""
        out: list[list[int]] = [[0, self.low]] if self.low else []
        for position in sorted(self.above):
            if out and out[-1][1] == position:
                out[-1][1] = position + 1
            else:
                out.append([position, position + 1])
        return out

    def last(self) -> int:
        """One past the highest consumed position (0 if none)."""
        return max(self.above) + 1 if self.above else self.low


def make_state(*, ordered: bool, length: int | None, consumed: int | Consumed) -> dict[str, Any]:
    """The JSON-safe state of a stream (see `Stream.state_dict`)."""
    if isinstance(consumed, Consumed):
        return {
            "format": _FORMAT,
            "mode": "unordered",
            "length": length,
            "count": len(consumed),
            "consumed": consumed.ranges(),
        }
    return {
        "format": _FORMAT,
        "mode": "ordered",
        "length": length,
        "count": consumed,
        "consumed": consumed,
    }


def _refuse(state: object, why: str) -> ValueError:
    return ValueError(f"steadypool: cannot resume from this state: {why} (state: {state!r:.200})")


def parse_state(state: object, *, ordered: bool, length: int | None) -> int | Consumed:
    """Check a saved state against the stream about to resume from it.

    Args:
        state: What `Stream.state_dict` returned (perhaps through JSON).
        ordered: The new stream's mode.
        length: ``len()`` of the new stream's input, or None if it has none.

    Returns:
        The consumed positions: a count (ordered) or a `Consumed` (unordered).

    Raises:
        ValueError: Not a stream state, or one of another mode or input length (a
            length is compared when both the state and the input have one).
    """
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise _refuse(state, f"not a steadypool stream state (no 'format': {_FORMAT!r})")
    mode = "ordered" if ordered else "unordered"
    if state.get("mode") != mode:
        raise _refuse(
            state,
            f"it was saved by an {state.get('mode')} stream and this one is {mode} "
            "(the consumed items of one are not those of the other; resume with the "
            "same `ordered=`)",
        )
    saved_length = state.get("length")
    if saved_length is not None and length is not None and saved_length != length:
        raise _refuse(
            state,
            f"it was saved over an input of {saved_length} items and this input has "
            f"{length}: not the same input",
        )
    consumed = state.get("consumed")
    try:
        if ordered:
            if isinstance(consumed, bool) or not isinstance(consumed, int) or consumed < 0:
                raise TypeError
            parsed: int | Consumed = consumed
            end = consumed
        else:
            if not isinstance(consumed, list):
                raise TypeError
            ranges = [(int(start), int(stop)) for start, stop in consumed]
            if any(not 0 <= start < stop for start, stop in ranges):
                raise TypeError
            parsed = Consumed(ranges)
            end = parsed.last()
    except (TypeError, ValueError):
        raise _refuse(state, "its 'consumed' entry is malformed") from None
    if length is not None and end > length:
        raise _refuse(state, f"it consumed up to position {end} of an input of {length} items")
    return parsed


def skip_consumed(iterable: Iterable[Any], consumed: int | Consumed) -> tuple[Iterator[Any], bool]:
    """The input of a resumed stream, without its consumed items (never run).

    Returns:
        ``(source, keyed)``: an ordered stream (`consumed` a count) gets the items from
        position `consumed` on, and its keys continue from there (``keyed`` False); an
        unordered one gets ``(position, item)`` pairs of the items not consumed
        (``keyed`` True).  A `Sequence` is indexed past what is skipped; any other
        iterable is read and what is skipped discarded.
    """
    if isinstance(consumed, int):
        if isinstance(iterable, Sequence):
            return map(iterable.__getitem__, range(consumed, len(iterable))), False
        return islice(iterable, consumed, None), False
    if isinstance(iterable, Sequence):
        positions = _missing(consumed, len(iterable))
        return ((i, iterable[i]) for i in positions), True
    return _unconsumed(iter(iterable), consumed), True


def _missing(consumed: Consumed, length: int) -> Iterator[int]:
    """The positions below `length` not in `consumed`, ascending."""
    end = min(consumed.last(), length)
    for position in range(consumed.low, end):
        if position not in consumed.above:
            yield position
    yield from range(end, length)


def _unconsumed(source: Iterator[Any], consumed: Consumed) -> Iterator[tuple[int, Any]]:
    """``(position, item)`` of an iterator's items not in `consumed`."""
    end = consumed.last()
    for position, item in enumerate(source):
        if position >= end or position not in consumed:
            yield position, item


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temp file beside it, fsync, rename."""
    path = os.fspath(path)
    temp = f"{path}.{os.getpid()}.tmp"
    data = json.dumps(state, separators=(",", ":")).encode()
    with open(temp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state saved at `path`, or None if there is no file.

    Raises:
        ValueError: The file is not JSON (not a checkpoint of ours).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    try:
        state: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ValueError(
            f"steadypool: checkpoint {os.fspath(path)!r} is not a stream state (not JSON); "
            "remove it to start the stream from the beginning"
        ) from None
    return state
