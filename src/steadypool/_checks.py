"""What `Pool` checks before any work starts: arguments, options, and whether this
process may use a pool at all (interpreter exit, a fork).  Pure functions; each raises
a clear TypeError, ValueError or RuntimeError naming the parameter."""

from __future__ import annotations

import os

from . import _exit

__all__ = [
    "check_callable",
    "check_int",
    "check_options",
    "check_seconds",
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


_OPTION_HINTS = {
    "retries": "needs a backend that can kill a stuck or crashed worker and run the item "
    "again on a fresh one: use backend='processes' or 'ray'",
    "start_method": "applies to backend='processes' only",
    "address": "applies to backend='ray' only",
}


def check_options(
    backend: str,
    accepted: frozenset[str],
    retries: int,
    start_method: str | None,
    address: str | None,
) -> None:
    """Refuse options the chosen backend does not take, before it starts."""
    given = {"retries": retries, "start_method": start_method, "address": address}
    for option, value in given.items():
        if value not in (None, 0) and option not in accepted:
            raise ValueError(f"{option}={value!r} {_OPTION_HINTS[option]} (backend={backend!r})")
