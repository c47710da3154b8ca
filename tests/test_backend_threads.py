"""Behaviour that only the thread backend has."""

from __future__ import annotations

import pytest

import steadypool as sp

WAIT = 10.0


def test_shutdown_from_inside_a_task_does_not_deadlock() -> None:
    """A task may shut its own pool down; it does not wait for itself."""
    pool = sp.Pool(1)
    assert pool.submit(lambda: pool.shutdown(wait=True)).result(WAIT) is None
    pool.shutdown()


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
