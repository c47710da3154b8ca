"""Bad input is refused at the call, with a message saying what is allowed."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import steadypool as sp

# A device the machine lacks is refused; without torch (the base install) the error says
# that the device needs torch instead.
NO_CUDA_7 = (
    r"cuda:7 is not available on this machine; available: cpu"
    if importlib.util.find_spec("torch") is not None
    else r"devices \['cuda:7'\] need torch, which is not installed; install the 'torch' extra"
)


def one(x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": 0}, ValueError, r"workers must be >= 1"),
        ({"workers": -3}, ValueError, r"workers must be >= 1"),
        ({"workers": 2.5}, TypeError, r"workers must be an int"),
        ({"workers": True}, TypeError, r"workers must be an int"),
        ({"backend": "gpu"}, ValueError, r"unknown backend 'gpu': use one of 'threads'"),
        ({"backend": None}, ValueError, r"unknown backend None"),
        ({"setup": 42}, TypeError, r"setup must be callable"),
        ({"devices": []}, ValueError, r"at least one device"),
        ({"devices": "cuda:0"}, TypeError, r"write devices=\['cuda:0'\]"),
        ({"devices": ["tpu:0"]}, ValueError, r"unknown device 'tpu:0'"),
        ({"devices": ["cuda:x"]}, ValueError, r"unknown device 'cuda:x'"),
        ({"devices": [0]}, TypeError, r"each device must be a string"),
        ({"devices": ["cpu", "cpu"], "workers": 3}, ValueError, r"does not match the 2 devices"),
        ({"devices": ["cuda:7"]}, ValueError, NO_CUDA_7),
        ({"backend": "processes", "address": "auto"}, ValueError, r"applies to backend='ray'"),
        ({"backend": "ray", "start_method": "spawn"}, ValueError, r"backend='processes' only"),
    ],
)
def test_pool_rejects_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    """Each bad constructor argument raises before any worker starts."""
    with pytest.raises(error, match=match):
        sp.Pool(**kwargs)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p.submit(3), TypeError, r"fn must be callable, got 3"),
        (lambda p: p.map(None, [1]), TypeError, r"fn must be callable"),
        (lambda p: p.map(one, [1], chunksize=0), ValueError, r"chunksize must be >= 1"),
        (lambda p: p.imap("f", [1]), TypeError, r"fn must be callable"),
        (lambda p: p.imap(one, [1], window=0), ValueError, r"window must be >= 1"),
        (lambda p: p.imap(one, [1], window=1.5), TypeError, r"window must be an int"),
        (lambda p: p.imap(one, [1], on_error="skip"), ValueError, r"'raise' or 'return'"),
        (lambda p: p.imap(one, 5), TypeError, r"not iterable"),
        (lambda p: p.imap_batches(one, [1], 0), ValueError, r"batch_size must be >= 1"),
        (lambda p: p.imap_batches(one, [1], 2, prefetch=-1), ValueError, r"prefetch must be >= 0"),
    ],
)
def test_calls_reject_bad_arguments_before_any_work(
    backend: str, call: Any, error: type, match: str
) -> None:
    """Bad arguments to submit/map/imap/imap_batches raise at the call; nothing runs."""
    ran: list[int] = []

    def spy(x: int) -> int:
        ran.append(x)
        return x

    pool = sp.Pool(2, backend=backend, setup=lambda w: spy)
    with pool, pytest.raises(error, match=match):
        call(pool)
    assert ran == []
