"""What `Pool` checks before any work starts: arguments, options, and whether this
process may use a pool at all (interpreter exit, a fork).  Pure functions; each raises
a clear TypeError, ValueError or RuntimeError naming the parameter."""

from __future__ import annotations

import os
import re

from . import _exit

__all__ = [
    "check_callable",
    "check_int",
    "check_options",
    "check_seconds",
    "check_size",
    "default_workers",
    "forks",
    "refuse_at_exit",
]


def default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def refuse_at_exit() -> None:
    """No new work once the interpreter is exiting (as `concurrent.futures` says)."""
    if _exit.exiting:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")


# Forks of this process so far, as counted in each forked child (`os.register_at_fork`):
# a pool made before the last fork has no threads and no workers here (a fork copies
# only the thread that forked), so it must refuse work at once rather than take it and
# never run it (issue 17, hole 5).  Written only in a child right after a fork, when it
# has one thread.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


def forks() -> int:
    """Forks of this process so far (0 in the process that imported steadypool)."""
    return _forks


os.register_at_fork(after_in_child=_count_fork)


def check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum} ({meaning}), got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} ({meaning}), got {value}")
    return value


def check_callable(name: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {fn!r} ({type(fn).__name__})")


def check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
    return float(value)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def check_size(name: str, value: object) -> int | None:
    """A number of bytes: an int, or a string such as ``"4GiB"``, ``"512 MiB"``,
    ``"1.5GB"`` (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000); None stays
    None."""
    if value is None:
        return None
    hint = f"{name} must be a number of bytes > 0 or a size such as '4GiB' or '512MB'"
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(f"{hint}, got {value!r}")
        size = int(float(match.group(1)) * _UNITS[unit])
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise TypeError(f"{hint}, got {value!r}")
    if size <= 0:
        raise ValueError(f"{hint}, got {value!r}")
    return size


_RECYCLE = (
    "needs workers that can be replaced to give their memory back: threads share this "
    "process, whose memory a new thread does not free; use backend='processes' or 'ray'"
)
_OPTION_HINTS = {
    "retries": "needs a backend that can kill a stuck or crashed worker and run the item "
    "again on a fresh one: use backend='processes' or 'ray'",
    "start_method": "applies to backend='processes' only",
    "address": "applies to backend='ray' only",
    "max_tasks_per_worker": _RECYCLE,
    "max_worker_memory": _RECYCLE,
}


def check_options(backend: str, accepted: frozenset[str], **given: object) -> None:
    """Refuse options the chosen backend does not take (`given` by name; None and 0 are
    "not given"), before it starts."""
    for option, value in given.items():
        if value not in (None, 0) and option not in accepted:
            raise ValueError(f"{option}={value!r} {_OPTION_HINTS[option]} (backend={backend!r})")
