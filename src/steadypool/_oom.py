"""Naming the kernel's out-of-memory killer when a worker process dies by SIGKILL.

The kernel counts its OOM kills, and raises the count before it sends the SIGKILL:
per cgroup (v2: ``oom_kill`` in ``memory.events``; v1: ``oom_kill`` in
``memory.oom_control``) and for the whole machine (``oom_kill`` in ``/proc/vmstat``).
So a worker that died by SIGKILL was killed by the OOM killer if the count of the
narrowest file that has one rose, and was not if it did not; only when no file has a
count is the answer "possibly".

Data flow: the process backend makes a `MemoryProbe` per worker process when it starts
it (reading ``/proc/<pid>/cgroup`` to find the count's file, whose count a shared
`KillCounter` takes as its baseline), samples the worker's resident memory
(``/proc/<pid>/statm``) after items arrive (`MemoryProbe.sample`, at most every
`SAMPLE_EVERY` seconds), and asks `crash_cause` for the sentence its `WorkerCrashed`
gives.  Every path is a parameter, so tests inject counter files.

Who owns what: a probe belongs to the pool's manager thread; `KillCounter` is shared
by every pool of the process, and its lock guards its counts.  A rise in a count is
attributed to one dead worker at a time (two workers killed by one OOM event are both
named), and a rise nobody claims (another process of the cgroup was killed) may be
taken for a later worker's SIGKILL: the message says what it read.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._remote import likely_cause

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "KILLS",
    "SAMPLE_EVERY",
    "CounterFile",
    "KillCounter",
    "MemoryProbe",
    "crash_cause",
    "memory_line",
    "resident",
    "size_text",
]

SAMPLE_EVERY = 0.05  # seconds between two resident-memory samples of one worker
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class CounterFile:
    """A file with an ``oom_kill <count>`` line, and whose kills it counts."""

    path: str
    scope: str  # "cgroup" (the worker's own) or "machine" (every process)


def read_count(path: str) -> int | None:
    """The ``oom_kill`` count in `path` (``key value`` lines), or None if unreadable."""
    try:
        with open(path, "rb") as file:
            text = file.read().decode("ascii", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def find_counter(pid: int, *, proc: str = "/proc") -> CounterFile | None:
    """The narrowest file counting the OOM kills of process `pid`, or None.

    Its cgroup's (v2 ``memory.events``, else v1 ``memory.oom_control``, found through
    ``<proc>/<pid>/cgroup`` and the cgroup mounts of ``<proc>/self/mounts``), else
    ``<proc>/vmstat`` (the whole machine), if the file has an ``oom_kill`` count.
    """
    try:
        with open(f"{proc}/{pid}/cgroup") as file:
            groups = [line.rstrip("\n").split(":", 2) for line in file]
        with open(f"{proc}/self/mounts") as file:
            mounts = [line.split() for line in file]
    except OSError:
        groups, mounts = [], []
    candidates: list[str] = []
    for fields in groups:
        if len(fields) != 3:
            continue
        _hierarchy, controllers, path = fields
        for mount in mounts:
            if len(mount) < 4:
                continue
            point, kind, options = mount[1], mount[2], mount[3].split(",")
            if kind == "cgroup2" and controllers == "":
                candidates.insert(0, f"{point}{path.rstrip('/')}/memory.events")
            elif kind == "cgroup" and "memory" in controllers.split(",") and "memory" in options:
                candidates.append(f"{point}{path.rstrip('/')}/memory.oom_control")
    for candidate in candidates:
        if read_count(candidate) is not None:
            return CounterFile(candidate, "cgroup")
    if read_count(f"{proc}/vmstat") is not None:
        return CounterFile(f"{proc}/vmstat", "machine")
    return None


class KillCounter:
    """The OOM kills already accounted for, per counter file (shared by all probes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # guarded by _lock: path -> kills accounted for

    def baseline(self, path: str) -> None:
        """Take the count of `path` as accounted for, unless it is watched already."""
        count = read_count(path)
        if count is not None:
            with self._lock:
                self._seen.setdefault(path, count)

    def claim(self, path: str) -> tuple[int, int] | None:
        """Account for one kill of `path`, if its count rose past what is accounted for.

        Returns:
            ``(before, now)``: the count accounted for and the count now (the kill was
            the OOM killer's if ``now > before``); None if the count cannot be read or
            had no baseline.
        """
        now = read_count(path)
        if now is None:
            return None
        with self._lock:
            before = self._seen.get(path)
            if before is None:
                self._seen[path] = now
                return None
            # A count below the baseline: the cgroup was made anew; start again from it.
            self._seen[path] = before + 1 if now > before else now
        return before, now


KILLS = KillCounter()


class MemoryProbe:
    """What the pool knows of one worker process's memory (see the module docstring).

    Args:
        pid: The worker process.
        proc: Where procfs is mounted (a test passes a folder of its own).
        counter: The shared `KillCounter`.
        clock: For the sampling interval.
    """

    __slots__ = ("_clock", "_statm", "counter", "file", "items", "rss", "sampled_at")

    def __init__(
        self,
        pid: int,
        *,
        proc: str = "/proc",
        counter: KillCounter = KILLS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._statm = f"{proc}/{pid}/statm"
        self._clock = clock
        self.counter = counter
        self.file = find_counter(pid, proc=proc)
        if self.file is not None:
            counter.baseline(self.file.path)
        self.rss: int | None = None  # bytes resident at the last sample
        self.items = 0  # items the worker had finished at the last sample
        self.sampled_at = -SAMPLE_EVERY

    def sample(self, items: int, *, every: float = SAMPLE_EVERY) -> None:
        """Read the resident memory, if the last sample is older than `every` seconds
        (0: now; ``max_worker_memory`` looks after each answer, ~10 us a read).

        Args:
            items: How many items the worker has finished (said with the figure).
            every: The sampling interval.
        """
        now = self._clock()
        if every and now - self.sampled_at < every:
            return
        self.sampled_at = now
        rss = resident(self._statm)
        if rss is not None:
            self.rss, self.items = rss, items


def resident(statm: str = "/proc/self/statm") -> int | None:
    """Bytes resident of the process whose procfs ``statm`` this is (None where there is
    no procfs): one small read, ~10 us."""
    try:
        with open(statm, "rb") as file:
            return int(file.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


EARLY = 0.9  # of max_worker_memory: a worker's successor starts; at the line, it stops


def memory_line(rss: int | None, limit: int | None) -> bool | None:
    """What a worker's resident memory `rss` says under ``max_worker_memory=limit``:
    True past the line (it takes no more items: recycle it now), False past EARLY of it
    (start its successor, it goes on until that one is ready), None below both."""
    if rss is None or limit is None or rss <= EARLY * limit:
        return None
    return rss > limit


def size_text(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_NEXT_STEP = (
    "next step: set max_worker_memory (e.g. Pool(..., max_worker_memory='4GiB')) so that "
    "a worker that grows is recycled before it is killed, or run fewer workers, or a "
    "smaller window or batch size, so that the workers together stay within the memory "
    "they may use"
)


def crash_cause(probe: MemoryProbe | None, exitcode: int | None) -> str:
    """The likely cause of a worker's death, for `WorkerCrashed`'s message.

    For a SIGKILL with a probe: whether the OOM killer did it (by the counts, see the
    module docstring), the worker's last measured resident memory and the next step.
    Otherwise `likely_cause`.
    """
    if exitcode != -signal.SIGKILL or probe is None:
        return likely_cause(exitcode)
    memory = (
        f"its resident memory was {size_text(probe.rss)} when last measured "
        f"(after {probe.items} items)"
        if probe.rss is not None
        else "its resident memory was never measured"
    )
    file = probe.file
    counts = None if file is None else probe.counter.claim(file.path)
    if file is None or counts is None:
        return (
            "possibly the kernel's out-of-memory killer (this system offers no count of "
            "its kills to check: no cgroup memory.events or memory.oom_control, no "
            "oom_kill in /proc/vmstat; 'dmesg' shows 'Killed process' if it was), or "
            f"killed from outside (kill -9, a job scheduler); {memory}; if memory is the "
            f"cause, {_NEXT_STEP}"
        )
    before, now = counts
    if now > before:
        where = (
            "of the worker's cgroup"
            if file.scope == "cgroup"
            else "of the whole machine (no cgroup count here: most likely this worker)"
        )
        return (
            f"the kernel's out-of-memory killer (the oom_kill count {where}, {file.path}, "
            f"went from {before} to {now}); {memory}; {_NEXT_STEP}"
        )
    return (
        f"not the kernel's out-of-memory killer (the oom_kill count of "
        f"{'its cgroup' if file.scope == 'cgroup' else 'the machine'}, {file.path}, "
        f"stayed at {now}): killed from outside (kill -9, a job scheduler, a supervisor, "
        f"the task itself); {memory}"
    )
