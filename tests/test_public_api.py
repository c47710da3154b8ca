"""The public namespace is what `__all__` says, and the pickling rules hold."""

from __future__ import annotations

import pickle
import subprocess
import sys
import types
from concurrent.futures import BrokenExecutor

import steadypool
import steadypool.compat


def test_all_lists_exactly_the_public_names() -> None:
    """Every public attribute is in __all__ and every name in __all__ exists."""
    public = {
        n
        for n in dir(steadypool)
        if not n.startswith("_") and not isinstance(getattr(steadypool, n), types.ModuleType)
    }  # the public submodules (compat, cam) are there once imported
    assert isinstance(steadypool.__all__, tuple)
    assert set(steadypool.__all__) == public
    for name in steadypool.__all__:
        assert getattr(steadypool, name).__module__.startswith("steadypool")


def test_cam_all_is_honest_and_imports_no_torch() -> None:
    """steadypool.cam exports what it defines, and importing it loads neither torch nor
    Pillow (they load when a run starts)."""
    code = (
        "import sys, steadypool.cam as c; "
        "assert isinstance(c.__all__, tuple); "
        "assert all(getattr(c, n).__module__.startswith('steadypool') for n in c.__all__); "
        "assert 'torch' not in sys.modules and 'PIL' not in sys.modules, 'loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


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
