"""Worker functions of tests/test_recycle.py, in a module of their own: a worker process
or Ray actor that unpickles them imports only this (not torch, as the test module does)."""

from __future__ import annotations

import os
import signal
import time

_LEAK: list[bytes] = []  # what `leak` keeps, per worker process


def pid_of(x: int) -> tuple[int, int]:
    time.sleep(0.005)
    return x, os.getpid()


def leak(x: int) -> tuple[int, int]:
    """Keep 16 MiB more each item (touched, so resident)."""
    _LEAK.append(b"x" * (16 << 20))
    return x, os.getpid()


def _stat(pid: str) -> tuple[int, int]:
    """(parent pid, start time in clock ticks since boot) of a process (Linux procfs)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def waits_for_successor(x: int) -> tuple[int, int, bool]:
    """(item, pid, whether a sibling worker process started after this one appeared
    while this item ran).  Waits for it at most 30 s: the pool must have started this
    worker's successor before this item ends, or the answer is False."""
    parent, born = _stat("self")
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                their_parent, their_birth = _stat(pid)
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile, or not a process
            if their_parent == parent and their_birth > born:
                return x, os.getpid(), True
        time.sleep(0.02)  # polling /proc: nothing to wait on for another's birth
    return x, os.getpid(), False


def die_once(x: int, marker: str) -> tuple[int, int]:
    """Item 3 kills its worker the first time it runs."""
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x, os.getpid()
