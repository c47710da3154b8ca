"""What a worker and its pool say to each other: the message tags, and an item's run
turned into frames that can always travel.

Both the process backend's child (`_child.py`) and the Ray actor (`_actor.py`) run an
item with `call` and send back what it returns: the result pickled, or the exception
pickled, or -- when either cannot be pickled, or pickling raised anything at all,
``SystemExit`` included -- a pickled error that says so.  So an item's outcome always
leaves the worker as bytes, and the transport (a socket, Ray's object store) never
meets an object it cannot carry: a failure to pickle is that item's own outcome.

Messages of the process backend (each one `_remote.send_frames` message, its first
frame a pickled tuple whose first element is the tag):

    parent -> child   (TASKS, [(task id, fn id, fn bytes or None, frame count), ...])
                      (WITHDRAW, [task id, ...])    (STOP,)
    child -> parent   (SETUP, pid, main thread id)  (READY, pid, main thread id)
                      (SETUP_FAILED, -1) + error frames
                      (RESULTS, [(task id, OK | ERR | SKIPPED, frame count, seconds), ...])
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from .. import _remote
from .._exceptions import ArgumentNotRebuilt, ResultNotRebuilt, ResultNotSent

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ERR",
    "OK",
    "READY",
    "RESULTS",
    "SETUP",
    "SETUP_FAILED",
    "SKIPPED",
    "STOP",
    "TASKS",
    "WITHDRAW",
    "call",
    "error_frames",
    "load_outcome",
]

TASKS = "tasks"
WITHDRAW = "withdraw"
STOP = "stop"
SETUP = "setup"
READY = "ready"
SETUP_FAILED = "setup_failed"
RESULTS = "results"

# An item's outcome, as its worker reports it.
OK = "ok"  # frames: the pickled result
ERR = "err"  # frames: the pickled (exception, traceback text)
SKIPPED = "skipped"  # withdrawn before it started: no frames, no outcome

Frames = list[bytes | memoryview]


def call(fn: Callable[..., Any], arg_frames: Any) -> tuple[str, Frames]:
    """Unpickle the arguments, run `fn` and pickle what came of it: (OK, result
    frames) or (ERR, exception frames).  Never raises (but KeyboardInterrupt)."""
    try:
        args, kwargs = _remote.loads(arg_frames)
        del arg_frames
    except KeyboardInterrupt:
        raise
    except BaseException as why:  # SystemExit out of a __setstate__ too (hole 17)
        error = ArgumentNotRebuilt(
            f"the arguments of this task could not be unpickled in the worker: "
            f"{type(why).__name__}: {why}"
        )
        return ERR, error_frames(error)
    try:
        result = fn(*args) if kwargs is None else fn(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return ERR, error_frames(exc)
    try:
        return OK, _remote.dumps(result)
    except KeyboardInterrupt:
        raise
    except BaseException as why:
        unsent = ResultNotSent(
            f"the result of this task, {short_repr(result)}, could not be pickled to "
            f"send it back from the worker: {type(why).__name__}: {why}"
        )
        unsent.__cause__ = why if isinstance(why, Exception) else None
        return ERR, error_frames(unsent)


def error_frames(exc: BaseException) -> Frames:
    """`exc` with its traceback as frames; a substitute that can travel where it cannot."""
    error, text = _remote.exception_payload(exc)
    try:
        return _remote.dumps((error, text))
    except KeyboardInterrupt:
        raise
    except BaseException as why:  # the exception pickled, but its payload still did not
        substitute, text = _remote.exception_payload(
            pickle.PicklingError(f"{type(exc).__name__}: {exc} (could not be sent: {why!r})")
        )
        return _remote.dumps((substitute, text))


def load_outcome(tag: str, frames: Any, where: str) -> tuple[bool, Any]:
    """In the pool: (ok, the result or the exception rebuilt with its remote
    traceback) from what a worker sent; an outcome that cannot be unpickled here
    (whatever it raises, ``SystemExit`` included) is an error of that item."""
    try:
        value = _remote.loads(frames)
    except KeyboardInterrupt:
        raise
    except BaseException as why:
        what = "result" if tag == OK else "exception"
        return False, ResultNotRebuilt(
            f"the {what} sent back by {where} could not be unpickled here: "
            f"{type(why).__name__}: {why}"
        )
    if tag == OK:
        return True, value
    exc, text = value
    return False, _remote.rebuild_exception(exc, text)


def short_repr(obj: object) -> str:
    """A repr of at most 80 characters, with the object's type."""
    return f"{_remote.short_text(obj)} ({type(obj).__module__}.{type(obj).__qualname__})"
