"""Naming the OOM killer (`_oom`): counter files injected through a fake procfs, and a
real SIGKILL of a worker process end to end."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import pytest

import steadypool as sp
from steadypool._oom import (
    SAMPLE_EVERY,
    CounterFile,
    KillCounter,
    MemoryProbe,
    crash_cause,
    find_counter,
)

from ._faults import Gate, Journal, hang

if TYPE_CHECKING:
    from pathlib import Path

WAIT = 10.0
PID = 4242


def fake_proc(tmp_path: Path, cgroup: str, mounts: str, vmstat: str | None = None) -> str:
    """A procfs with what `find_counter` and `MemoryProbe` read for process PID."""
    proc = tmp_path / "proc"
    (proc / str(PID)).mkdir(parents=True)
    (proc / "self").mkdir()
    (proc / str(PID) / "cgroup").write_text(cgroup)
    (proc / str(PID) / "statm").write_text("5000 1000 300 1 0 800 0\n")
    (proc / "self" / "mounts").write_text(mounts)
    if vmstat is not None:
        (proc / "vmstat").write_text(vmstat)
    return str(proc)


def v2_proc(tmp_path: Path, kills: int) -> tuple[str, Path]:
    """A cgroup v2 system whose worker cgroup /job has counted `kills` OOM kills."""
    events = tmp_path / "cg" / "job" / "memory.events"
    events.parent.mkdir(parents=True)
    events.write_text(f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\n")
    mounts = f"cgroup2 {tmp_path / 'cg'} cgroup2 rw,nosuid 0 0\n"
    return fake_proc(tmp_path, "0::/job\n", mounts, vmstat="oom_kill 9\n"), events


def test_the_counter_file_is_the_workers_cgroup_v2_then_v1_then_the_machine(
    tmp_path: Path,
) -> None:
    """cgroup v2 memory.events first; v1 memory.oom_control (hybrid systems); then
    /proc/vmstat for the whole machine; None when nothing counts."""
    proc, events = v2_proc(tmp_path / "v2", 0)
    assert find_counter(PID, proc=proc) == CounterFile(str(events), "cgroup")
    control = tmp_path / "v1" / "memory" / "a" / "memory.oom_control"
    control.parent.mkdir(parents=True)
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    proc = fake_proc(
        tmp_path / "v1",
        "4:memory:/a\n0::/\n",
        f"cgroup {tmp_path / 'v1' / 'memory'} cgroup rw,memory 0 0\n"
        f"cgroup2 {tmp_path / 'v1' / 'unified'} cgroup2 rw 0 0\n",
        vmstat="oom_kill 0\n",
    )
    assert find_counter(PID, proc=proc) == CounterFile(str(control), "cgroup")
    proc = fake_proc(tmp_path / "vm", "0::/\n", "", vmstat="pgfault 1\noom_kill 4\n")
    assert find_counter(PID, proc=proc) == CounterFile(f"{proc}/vmstat", "machine")
    assert find_counter(PID, proc=fake_proc(tmp_path / "none", "", "")) is None


def test_a_rise_of_the_count_names_the_oom_killer_with_memory_and_next_step(
    tmp_path: Path,
) -> None:
    """The worker's cgroup counted a kill after the probe's baseline: the cause is the
    OOM killer, with the counts, the last resident memory and the next step."""
    proc, events = v2_proc(tmp_path, 2)
    probe = MemoryProbe(PID, proc=proc, counter=KillCounter())
    probe.sample(items=41)
    events.write_text("oom 2\noom_kill 3\n")
    cause = crash_cause(probe, -signal.SIGKILL)
    assert cause.startswith("the kernel's out-of-memory killer")
    assert "went from 2 to 3" in cause
    assert f"was {1000 * os.sysconf('SC_PAGE_SIZE') / 2**20:.1f} MiB" in cause
    assert "after 41 items" in cause
    assert "fewer workers" in cause
    assert "max_worker_memory" in cause


def test_an_unchanged_count_says_not_the_oom_killer(tmp_path: Path) -> None:
    """SIGKILL with the count unchanged: killed from outside, not the OOM killer."""
    proc, _events = v2_proc(tmp_path, 2)
    probe = MemoryProbe(PID, proc=proc, counter=KillCounter())
    cause = crash_cause(probe, -signal.SIGKILL)
    assert cause.startswith("not the kernel's out-of-memory killer")
    assert "stayed at 2" in cause
    assert "never measured" in cause


def test_each_kill_is_claimed_once(tmp_path: Path) -> None:
    """Two workers killed by one OOM event (+2) are both named; a third SIGKILL after
    that is not taken for the OOM killer's."""
    proc, events = v2_proc(tmp_path, 0)
    counter = KillCounter()
    probes = [MemoryProbe(PID, proc=proc, counter=counter) for _ in range(3)]
    events.write_text("oom_kill 2\n")
    causes = [crash_cause(probe, -signal.SIGKILL) for probe in probes]
    assert [c.startswith("the kernel's") for c in causes] == [True, True, False]


def test_without_any_count_it_says_possibly(tmp_path: Path) -> None:
    """Nothing counts OOM kills (no cgroup file, no vmstat count): 'possibly'."""
    probe = MemoryProbe(PID, proc=fake_proc(tmp_path, "", ""), counter=KillCounter())
    assert crash_cause(probe, -signal.SIGKILL).startswith("possibly the kernel's")


def test_other_deaths_keep_their_likely_cause(tmp_path: Path) -> None:
    """Only a SIGKILL asks the counts; a segfault keeps its own sentence."""
    proc, _events = v2_proc(tmp_path, 0)
    probe = MemoryProbe(PID, proc=proc, counter=KillCounter())
    assert "segmentation fault" in crash_cause(probe, -signal.SIGSEGV)


def test_memory_is_sampled_at_most_every_interval(tmp_path: Path) -> None:
    """sample() reads statm once per SAMPLE_EVERY (by the injected clock)."""
    now = [100.0]
    proc, _events = v2_proc(tmp_path, 0)
    probe = MemoryProbe(PID, proc=proc, counter=KillCounter(), clock=lambda: now[0])
    probe.sample(items=1)
    assert (probe.rss, probe.items) == (1000 * os.sysconf("SC_PAGE_SIZE"), 1)
    (tmp_path / "proc" / str(PID) / "statm").write_text("1 2 0 0 0 0 0\n")
    probe.sample(items=2)
    assert probe.items == 1  # too soon
    now[0] += 2 * SAMPLE_EVERY
    probe.sample(items=3)
    assert (probe.rss, probe.items) == (2 * os.sysconf("SC_PAGE_SIZE"), 3)


def hang_at(x: int, at: int, pids: Journal, gate: Gate) -> int:
    if x == at:
        pids.record(os.getpid())
        hang(gate)
    return x


def test_a_real_sigkill_is_named_by_what_this_machine_can_tell(tmp_path: Path) -> None:
    """End to end: a worker process that finished items is killed with SIGKILL while it
    runs one; WorkerCrashed names the item, says whether the OOM killer did it (not it,
    where this machine counts OOM kills; 'possibly' where it does not) and gives the
    worker's last measured resident memory."""
    pids, gate = Journal(tmp_path / "pids"), Gate(tmp_path / "gate")
    can_tell = find_counter(os.getpid()) is not None
    try:
        with sp.Pool(1, backend="processes") as pool:
            stream = pool.imap(
                lambda x: hang_at(x, 5, pids, gate), range(8), window=1, on_error="return"
            )
            assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
            (pid,) = pids.wait_for(1)
            os.kill(pid, signal.SIGKILL)
            crash = next(stream)
            stream.close()
    finally:
        gate.set()
    assert isinstance(crash, sp.WorkerCrashed)
    message = str(crash)
    assert "SIGKILL (-9) while running item 5" in message
    if can_tell:
        assert "not the kernel's out-of-memory killer" in message
    else:
        assert "possibly the kernel's out-of-memory killer" in message
    assert "its resident memory was " in message
    assert "never measured" not in message
    print(message)  # noqa: T201 - shown with -s: what a user reads


@pytest.mark.parametrize("exitcode", [None, 3, -signal.SIGSEGV])
def test_crash_cause_without_a_probe_is_the_old_sentence(exitcode: int | None) -> None:
    """No probe (a process that never started): the generic sentence."""
    from steadypool._remote import likely_cause

    assert crash_cause(None, exitcode) == likely_cause(exitcode)
