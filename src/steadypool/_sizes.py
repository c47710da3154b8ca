"""How many bytes an object holds, for the adaptive window's memory bound; pure.

`sys.getsizeof` sees only an object's own header: about 70 bytes for a torch tensor or
a PIL image of any size, so a window sized by it grew to its item limit while holding
gigabytes (issue 17, hole 6).  `nbytes` counts the memory behind the objects a stream
usually carries -- numpy arrays and anything else with an integer ``nbytes`` (CuPy,
JAX, Arrow), torch tensors, PIL images, bytes and strings -- and walks containers
(lists, tuples, dicts, sets, an object's ``__dict__``) a few levels deep, sampling long
ones.  What it cannot see into it counts with `sys.getsizeof` (which pandas, for one,
answers deeply).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["nbytes"]

_DEPTH = 3  # container levels walked
_SAMPLE = 16  # elements of a long container looked at; the rest are taken to be alike
# PIL modes whose bands are wider than a byte (every other mode: one byte per band).
_PIL_BAND_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def nbytes(obj: Any, depth: int = _DEPTH) -> int:
    """Bytes held by `obj` (an estimate for long containers; never raises)."""
    try:
        return _nbytes(obj, depth)
    except Exception:
        return sys.getsizeof(obj, 64)


_PLAIN = frozenset({int, float, bool, type(None), complex})


def _nbytes(obj: Any, depth: int) -> int:
    if type(obj) in _PLAIN:
        return 32  # no memory behind it; the common case of tiny items, kept cheap
    if isinstance(obj, (bytes, bytearray, str)):
        return sys.getsizeof(obj)
    if isinstance(obj, memoryview):
        return obj.nbytes
    size = getattr(obj, "nbytes", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size + 100  # numpy and its kin (the header: about 100 bytes)
    kind = type(obj)
    module = kind.__module__
    if module.startswith("torch") and hasattr(obj, "element_size"):
        return int(obj.element_size() * obj.nelement()) + 100
    if module.startswith("PIL.") and hasattr(obj, "getbands"):
        width, height = obj.size
        return int(width * height * len(obj.getbands()) * _PIL_BAND_BYTES.get(obj.mode, 1) + 100)
    if depth <= 0:
        return sys.getsizeof(obj)
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + _sampled(
            [*obj.keys(), *obj.values()] if len(obj) <= _SAMPLE else obj.values(),
            len(obj),
            depth,
        )
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sys.getsizeof(obj) + _sampled(obj, len(obj), depth)
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict) and attributes:
        return sys.getsizeof(obj) + _nbytes(attributes, depth - 1)
    return sys.getsizeof(obj)


def _sampled(items: Any, count: int, depth: int) -> int:
    """The bytes of `count` elements, from the first few of `items`."""
    total, seen = 0, 0
    for item in items:
        total += _nbytes(item, depth - 1)
        seen += 1
        if seen >= _SAMPLE:
            break
    return total if seen >= count or not seen else total * count // seen
