"""Worker functions of tests/test_recycle.py, in a module of their own: a worker process
or Ray actor that unpickles them imports only this (not torch, as the test module does)."""

from __future__ import annotations

import os
import signal
import time

import steadypool as sp

_LEAK: list[bytes] = []  # what `leak` keeps, per worker process


def pid_of(x: int) -> tuple[int, int]:
    time.sleep(0.005)
    return x, os.getpid()


def leak(x: int) -> tuple[int, int]:
    """Keep 16 MiB more each item (touched, so resident)."""
    _LEAK.append(b"x" * (16 << 20))
    return x, os.getpid()


def _created() -> float:
    """When this process was created, in seconds since the epoch (Linux procfs)."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as machine:
        boot = next(int(line.split()[1]) for line in machine if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def created(_worker: sp.Worker) -> float:
    return _created()


def slow_item(x: int) -> tuple[int, int, float, float]:
    """(item, pid, when this process was created, when the item finished)."""
    time.sleep(0.6)
    return x, os.getpid(), sp.current_worker().state, time.time()


def die_once(x: int, marker: str) -> tuple[int, int]:
    """Item 3 kills its worker the first time it runs."""
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x, os.getpid()
