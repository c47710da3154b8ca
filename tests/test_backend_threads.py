"""Behaviour that only the thread backend has."""

from __future__ import annotations

import threading

import pytest

import steadypool as sp

WAIT = 10.0


def test_shutdown_from_inside_a_task_does_not_deadlock() -> None:
    """A task may shut its own pool down; it does not wait for itself."""
    pool = sp.Pool(1)
    assert pool.submit(lambda: pool.shutdown(wait=True)).result(WAIT) is None
    pool.shutdown()


@pytest.mark.timeout(30)
def test_tasks_shutting_their_pool_down_at_once_do_not_deadlock() -> None:
    """Two tasks calling shutdown(wait=True) together, inside a `with` block, neither
    wait for each other nor hang the block's exit."""
    both = threading.Barrier(2)
    with sp.Pool(2) as pool:

        def task() -> int:
            both.wait(WAIT)
            pool.shutdown(wait=True)
            return 1

        futures = [pool.submit(task) for _ in range(2)]
    assert [f.result(WAIT) for f in futures] == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retries": 1}, "retries=1 needs a backend that can kill"),
        ({"start_method": "spawn"}, "applies to backend='processes' only"),
    ],
)
def test_process_only_options_are_refused_on_threads(kwargs: dict[str, object], match: str) -> None:
    """Options that only make sense with worker processes say so."""
    with pytest.raises(ValueError, match=match):
        sp.Pool(1, **kwargs)  # type: ignore[arg-type]
