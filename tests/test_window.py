"""The pure window: reorder buffer and bound, for any arrival order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steadypool._window import ADAPTIVE_MAX, Window, adapted


@given(
    capacity=st.integers(1, 12),
    total=st.integers(0, 60),
    ordered=st.booleans(),
    data=st.data(),
)
def test_window_hands_out_every_item_once_in_order_within_capacity(
    capacity: int, total: int, ordered: bool, data: st.DataObject
) -> None:
    """Whatever order results arrive in, and whether they are stored (`add`) or offered
    (`offer`, which hands back one whose turn it is without storing it), all come out
    once, in order if asked, and the window never holds more than `capacity` items
    read and not handed out."""
    window: Window[tuple[int]] = Window(capacity, ordered=ordered)
    pending: list[int] = []  # submitted, not yet finished
    out: list[int] = []
    read = 0
    while len(out) < total:
        while read < total and window.has_room():
            pending.append(window.take_key())
            read += 1
        assert window.read - window.handed <= capacity
        assert window.room() == capacity - (window.read - window.handed)
        assert window.has_room() == (window.room() > 0)
        assert window.held <= capacity
        result = window.pop()
        if result is None:
            assert pending, "nothing pending, yet nothing ready: the window stalled"
            finished = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            if data.draw(st.booleans()):
                window.add(finished, (finished,))
                continue
            result = window.offer(finished, (finished,))
            if result is None:
                continue
        out.append(result[0])
        window.hand_out()
    assert sorted(out) == list(range(total))
    if ordered:
        assert out == list(range(total))
    assert window.unpopped == 0


def test_window_rejects_zero_capacity() -> None:
    """A window that could hold nothing would never make progress."""
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Window(0)


def test_the_adaptive_size_doubles_halves_and_stays_within_its_bounds() -> None:
    """Fast items double the window up to ADAPTIVE_MAX and the memory bound, slow ones
    halve it down to where it started."""
    assert adapted(8, floor=4, per_item=1e-5, size=100) == 16
    assert adapted(ADAPTIVE_MAX, floor=4, per_item=1e-5, size=100) == ADAPTIVE_MAX
    assert adapted(512, floor=4, per_item=1e-5, size=1 << 20) == 64  # 64 MiB of 1 MiB items
    assert adapted(16, floor=4, per_item=1.0, size=100) == 8
    assert adapted(4, floor=4, per_item=1.0, size=100) == 4
    assert adapted(8, floor=4, per_item=5e-3, size=100) == 8
    assert adapted(8, floor=4, per_item=1e-5, size=1 << 40) == 4  # never below the floor
