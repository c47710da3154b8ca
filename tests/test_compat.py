"""`steadypool.compat.BatchThreader`: the seed's class, on a shared pool."""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING

import pytest

from steadypool.compat import BatchThreader, shutdown_shared_pools

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(autouse=True)
def shared_pools_closed(no_leaked_workers: None) -> Iterator[None]:
    """Shut the shared pools down before the leak check runs."""
    yield
    shutdown_shared_pools()


def add(a: int, b: int) -> int:
    return a + b


def test_pop_results_returns_batches_in_order_then_empty() -> None:
    """Results come batch_size at a time, in args_list order; popping past the end
    returns [] instead of hanging."""
    threader = BatchThreader(add, [(i, i) for i in range(10)], batch_size=4, prefetch_size=1)
    assert threader.pop_results() == [0, 2, 4, 6]
    assert threader.pop_results() == [8, 10, 12, 14]
    assert threader.pop_results() == [16, 18]
    assert threader.pop_results() == []
    assert threader.pop_results() == []


def test_args_list_is_not_modified() -> None:
    """The seed popped from the caller's list; this class copies it."""
    args = [(1, 2), (3, 4)]
    threader = BatchThreader(add, args, batch_size=2)
    assert threader.pop_results() == [3, 7]
    assert args == [(1, 2), (3, 4)]


def test_keeps_prefetch_plus_one_batches_in_flight() -> None:
    """(prefetch_size + 1) * batch_size tasks start at construction, and refills keep it."""
    started: list[int] = []
    lock = threading.Lock()
    gate = threading.Event()

    def task(i: int) -> int:
        with lock:
            started.append(i)
        gate.wait(10)
        return i

    threader = BatchThreader(
        task, [(i,) for i in range(40)], batch_size=3, prefetch_size=2, processes=12
    )
    _wait_until(lambda: len(started) >= 9)
    assert sorted(started) == list(range(9))  # only 9 were submitted: 12 workers idle
    gate.set()
    assert threader.pop_results() == [0, 1, 2]
    _wait_until(lambda: len(started) >= 12)
    assert sorted(started) == list(range(12))


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_task_error_raises_from_pop_and_loses_nothing_else() -> None:
    """The failing task's exception is raised (noted with its position); the other
    results of that batch come with the next call and the instance stays usable."""

    def task(i: int) -> int:
        if i == 2:
            raise ZeroDivisionError("item 2")
        return i

    threader = BatchThreader(task, [(i,) for i in range(7)], batch_size=4, prefetch_size=0)
    with pytest.raises(ZeroDivisionError) as info:
        threader.pop_results()
    assert any("args_list[2]" in note for note in info.value.__notes__)
    assert threader.pop_results() == [0, 1, 3, 4]
    assert threader.pop_results() == [5, 6]
    assert threader.pop_results() == []


@pytest.mark.timeout(30)
def test_nested_batch_threaders_do_not_deadlock() -> None:
    """A work function that itself uses a BatchThreader with the same `processes` gets
    its results (the seed's class does; a shared pool would wait on itself)."""

    def outer(i: int) -> int:
        inner = BatchThreader(add, [(i, j) for j in range(4)], batch_size=4, processes=2)
        return sum(inner.pop_results())

    threader = BatchThreader(outer, [(i,) for i in range(6)], batch_size=6, processes=2)
    assert threader.pop_results() == [sum(i + j for j in range(4)) for i in range(6)]


def test_instances_share_one_pool() -> None:
    """Many instances, as in the seed's per-image loop, do not add threads."""
    before = threading.active_count()
    for image in range(200):
        threader = BatchThreader(
            add, [(image, v) for v in range(8)], batch_size=12, prefetch_size=0, processes=8
        )
        assert threader.pop_results() == [image + v for v in range(8)]
    assert threading.active_count() <= before + 8 + 1  # 8 workers and the watchdog


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"func": 3}, "func must be callable"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"prefetch_size": -1}, "prefetch_size must be an int >= 0"),
        ({"processes": 0}, "processes must be an int >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    """Bad arguments raise before any task runs."""
    args: dict[str, object] = {"func": add, "args_list": [(1, 2)], "batch_size": 1}
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        BatchThreader(**args)  # type: ignore[arg-type]


def test_seed_usage_pattern_stress_10000_images() -> None:
    """The seed's loop: a new BatchThreader per image, 8 variants, batch_size=12,
    prefetch_size=0, processes=8, over 10,000 images, with random delays and injected
    errors.  Every result is right and in order, every error surfaces, no thread grows."""
    rng = random.Random(1234)
    delays = [rng.choice([0.0] * 30 + [0.0002]) for _ in range(64)]
    failing = {image for image in range(10_000) if rng.random() < 0.01}

    def work(image: int, variant: int) -> tuple[int, int]:
        delay = delays[(image * 8 + variant) % 64]
        if delay:
            time.sleep(delay)
        if variant == 5 and image in failing:
            raise ValueError(f"image {image}")
        return image, variant

    before = threading.active_count()
    errors = 0
    for image in range(10_000):
        threader = BatchThreader(
            work, [(image, v) for v in range(8)], batch_size=12, prefetch_size=0, processes=8
        )
        if image in failing:
            with pytest.raises(ValueError, match=rf"^image {image}\b"):
                threader.pop_results()
            errors += 1
            expected = [(image, v) for v in range(8) if v != 5]
        else:
            expected = [(image, v) for v in range(8)]
        results = threader.pop_results()
        assert results == expected
        assert threader.pop_results() == []
    assert errors == len(failing) > 0
    assert threading.active_count() <= before + 8 + 1  # 8 workers and the watchdog
