"""The body of a worker process (process backend); runs in the child only.

Data flow, one child::

    parent --task frames--> sock --recv--> main thread: run fn --result frames--> sock
    parent --SIGUSR1--> faulthandler writes every thread's stack into the dump file
    parent dies --> PR_SET_PDEATHSIG kills us (Linux); the lifeline socket reads EOF
                    and a watcher thread exits the process (everywhere)

The main thread is the only reader and writer of `sock`; it runs one task at a time, so
the parent always knows which item a dead child was running.  Before it starts a task
it reads the frames already waiting behind it (no wait): a "withdraw" frame for that
task makes it answer "skipped" instead of running it; tasks found there are kept, in
order, for after it.  SIGINT is ignored: the
parent handles Ctrl-C and stops its children itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import pickle
import select
import signal
import sys
import threading
import types
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .. import _remote
from .._devices import activate
from .._worker import Worker, bind

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

__all__ = ["FN_CACHE", "child_main"]

FN_CACHE = 256  # functions a child keeps; the parent assumes at most half of that
_PR_SET_PDEATHSIG = 1


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
    error, text = _remote.exception_payload(exc)
    try:
        _send(sock, (tag, task_id), (error, text))
    except Exception as why:  # the exception pickled, but its payload still did not
        substitute, text = _remote.exception_payload(
            pickle.PicklingError(f"{type(exc).__name__}: {exc} (could not be sent: {why})")
        )
        _send(sock, (tag, task_id), (substitute, text))


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
        _send_error(sock, "setup_failed", -1, exc)
        return
    if setup is not None:
        # From here SIGUSR1 dumps our stack, so the parent may watch the setup.
        _send(sock, ("setup", os.getpid(), threading.main_thread().ident))
        try:
            worker = worker.with_state(pickle.loads(setup)(worker))
        except BaseException as exc:
            _send_error(sock, "setup_failed", -1, exc)
            return
        bind(worker)
    _send(sock, ("ready", os.getpid(), threading.main_thread().ident))
    fns: OrderedDict[int, Callable[..., Any]] = OrderedDict()
    # Frames read early, behind the current one, with their envelopes, in order.
    ahead: deque[tuple[Any, list[bytearray]]] = deque()
    withdrawn: set[int] = set()  # ids of the current task or of tasks in `ahead`
    while True:
        try:
            if ahead:
                envelope, frames = ahead.popleft()
            else:
                frames = _remote.recv_frames(sock)
                envelope = pickle.loads(frames[0])
            # The tasks a "withdraw" read now may name; one for any other has run already.
            coming = {e[1] for e, _ in ((envelope, frames), *ahead) if e[0] == "task"}
            while select.select([sock], [], [], 0)[0]:  # what waits behind it, no wait
                early = _remote.recv_frames(sock)
                early_envelope = pickle.loads(early[0])
                if early_envelope[0] == "withdraw":
                    if early_envelope[1] in coming:
                        withdrawn.add(early_envelope[1])
                    continue
                ahead.append((early_envelope, early))
                if early_envelope[0] == "task":
                    coming.add(early_envelope[1])
        except (EOFError, OSError):
            return  # the parent closed our socket, or is gone
        if envelope[0] == "stop":
            return
        if envelope[0] == "withdraw":
            continue  # it came after its task had started
        _tag, task_id, fn_id, fn_bytes = envelope
        try:
            if fn_bytes is not None:
                fns[fn_id] = _load_function(fn_bytes)
            fn = fns[fn_id]
            fns.move_to_end(fn_id)
            while len(fns) > FN_CACHE:
                fns.popitem(last=False)
            if task_id in withdrawn:
                withdrawn.discard(task_id)
                _send(sock, ("skipped", task_id))
                continue
            args, kwargs = _remote.loads(frames[1:])
            del frames
            result = fn(*args) if kwargs is None else fn(*args, **kwargs)
        except BaseException as exc:
            _send_error(sock, "err", task_id, exc)
            continue
        try:
            payload = _remote.dumps(result)
        except Exception as why:
            error = pickle.PicklingError(
                f"the result of this task, {_short_repr(result)}, could not be pickled to "
                f"send it back from the worker process: {type(why).__name__}: {why}"
            )
            error.__cause__ = why
            _send_error(sock, "err", task_id, error)
            continue
        del result
        frames_out: list[bytes | memoryview] = [pickle.dumps(("ok", task_id), protocol=5)]
        _remote.send_frames(sock, frames_out + payload)
        del payload


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


def _short_repr(obj: object) -> str:
    text = repr(obj)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} ({type(obj).__module__}.{type(obj).__qualname__})"
