"""The body of a worker process (process backend); runs in the child only.

Data flow, one child::

    parent --"tasks" frames (one or many tasks)--> sock --recv--> main thread: `tasks`
    main thread: run fn --result--> Outbox --"results" frames (one or many)--> sock
    main thread --(task id, start time, running?)--> Slot (shared memory) <-- parent
    parent --SIGUSR1--> faulthandler writes every thread's stack into the dump file
    parent dies --> PR_SET_PDEATHSIG kills us (Linux); the lifeline socket reads EOF
                    and a watcher thread exits the process (everywhere)

The main thread is the only reader of `sock` and runs one task at a time, in the order
sent; before each task it writes the task into the `Slot`, which the parent reads to
know which item runs and since when (timeouts, stall reports, which item a death
names) without a message per item.  Before it starts a task it reads the frames
already waiting (no wait): a "withdraw" frame takes the tasks it names out of
`tasks`, answered "skipped".  SIGINT is ignored: the parent handles Ctrl-C and stops
its children itself.

Results go back in batches (`Outbox`): one message for many tiny tasks.  A result
waits in the outbox at most FLUSH_AFTER (a flusher thread sends it even while the
main thread is inside a long task), and not at all when its task ran that long, when
the outbox is big, or when the child has nothing left to run.  `Outbox._lock` guards
the outbox and every write to `sock` (main thread and flusher).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import mmap
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import types
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .. import _remote
from .._devices import activate
from .._worker import Worker, bind
from . import _wire as wire

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

__all__ = ["FN_CACHE", "Slot", "child_main"]

FN_CACHE = 256  # functions a child keeps; the parent assumes at most half of that
_PR_SET_PDEATHSIG = 1
FLUSH_AFTER = 1e-3  # seconds a finished result may wait in the outbox for company
_FLUSH_COUNT = 256  # results: an outbox this full is sent at once
_FLUSH_BYTES = 1 << 20  # bytes: so is one this big


class Slot:
    """What a worker process runs now, in shared memory the parent reads: written by
    the child's main thread (twice per task), read by the parent's watchdog and manager.

    One record (n, task id, start time, running, n), written front to back in one copy
    (a sequence lock): the reader reads the trailing `n` first, then the fields, then
    the leading `n`, and takes the record only when both are equal; a write that
    overlapped the read changed the leading copy before any field and so cannot pass
    (issue 17, hole 12: reading front to back let a torn pair through).  A record with
    `running` False names the task that ran last: its result may still be on its way
    back.  `time.monotonic` is the system-wide monotonic clock, the same in both
    processes.
    """

    _FORMAT = struct.Struct("<qqdqq")
    _COUNT = struct.Struct("<q")
    _TAIL = _FORMAT.size - _COUNT.size
    SIZE = _FORMAT.size

    def __init__(self, path: str) -> None:
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), self.SIZE)
        self._n = 0

    @classmethod
    def create(cls, path: str) -> Slot:
        with open(path, "wb") as file:
            file.write(bytes(cls.SIZE))
        return cls(path)

    def write(self, task_id: int, started: float, running: bool) -> None:
        self._n += 1
        self._FORMAT.pack_into(self._map, 0, self._n, task_id, started, running, self._n)

    def read(self) -> tuple[int, float, bool] | None:
        """(task id, start time, still running) of the last task begun, or None."""
        for _ in range(1000):
            try:
                (tail,) = self._COUNT.unpack_from(self._map, self._TAIL)
                _, task_id, started, running, _ = self._FORMAT.unpack_from(self._map)
                (head,) = self._COUNT.unpack_from(self._map, 0)
            except ValueError:  # closed
                return None
            if head == tail:
                return (task_id, started, bool(running)) if head else None
        return None

    def close(self) -> None:
        self._map.close()


class Outbox:
    """Finished results waiting to go back in one message (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._entries: list[tuple[int, str, int, float]] = []  # (task, tag, frames, took)
        self._frames: list[bytes | memoryview] = []
        self._bytes = 0
        # Set while results wait: the flusher sends them FLUSH_AFTER later.
        self._waiting = threading.Event()
        threading.Thread(target=self._flusher, name="steadypool-outbox", daemon=True).start()

    def add(self, task_id: int, tag: str, frames: list[bytes | memoryview], took: float) -> None:
        """Queue one task's outcome; sent now if it ran long or the outbox is full."""
        size = sum(len(f) if isinstance(f, bytes) else f.nbytes for f in frames)
        with self._lock:
            self._entries.append((task_id, tag, len(frames), took))
            self._frames += frames
            self._bytes += size
            full = len(self._entries) >= _FLUSH_COUNT or self._bytes >= _FLUSH_BYTES
            if took >= FLUSH_AFTER or full:
                self._send()
                return
        self._waiting.set()

    def flush(self) -> None:
        """Send whatever waits (before the child waits for work, or exits)."""
        with self._lock:
            self._send()

    def _send(self) -> None:
        """Send the waiting results (`_lock` held)."""
        if not self._entries:
            return
        frames = [pickle.dumps((wire.RESULTS, self._entries), protocol=5), *self._frames]
        self._entries, self._frames, self._bytes = [], [], 0
        self._waiting.clear()
        _remote.send_frames(self._sock, frames)

    def _flusher(self) -> None:
        while True:
            # Wake-up path: `add` leaving a result to wait; a daemon thread, it ends
            # with the process.
            self._waiting.wait()
            time.sleep(FLUSH_AFTER)
            with contextlib.suppress(OSError), self._lock:
                self._send()


def _die_with_parent(parent_pid: int | None, lifeline: socket.socket) -> None:
    """Never outlive the pool's process.  `parent_pid` is our parent under spawn (None
    under forkserver, where the parent is the fork server, which exits with the pool's
    process)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect

    def watch() -> None:
        with contextlib.suppress(OSError):
            lifeline.recv(1)  # returns b"" (or fails) only when the parent is gone
        os._exit(1)

    threading.Thread(target=watch, name="steadypool-lifeline", daemon=True).start()


def _send(sock: socket.socket, envelope: tuple[Any, ...], payload: Any = None) -> None:
    frames: list[bytes | memoryview] = [pickle.dumps(envelope, protocol=5)]
    if payload is not None:
        frames += _remote.dumps(payload)
    _remote.send_frames(sock, frames)


def _send_error(sock: socket.socket, tag: str, task_id: int, exc: BaseException) -> None:
    _remote.send_frames(sock, [pickle.dumps((tag, task_id), protocol=5), *wire.error_frames(exc)])


def child_main(
    sock: socket.socket,
    lifeline: socket.socket,
    worker: Worker,
    env: dict[str, str],
    setup: bytes | None,
    dump_path: str,
    parent_pid: int | None,
) -> None:
    """Run one worker: set up, then serve tasks until told to stop or the parent goes."""
    _die_with_parent(parent_pid, lifeline)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES, before any CUDA initialisation
    torch: Any = sys.modules.get("torch")
    if "OMP_NUM_THREADS" in env and torch is not None:
        # Under spawn the parent's main module (and torch with it) may already be loaded
        # here, after which torch ignores the variable: tell it directly.
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    dump = open(dump_path, "w")  # noqa: SIM115 - lives as long as the process
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True, chain=False)
    bind(worker)
    try:
        activate(worker.device)  # "cuda:0": the only device this process can see
    except BaseException as exc:
        _send_error(sock, wire.SETUP_FAILED, -1, exc)
        return
    if setup is not None:
        # From here SIGUSR1 dumps our stack, so the parent may watch the setup.
        _send(sock, (wire.SETUP, os.getpid(), threading.main_thread().ident))
        try:
            worker = worker.with_state(pickle.loads(setup)(worker))
        except BaseException as exc:
            _send_error(sock, wire.SETUP_FAILED, -1, exc)
            return
        bind(worker)
    _send(sock, (wire.READY, os.getpid(), threading.main_thread().ident))
    slot = Slot(dump_path + ".slot")
    outbox = Outbox(sock)
    fns: OrderedDict[int, Callable[..., Any]] = OrderedDict()
    # Tasks received and not started: (task id, function id, pickled function or None,
    # argument frames), in the order sent.
    tasks: deque[tuple[int, int, bytes | None, list[bytearray]]] = deque()

    def read() -> bool:
        """Take in one message; False on "stop"."""
        frames = _remote.recv_frames(sock)
        envelope = pickle.loads(frames[0])
        if envelope[0] == wire.STOP:
            return False
        if envelope[0] == wire.WITHDRAW:
            # Only tasks still to come: one that ran has answered already.
            unwanted = set(envelope[1])
            for task in [t for t in tasks if t[0] in unwanted]:
                tasks.remove(task)
                outbox.add(task[0], wire.SKIPPED, [], 0.0)
            return True
        at = 1
        for task_id, fn_id, fn_bytes, count in envelope[1]:
            tasks.append((task_id, fn_id, fn_bytes, frames[at : at + count]))
            at += count
        return True

    def read_waiting() -> bool:
        """Take in what waits on the socket, without waiting; False on "stop"."""
        while select.select([sock], [], [], 0)[0]:
            if not read():
                return False
        return True

    try:
        while True:
            if not tasks:
                outbox.flush()  # nothing left to run: what is done goes back now
                if not read():
                    break
            # What waits behind it (no wait): more tasks, or a withdraw for some.
            if not read_waiting():
                break
            if not tasks:
                continue  # all withdrawn
            task_id, fn_id, fn_bytes, frames = tasks.popleft()
            started = time.monotonic()
            slot.write(task_id, started, True)
            tag, payload = _run(fns, fn_id, fn_bytes, frames)
            del frames
            slot.write(task_id, started, False)
            outbox.add(task_id, tag, payload, time.monotonic() - started)
            del payload
        outbox.flush()
    except (EOFError, OSError):
        return  # the parent closed our socket, or is gone


def _run(
    fns: OrderedDict[int, Callable[..., Any]],
    fn_id: int,
    fn_bytes: bytes | None,
    frames: list[bytearray],
) -> tuple[str, list[bytes | memoryview]]:
    """Run one task: (OK, its pickled result) or (ERR, its pickled exception)."""
    try:
        if fn_bytes is not None:
            fns[fn_id] = _load_function(fn_bytes)
        fn = fns[fn_id]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return wire.ERR, wire.error_frames(exc)
    fns.move_to_end(fn_id)
    while len(fns) > FN_CACHE:
        fns.popitem(last=False)
    return wire.call(fn, frames)


def _load_function(data: bytes) -> Callable[..., Any]:
    """Unpickle a function sent by the parent, with its source file's name restored."""
    payload, filename = pickle.loads(data)
    fn: Callable[..., Any] = pickle.loads(payload)
    code = getattr(fn, "__code__", None)
    if filename and isinstance(code, types.CodeType) and code.co_filename.startswith("<"):
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            fn.__code__ = _refile(code, filename)
    return fn


def _refile(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _refile(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)
