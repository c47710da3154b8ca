"""Helpers that work the same in a thread and in a worker process: gates, journals and
the faults of the fault table (raise, hang, os._exit, SIGKILL, segfault, and objects
that fail while they are pickled or rebuilt)."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

WAIT = 10.0
T = TypeVar("T")
P = TypeVar("P")


@dataclass(frozen=True)
class Gate:
    """An event any process can wait on: set means the file exists."""

    path: Path

    def set(self) -> None:
        self.path.touch()

    def is_set(self) -> bool:
        return self.path.exists()

    def wait(self, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True


@dataclass(frozen=True)
class Journal:
    """An append-only record any process can write to (one line per entry)."""

    path: Path

    def record(self, value: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{value}\n")  # one small O_APPEND write: atomic

    def read(self) -> list[int]:
        if not self.path.exists():
            return []
        return [int(line) for line in self.path.read_text().split()]

    def wait_for(self, count: int, timeout: float = WAIT) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(entries := self.read()) < count:
            assert time.monotonic() < deadline, f"{self.path.name}: {entries}"
            time.sleep(0.002)
        return entries


def hang(gate: Gate) -> None:
    """Stands for a call that never returns (until the test releases it)."""
    gate.wait(3600)


def exit_now(code: int = 3) -> None:
    os._exit(code)


def exit_after(seconds: float, code: int = 3) -> None:
    """Run a little (so that tiny items sent along wait behind it), then os._exit."""
    time.sleep(seconds)
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


# --- Pickling faults (loky's crash_cases, pebble's FrozenError) ---------------------
# Each object misbehaves at one step of its trip: while it is pickled (on the sending
# side) or while it is rebuilt (on the receiving side).  The same classes serve as an
# argument (parent -> worker), a result (worker -> parent) and, through the *Error
# subclasses, an exception raised by a task.


def raise_unpickling_error() -> None:
    """Called by pickle when an `ErrorAtUnpickle` is rebuilt."""
    raise pickle.UnpicklingError("ErrorAtUnpickle: rebuilding this object fails")


def system_exit() -> None:
    """Called by pickle when an `ExitAtUnpickle` is rebuilt (loky's `exit`)."""
    sys.exit(0)


class ErrorAtPickle:
    """Raises `PicklingError` while it is pickled."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise pickle.PicklingError("ErrorAtPickle: pickling this object fails")


class ExitAtPickle:
    """Raises `SystemExit` (a `BaseException`) while it is pickled."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        sys.exit(0)


class ErrorAtUnpickle:
    """Pickles fine; raises `UnpicklingError` while it is rebuilt."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        return raise_unpickling_error, ()


class ExitAtUnpickle:
    """Pickles fine; raises `SystemExit` while it is rebuilt (loky's `ExitAtUnpickle`)."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        return system_exit, ()


class CrashAtUnpickle:
    """Pickles fine; segfaults the process that rebuilds it."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        return segfault, ()


class KillAtPickle:
    """SIGKILLs the process that pickles it: a worker that dies while the result of its
    finished item is on its way back (pebble's deadlock-on-result test)."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        kill_self()
        raise AssertionError("unreachable")


class HoldsLock:
    """A value that cannot be pickled at all (it holds a `threading.Lock`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return "HoldsLock()"


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__("UnpicklableError: holds a lock")
        self.lock = threading.Lock()


class UnrebuildableError(Exception):
    """Pickles fine but cannot be rebuilt: pickle calls ``cls(*args)`` with one argument
    and `__init__` needs two."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"UnrebuildableError: {what} ({why})")


@dataclass(frozen=True)
class FrozenError(Exception):
    """An exception that is a frozen dataclass: setting ``__cause__``, ``__notes__`` or
    any attribute on it raises `FrozenInstanceError` (pebble's FrozenError).  It has no
    fields, so it survives a pickle round trip."""


class ErrorAtPickleError(ErrorAtPickle, Exception):
    """An exception whose pickling raises `PicklingError`."""


class ExitAtPickleError(ExitAtPickle, Exception):
    """An exception whose pickling raises `SystemExit`."""


class ErrorAtUnpickleError(ErrorAtUnpickle, Exception):
    """An exception whose rebuilding raises `UnpicklingError`."""


class ExitAtUnpickleError(ExitAtUnpickle, Exception):
    """An exception whose rebuilding raises `SystemExit`."""


@dataclass(frozen=True)
class Fault:
    """An item of the fault table that makes the task misbehave: ``apply`` calls `act`.

    `act` is a module-level function (or a partial of one), so it pickles by reference.
    """

    act: Callable[[], object]


def apply(item: object) -> object:
    """The task of the fault table: a `Fault` acts, anything else comes back as it is
    (an argument fault never gets here: it fails on its way to the worker)."""
    if isinstance(item, Fault):
        return item.act()
    return item


def raise_value_error() -> None:
    raise ValueError("task failed on purpose")


def raise_system_exit() -> None:
    """A task that raises `SystemExit` (loky's `exit`): a task's own exception."""
    sys.exit(5)


def return_instance(cls: type) -> object:
    """A task that returns a fresh ``cls()`` (loky's `return_instance`)."""
    return cls()


def raise_instance(cls: type[BaseException]) -> None:
    """A task that raises a fresh ``cls()``."""
    raise cls()


def raise_unrebuildable() -> None:
    raise UnrebuildableError("a", "b")


# --- A scenario that cannot hang the test run -----------------------------------------


class Stages:
    """What a scenario has reached, and the pools it opened (so a hung one can be let go)."""

    def __init__(self) -> None:
        self.name = "start"
        self.pools: list[Any] = []

    def __call__(self, name: str) -> None:
        self.name = name

    def open(self, pool: P) -> P:
        self.pools.append(pool)
        return pool


def within(seconds: float, body: Callable[[Stages], T]) -> T:
    """Run `body` in a daemon thread and wait at most `seconds` for it.

    A body that does not return in time is a hang: its pools are shut down without
    waiting and the test fails naming the stage it hung in, with its stack.  A
    `BaseException` that escapes the body (`SystemExit` out of the library) fails the
    test as an assertion rather than ending pytest.
    """
    stages = Stages()
    outcome: list[T] = []
    raised: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(body(stages))
        except BaseException as exc:  # reported to the test's thread below
            raised.append(exc)

    thread = threading.Thread(target=target, name="fault-scenario", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame else "(no stack)"
        for pool in stages.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        raise AssertionError(f"hang: stuck for {seconds}s in stage {stages.name!r} at\n{stack}")
    if raised:
        exc = raised[0]
        if not isinstance(exc, Exception):
            raise AssertionError(f"{exc!r} escaped in stage {stages.name!r}") from exc
        raise exc
    return outcome[0]
