"""What crosses a process boundary: framing, pickling, remote exceptions, exit codes.

Messages travel over a stream socket as *frames*: a count, the sizes, then the bytes of
each frame.  `dumps` pickles with protocol 5 and hands large buffers (numpy arrays)
out of band, so they are written straight from the array's memory and read straight
into a fresh, writable `bytearray`: one copy through the kernel, none in Python.
Functions and closures are pickled with cloudpickle.
"""

from __future__ import annotations

import pickle
import signal
import struct
import traceback
from typing import TYPE_CHECKING, Any

import cloudpickle

from ._exceptions import RemoteError, UnpicklableArgument

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

__all__ = [
    "RemoteTraceback",
    "argument_error",
    "describe_exit",
    "dumps",
    "exception_payload",
    "loads",
    "main_thread_stack",
    "rebuild_exception",
    "recv_frames",
    "send_frames",
    "set_cause",
    "short_text",
]

_COUNT = struct.Struct("<I")
_OOB_MIN = 64 * 1024  # buffers smaller than this travel in-band: a frame costs a syscall


def dumps(obj: Any) -> list[bytes | memoryview]:
    """Pickle `obj` (protocol 5) into frames: the pickle, then its big buffers.

    Plain pickle first (4-7x faster than cloudpickle on data); cloudpickle when that
    fails (lambdas, closures) or refers to ``__main__``, which a spawned worker may not
    be able to import (``python -c``, notebooks): cloudpickle sends those by value.
    """
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        # Returning True keeps a buffer in-band; False sends it as a frame of its own.
        try:
            size = buffer.raw().nbytes
        except BufferError:  # not contiguous
            return True
        if size < _OOB_MIN:
            return True
        buffers.append(buffer)
        return False

    try:
        header = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        if b"__main__" not in header:
            return [header, *(b.raw() for b in buffers)]
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit from a __reduce__ too: cloudpickle says it again
        pass
    buffers.clear()
    header = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    return [header, *(b.raw() for b in buffers)]


def loads(frames: Sequence[bytes | bytearray | memoryview]) -> Any:
    """Unpickle what `dumps` produced."""
    return pickle.loads(frames[0], buffers=frames[1:])


def send_frames(sock: socket.socket, frames: Sequence[bytes | memoryview]) -> None:
    """Write one message of frames; large frames are sent from their own memory."""
    sizes = [len(f) if isinstance(f, bytes) else f.nbytes for f in frames]
    head = _COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *sizes)
    # Small frames are joined into one write with what precedes them (a batch of tasks
    # or results is one syscall); a big one is written from its own memory.
    pending: list[bytes | memoryview] = [head]
    for frame, size in zip(frames, sizes, strict=True):
        if size < _OOB_MIN:
            pending.append(frame)
            continue
        sock.sendall(b"".join(pending))
        pending = []
        sock.sendall(frame)
    if pending:
        sock.sendall(b"".join(pending))


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("the other end closed the connection")
        got += n
    return buf


def recv_frames(sock: socket.socket) -> list[bytearray]:
    """Read one message written by `send_frames` (EOFError when the peer is gone)."""
    (count,) = _COUNT.unpack(_recv_exact(sock, _COUNT.size))
    sizes = struct.unpack(f"<{count}Q", _recv_exact(sock, 8 * count))
    frames: list[bytearray] = []
    i = 0
    while i < count:
        if sizes[i] >= _OOB_MIN:  # a big buffer: its own memory, as it was sent
            frames.append(_recv_exact(sock, sizes[i]))
            i += 1
            continue
        # A run of small frames (a batch of tasks or results): one read, then split.
        end = i
        while end < count and sizes[end] < _OOB_MIN:
            end += 1
        run = _recv_exact(sock, sum(sizes[i:end]))
        at = 0
        for size in sizes[i:end]:
            frames.append(run[at : at + size])
            at += size
        i = end
    return frames


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (set as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def exception_payload(exc: BaseException) -> tuple[Any, str]:
    """In the child: (the exception if it survives a pickle round trip, else a
    `RemoteError`, its traceback).

    A round trip, not just a pickle: an exception whose ``__init__`` needs more than its
    ``args`` pickles fine and fails only when the parent rebuilds it.
    """
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception as why:
        text = f"(no traceback: formatting it raised {type(why).__name__})"
    try:
        pickle.loads(cloudpickle.dumps(exc, protocol=5))
    except KeyboardInterrupt:
        raise
    except BaseException as why:  # SystemExit from pickling machinery too (loky's cases)
        frozen = _Frozen(exc)
        if frozen.travels():
            return frozen, text
        substitute = RemoteError(
            type_name=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc),
            traceback_text=text,
            reason=f"{type(why).__name__}: {why}",
        )
        return substitute, text
    return exc, text


class _Frozen:
    """Carries an exception whose attributes cannot be set the usual way (a frozen
    dataclass: pickle's ``__setstate__`` assigns them and is refused); unpickles as the
    exception itself, its attributes set past its ``__setattr__``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def travels(self) -> bool:
        """Whether it survives a round trip; only for exceptions that refuse attribute
        assignment and pickle the default way (a class with its own reducer said how
        it travels, or that it cannot; one whose ``__init__`` cannot be called again
        comes back as `RemoteError`, as documented)."""
        kind = type(self.exc)
        if kind.__setattr__ is BaseException.__setattr__:
            return False  # not a refusing __setattr__: what failed is something else
        if kind.__reduce__ is not BaseException.__reduce__ or (
            kind.__reduce_ex__ is not BaseException.__reduce_ex__
        ):
            return False
        try:
            return type(pickle.loads(cloudpickle.dumps(self, protocol=5))) is type(self.exc)
        except KeyboardInterrupt:
            raise
        except BaseException:
            return False

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_thaw, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def _thaw(kind: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = kind.__new__(kind, *args)
    BaseException.__init__(exc, *args)
    for name, value in state.items():
        object.__setattr__(exc, name, value)
    return exc


def rebuild_exception(exc: BaseException, text: str) -> BaseException:
    """In the parent: attach the remote traceback as ``__cause__`` (also to an exception
    that refuses attributes, such as a frozen dataclass)."""
    set_cause(exc, RemoteTraceback(text))
    return exc


def set_cause(exc: BaseException, cause: BaseException | None) -> None:
    """``exc.__cause__ = cause``, past a ``__setattr__`` that refuses it (a frozen
    dataclass raises FrozenInstanceError): the slot is BaseException's own."""
    try:
        exc.__cause__ = cause
    except Exception:
        object.__setattr__(exc, "__cause__", cause)


def describe_exit(exitcode: int | None) -> str:
    """``SIGKILL (-9)``, ``exit code 3``: how a process ended."""
    if exitcode is None:
        return "an unknown exit"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name} ({exitcode})"
        except ValueError:
            return f"signal {-exitcode} ({exitcode})"
    return f"exit code {exitcode}"


LIKELY_CAUSES = {
    -signal.SIGKILL: (
        "killed from outside, or by the kernel's out-of-memory killer ('dmesg' shows "
        "'Killed process' then); lower the window or batch size if memory is the cause"
    ),
    -signal.SIGSEGV: (
        "a segmentation fault in native code (a C extension, a CUDA driver or kernel, "
        "ctypes); run the item alone with faulthandler enabled to see where"
    ),
    -signal.SIGABRT: "an abort in native code (a failed assertion, a CUDA error)",
    -signal.SIGTERM: "terminated from outside (a scheduler, a time limit)",
    -signal.SIGBUS: "a bus error (a truncated memory-mapped file, exhausted /dev/shm)",
}


def likely_cause(exitcode: int | None) -> str:
    """A sentence on what usually makes a process end like that."""
    if exitcode is not None and exitcode in LIKELY_CAUSES:
        return LIKELY_CAUSES[exitcode]
    return "the task (or a library it called) ended the process, e.g. with os._exit()"


def main_thread_stack(dump: str, ident: int) -> str:
    """The block of a faulthandler dump that belongs to the child's main thread."""
    blocks = [b for b in dump.split("\n\n") if b.strip()]
    marker = f"0x{ident:016x}"
    for block in blocks:
        if marker in block.splitlines()[0]:
            return "(worker process stack, most recent call first)\n" + block.split("\n", 1)[-1]
    return dump


def short_text(obj: object) -> str:
    """``repr(obj)`` cut to 80 characters (never raises)."""
    try:
        text = repr(obj)
    except Exception as why:
        text = f"<repr failed: {type(why).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def argument_error(
    args: tuple[Any, ...], kwargs: dict[str, Any] | None, why: BaseException, where: str
) -> UnpicklableArgument:
    """Name the argument that cannot be pickled to go to `where` ("a worker process",
    "a Ray actor"); only called on the error path."""
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in (kwargs or {}).items()]
    for label, value in named:
        try:
            cloudpickle.dumps(value, protocol=5)
        except KeyboardInterrupt:
            raise
        except BaseException as inner:
            text = short_text(value)
            error = UnpicklableArgument(
                f"{label}, {text} ({type(value).__qualname__}), cannot be sent to {where}: "
                f"{type(inner).__name__}: {inner}"
            )
            error.__cause__ = inner if isinstance(inner, Exception) else None
            return error
    error = UnpicklableArgument(f"the arguments cannot be sent to {where}: {why!r}")
    error.__cause__ = why if isinstance(why, Exception) else None
    return error
