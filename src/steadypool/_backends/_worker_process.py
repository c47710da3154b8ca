"""One worker process as the pool's side sees it: start it, talk to it, read its slot
and its stack, kill it, close it (process backend; the child's own side is `_child.py`).

The pool's manager thread is the only one to start, receive from and close a
`WorkerProcess`; a stream's thread may send WITHDRAW frames, and the watchdog may read
its slot and ask for its stack.  `send_lock` guards every write to `sock` and its
closing, so whole messages never interleave and nobody writes to a closed (and perhaps
reused) descriptor.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .. import _remote
from .._oom import MemoryProbe
from . import _wire as wire
from ._child import FN_CACHE, Slot, child_main
from ._life import Life

if TYPE_CHECKING:
    from .._worker import Worker
    from ._ledger import Run

__all__ = ["WorkerProcess"]

_STACK_WAIT = 1.0  # seconds to wait for a child's faulthandler dump


class WorkerProcess:
    """One worker process: its life, its socket, its slot and its figures (stats)."""

    __slots__ = (
        "busy",
        "dump_path",
        "failed",
        "fn_ids",
        "given",
        "items",
        "life",
        "lifeline",
        "main_ident",
        "memory",
        "pid",
        "process",
        "recycled",
        "send_lock",
        "slot",
        "sock",
        "waited",
        "worker",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.life = Life()
        self.process: Any = None
        self.sock: socket.socket | None = None
        self.send_lock = threading.Lock()
        self.lifeline: socket.socket | None = None
        self.dump_path = ""
        self.slot: Slot | None = None  # what it runs now (see `_child.Slot`)
        self.fn_ids: OrderedDict[int, None] = OrderedDict()  # what the child has cached
        self.pid = 0
        self.main_ident = 0
        self.items = 0
        self.given = 0  # items sent to it (max_tasks_per_worker counts these)
        self.recycled = False  # recycled: a successor took its index
        self.failed = 0
        self.busy = 0.0
        self.waited = 0.0
        self.memory: MemoryProbe | None = None  # its resident memory, its cgroup's OOM kills

    def start(
        self,
        context: Any,
        *,
        seen: Worker,
        env: dict[str, str],
        setup: bytes | None,
        dump_path: str,
        name: str,
    ) -> None:
        """Start the process (the manager thread only: PR_SET_PDEATHSIG follows the
        thread that forks)."""
        parent_sock, child_sock = socket.socketpair()
        parent_life, child_life = socket.socketpair()
        self.dump_path = dump_path
        open(dump_path, "w").close()
        self.slot = Slot.create(dump_path + ".slot")
        self.process = context.Process(
            target=child_main,
            args=(
                child_sock,
                child_life,
                seen,
                env,
                setup,
                dump_path,
                # Under forkserver our parent is the fork server, not this process.
                os.getpid() if context.get_start_method() == "spawn" else None,
            ),
            name=name,
            daemon=False,  # workers may start processes of their own
        )
        self.process.start()
        child_sock.close()
        child_life.close()
        self.sock, self.lifeline, self.pid = parent_sock, parent_life, self.process.pid
        self.memory = MemoryProbe(self.pid)

    def send(self, frames: list[bytes | memoryview]) -> bool:
        """Send one message; False if the child is gone (its sentinel follows)."""
        with self.send_lock:
            if self.sock is None:
                return False
            try:
                _remote.send_frames(self.sock, frames)
            except OSError:
                return False
        return True

    def send_tasks(self, runs: list[Run]) -> bool:
        """Send `runs` in one TASKS message, each function once while the child keeps it."""
        entries = []
        frames: list[bytes | memoryview] = []
        for run in runs:
            arg_frames, fn_id, fn_bytes = run.wire
            known = fn_id in self.fn_ids
            self.fn_ids[fn_id] = None
            self.fn_ids.move_to_end(fn_id)
            while len(self.fn_ids) > FN_CACHE // 2:
                self.fn_ids.popitem(last=False)
            entries.append((run.task_id, fn_id, None if known else fn_bytes, len(arg_frames)))
            frames += arg_frames
        return self.send([pickle.dumps((wire.TASKS, entries)), *frames])

    def receive(self, timeout: float | None = None) -> list[bytearray] | None:
        """Read one message (waiting at most `timeout` for its rest); None at its end
        (EOF, a broken or timed-out read), when the socket is closed."""
        sock = self.sock
        assert sock is not None
        try:
            if timeout is not None:  # only when it is ending: a syscall per call
                sock.settimeout(timeout)
            return _remote.recv_frames(sock)
        except (EOFError, OSError):
            with self.send_lock:
                sock.close()
                self.sock = None  # it is ending; the sentinel follows
            return None

    def last(self) -> tuple[int, float, bool] | None:
        """(task id, start, running) of the item its slot names, or None."""
        slot = self.slot
        return None if slot is None else slot.read()

    def stack(self) -> str:
        """The child's main thread's Python stack, dumped by faulthandler ("" if gone)."""
        try:
            with open(self.dump_path, "r+") as dump:
                dump.truncate(0)
            os.kill(self.pid, signal.SIGUSR1)
        except OSError:
            return ""
        text, deadline = "", time.monotonic() + _STACK_WAIT
        while time.monotonic() < deadline:
            time.sleep(0.02)
            with open(self.dump_path) as dump:
                now = dump.read()
            if now and now == text:
                break  # stopped growing: the dump is complete
            text = now
        return _remote.main_thread_stack(text, self.main_ident)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close its sockets and slot and remove its files (once it has ended)."""
        with self.send_lock:
            for sock in (self.sock, self.lifeline):
                if sock is not None:
                    sock.close()
            self.sock = self.lifeline = None
        if self.slot is not None:
            self.slot.close()
            self.slot = None
        for path in (self.dump_path, self.dump_path + ".slot"):
            with contextlib.suppress(OSError):
                os.unlink(path)
