"""Order and window hold for random inputs, worker counts, windows and task durations."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steadypool as sp

if TYPE_CHECKING:
    from collections.abc import Iterator

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def jittered(x: tuple[int, float]) -> int:
    value, delay = x
    if delay:
        time.sleep(delay)
    return value


delays = st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.0005, 0.002]), max_size=60)


@FAST
@given(durations=delays, workers=st.integers(1, 5), window=st.integers(1, 9))
def test_imap_order_and_window_bound(durations: list[float], workers: int, window: int) -> None:
    """Results come back in input order, and the input is never read more than
    `window` items ahead of what the consumer has received (plus the item it is
    being handed)."""
    received = 0
    read = 0
    overshoot: list[int] = []

    def source() -> Iterator[tuple[int, float]]:
        nonlocal read
        for i, d in enumerate(durations):
            read += 1
            if read - received > window + 1:
                overshoot.append(read - received)
            yield (i, d)

    out = []
    with sp.Pool(workers) as pool:
        for value in pool.imap(jittered, source(), window=window):
            received += 1
            out.append(value)
    assert out == list(range(len(durations)))
    assert not overshoot


@FAST
@given(
    durations=delays,
    workers=st.integers(1, 5),
    batch=st.integers(1, 7),
    prefetch=st.integers(0, 3),
)
def test_imap_batches_order_and_bound(
    durations: list[float], workers: int, batch: int, prefetch: int
) -> None:
    """Batches are full (but the last), in order, and read-ahead stays within
    (prefetch + 1) * batch_size beyond the batches received (plus the batch in hand)."""
    received = 0
    read = 0
    limit = (prefetch + 1) * batch + batch
    worst = 0

    def source() -> Iterator[tuple[int, float]]:
        nonlocal read, worst
        for i, d in enumerate(durations):
            read += 1
            worst = max(worst, read - received)
            yield (i, d)

    batches = []
    with sp.Pool(workers) as pool:
        for got in pool.imap_batches(jittered, source(), batch, prefetch=prefetch):
            received += len(got)
            batches.append(got)
    assert [x for b in batches for x in b] == list(range(len(durations)))
    assert all(len(b) == batch for b in batches[:-1])
    assert worst <= limit


@FAST
@given(n=st.integers(0, 80), workers=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_unordered_imap_loses_nothing(n: int, workers: int, seed: int) -> None:
    """ordered=False yields every result exactly once."""
    rng = random.Random(seed)
    items = [(i, rng.choice([0.0, 0.0, 0.001])) for i in range(n)]
    with sp.Pool(workers) as pool:
        out = list(pool.imap(jittered, items, ordered=False, window=workers))
    assert sorted(out) == list(range(n))
