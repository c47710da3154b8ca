"""Interpreter exit: submitted work completes, watched; never an abort; Ctrl-C stops the
wait.  Each test runs a real program in a subprocess and reads its exit code."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

WAIT = 60.0  # seconds a whole program may take before the test fails

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs torch (the cam extra)"
)


def run(program: str, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


SUBMIT_AND_END = """
    import sys, time
    import steadypool as sp

    def write(path):
        time.sleep(0.5)
        with open(path, "w") as f:
            f.write("written")
        print("apple")

    if __name__ == "__main__":
        pool = sp.Pool(3, backend=sys.argv[2])
        pool.submit(write, sys.argv[1])
        if sys.argv[3] == "shutdown-nowait":
            pool.shutdown(wait=False)
"""


@pytest.mark.parametrize("ending", ["open", "shutdown-nowait"])
def test_submitted_work_completes_at_exit(backend: str, ending: str, tmp_path: Path) -> None:
    """A program that submits a write and ends (pool open, or shut down without waiting)
    gets its write, prints nothing else and exits 0, as with ThreadPoolExecutor
    (CPython's test_interpreter_shutdown and test_hang_gh83386)."""
    out = tmp_path / "out"
    done = run(SUBMIT_AND_END, str(out), backend, ending)
    assert done.returncode == 0, done.stderr
    if backend != "ray":  # a Ray actor's output goes to Ray's logs
        assert done.stdout.strip() == "apple"
        assert done.stderr == ""
    assert out.read_text() == "written"


ABANDONED_STREAM = """
    import sys, time
    import steadypool as sp

    def record(x):
        with open(sys.argv[1], "a") as f:
            f.write(f"{x}\\n")
        time.sleep(0.05)
        return x

    pool = sp.Pool(1)
    results = pool.imap(record, range(1000), window=50)  # still referenced at exit
    assert next(results) == 0
"""


def test_a_stream_still_open_at_exit_is_cancelled(tmp_path: Path) -> None:
    """Items queued by a stream nobody reads any more do not run at exit."""
    journal = tmp_path / "ran"
    done = run(ABANDONED_STREAM, str(journal))
    assert done.returncode == 0, done.stderr
    assert len(journal.read_text().split()) <= 3  # the first, and what was running


HANG_AT_EXIT = """
    import threading
    import steadypool as sp

    never = threading.Event()
    pool = sp.Pool(2, stall_timeout=0.5)

    def wedged():
        never.wait()

    pool.submit(wedged)
    print("ending")
"""


def test_a_hang_at_exit_is_reported_and_does_not_keep_the_process(tmp_path: Path) -> None:
    """Submitted work that never finishes: the stall report names it while the exit
    waits, then the wait gives up with an ERROR, and the program ends with its own 0."""
    done = run(HANG_AT_EXIT)
    assert done.returncode == 0, done.stderr
    assert "has made no progress" in done.stderr
    assert "in wedged" in done.stderr
    assert "giving up on it so that the program can end" in done.stderr


def test_ctrl_c_during_the_wait_at_exit_stops_it_at_once() -> None:
    """SIGINT while the exit waits on a wedged task ends the process within seconds, as
    an uncaught Ctrl-C does (by SIGINT)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HANG_AT_EXIT.replace("stall_timeout=0.5", ""))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ending"
        time.sleep(0.3)  # into the exit wait; the outcome does not depend on this
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=WAIT)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait(WAIT)
    assert proc.returncode == -signal.SIGINT
    assert took < 10.0


TORCH_TIMEOUT = """
    import sys, time, torch
    import steadypool as sp

    torch.set_num_threads(1)
    a = torch.randn(1500, 1500)

    def op(_):  # one long native (C++) call: about 0.6s on one core
        return torch.linalg.matrix_power(a, 40).sum().item()

    pool = sp.Pool(1, task_timeout=0.1)
    try:
        pool.submit(op, 0).result(30)
    except sp.TaskTimeout:
        print("timed out")
"""

TORCH_CTRL_C = """
    import os, signal, sys, torch
    import steadypool as sp

    torch.set_num_threads(1)
    a = torch.randn(1500, 1500)

    def op(_):
        return torch.linalg.matrix_power(a, 40).sum().item()

    try:
        with sp.Pool(2) as pool:
            for i, _ in enumerate(pool.imap(op, range(100))):
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while both workers run ops
    except KeyboardInterrupt:
        print("caught")
"""


@needs_torch
@pytest.mark.parametrize(
    ("program", "printed"), [(TORCH_TIMEOUT, "timed out"), (TORCH_CTRL_C, "caught")]
)
def test_no_abort_at_exit_while_a_worker_thread_is_inside_torch(program: str, printed: str) -> None:
    """A thread still inside a torch op when the program ends (abandoned by task_timeout,
    or running when a caught Ctrl-C cancelled the stream) does not abort the process
    (SIGABRT, "terminate called without an active exception"): exit code 0."""
    done = run(program)
    assert "terminate called" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed


LEFT_OPEN = """
    import sys, threading, time
    import steadypool as sp

    def wedged():
        threading.Event().wait()

    if __name__ == "__main__":
        pool = sp.Pool(2, backend="processes", stall_timeout=0.3)
        assert pool.submit(abs, -1).result() == 1
        if sys.argv[1] == "wedged":
            pool.submit(wedged)  # the exit wait gives up on it and kills the worker
"""


@pytest.mark.parametrize("ending", ["idle", "wedged"])
def test_a_process_pool_open_at_exit_leaves_no_files(ending: str, tmp_path: Path) -> None:
    """A process pool still open at exit (idle, or with a worker the exit wait gave up
    on) leaves nothing in $TMPDIR (its workers' stack-dump files used to stay)."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LEFT_OPEN), ending],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("steadypool-")] == []


def test_the_exit_registry_does_not_keep_pools_alive() -> None:
    """Pools that were shut down and dropped leave the exit registry (a program making a
    pool per image must not keep every one of them)."""
    import gc

    import steadypool as sp
    from steadypool import _exit

    def make_and_drop() -> None:
        for _ in range(20):
            with sp.Pool(2) as pool:
                assert pool.submit(abs, -1).result(WAIT) == 1

    gc.collect()
    before = len(_exit._pools)
    make_and_drop()
    gc.collect()
    assert len(_exit._pools) <= before
