"""Helpers that work the same in a thread and in a worker process: gates, journals and
the faults of the fault table (raise, hang, os._exit, SIGKILL, segfault)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

WAIT = 10.0


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


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)
