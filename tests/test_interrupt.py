"""Ctrl-C in a consumer blocked in imap stops everything promptly, leaving no worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import steadypool as sp

WAIT = 10.0

# A program whose tasks block forever (as a wedged CUDA call would) or sleep.
PROGRAM = textwrap.dedent(
    """
    import sys, threading, time
    import steadypool as sp

    mode = sys.argv[1]
    never = threading.Event()

    def task(x):
        if mode == "stuck":
            never.wait()
        time.sleep(0.05)
        return x

    with sp.Pool(2) as pool:
        print("ready", flush=True)
        for _ in pool.imap(task, range(10**6)):
            pass
    """
)


@pytest.mark.parametrize("mode", ["stuck", "busy"])
def test_sigint_stops_a_real_process_within_seconds(mode: str) -> None:
    """SIGINT to a process iterating imap: KeyboardInterrupt, exit in seconds, no hang,
    even when every worker is stuck in a task that never returns."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let it get busy; the assertion below does not depend on this
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait(WAIT)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert took < WAIT


def test_sigint_in_this_process_raises_keyboard_interrupt_from_imap() -> None:
    """In-process: the consumer's wait is interruptible, and the pool cancels its queue."""
    running = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def task(x: int) -> int:
        ran.append(x)
        running.set()
        release.wait(WAIT)
        return x

    def interrupt() -> None:
        running.wait(WAIT)
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt)
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt), sp.Pool(2) as pool:
            list(pool.imap(task, range(1000), window=8))
    finally:
        release.set()
        killer.join(WAIT)
    assert len(ran) <= 2  # only what was running when Ctrl-C came; the queue was cancelled
