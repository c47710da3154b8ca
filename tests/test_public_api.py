"""The public namespace is what `__all__` says, and the pickling rules hold."""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor

import steadypool
import steadypool.compat


def test_all_lists_exactly_the_public_names() -> None:
    """Every public attribute is in __all__ and every name in __all__ exists."""
    public = {n for n in dir(steadypool) if not n.startswith("_")}
    public -= {"compat"}  # a submodule, imported by the test itself
    assert isinstance(steadypool.__all__, tuple)
    assert set(steadypool.__all__) == public
    for name in steadypool.__all__:
        assert getattr(steadypool, name).__module__.startswith("steadypool")


def test_compat_all_is_honest() -> None:
    """compat exports what it defines."""
    for name in steadypool.compat.__all__:
        assert callable(getattr(steadypool.compat, name))


def test_broken_pool_round_trips_through_pickle() -> None:
    """Exceptions with extra fields survive a process boundary."""
    error = steadypool.BrokenPool("setup failed", worker=steadypool.Worker(1, "cuda:1"))
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, BrokenExecutor)
    assert isinstance(copy, steadypool.BrokenPool)
    assert str(copy) == "setup failed"
    assert copy.worker == steadypool.Worker(1, "cuda:1")


def test_worker_is_frozen() -> None:
    """Worker is an immutable record."""
    worker = steadypool.Worker(0)
    try:
        worker.index = 3  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("Worker should be frozen")
