"""What pools do at interpreter exit: finish submitted work, watched, and never abort.

Data flow::

    Pool.__init__ --register(backend, monitor, name, stall_timeout)--> _pools (weak)
    interpreter exit --threading's exit hooks (before daemon threads are frozen and
        before atexit handlers)--> finish_at_exit(), in the main thread:
        1. every open stream is cancelled: nobody will read it any more;
        2. every pool is shut down without cancelling: work already submitted
           (`submit`, `map`) completes, as with the concurrent.futures executors;
        3. wait until every backend has stopped, watched (see below).

Why wait even for work nobody wants: a worker thread still inside native code (a torch
op) when the interpreter finalizes is ended by CPython (< 3.14) with pthread_exit, which
unwinds through C++ frames and aborts the process ("terminate called without an active
exception", SIGABRT).  So tasks still running get `_EXIT_GRACE` seconds to return even
when their results are unwanted (a cancelled stream, a thread abandoned by task_timeout);
then each backend is halted (`Backend.halt`: threads get an exception raised in them at
the next line of Python they run, which ends a loop of short native calls) and they get
another `_EXIT_GRACE`.  A task that is truly wedged in one native call never returns
and never aborts, and the exit goes on.

Watched: submitted work is waited for while it makes progress (not that of a pool left
by Ctrl-C: the user asked to stop, so its running tasks only get the grace).  The pool's
monitor, if it has one, logs its stall reports meanwhile; after ``2 x stall_timeout``
(or the default) without progress the wait gives up with an ERROR report naming each
stuck item and its stack, so a hang at exit is never silent and never endless.
Ctrl-C during the wait stops it at once; if threads of ours are still inside tasks
then, the process ends the way an uncaught Ctrl-C ends it (by SIGINT) rather than risk
the abort above.

Who owns what: `_lock` guards `_pools`, `_streams` and `_interrupted`; `exiting` is written once, by
the hook, and only read elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._watchdog import build_report

if TYPE_CHECKING:
    from ._backends._base import Backend
    from ._watchdog import Monitor

__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "exiting",
    "finish_at_exit",
    "interrupted",
    "register",
    "track_stream",
]

logger = logging.getLogger("steadypool")

# The default `stall_timeout`: see the README ("Hang protection") for why 300 s.
DEFAULT_STALL_TIMEOUT = 300.0
_EXIT_GRACE = 3.0  # seconds tasks nobody waits for get to return before the exit goes on
_TELL_AFTER = 1.0  # seconds of waiting after which the wait is logged (INFO)
_SLICE = 0.05  # seconds between looks; Ctrl-C lands between them

exiting = False  # set by finish_at_exit(); new work is refused from then on


@dataclass(frozen=True)
class _Entry:
    # Weak: the monitor refers to its backend, and a strong reference here would keep
    # every backend (the WeakKeyDictionary's key) alive for ever.
    monitor: weakref.ref[Monitor] | None
    name: str
    stall_timeout: float | None


class Cancellable(Protocol):
    """An open stream's owner, as exit sees it: setting `cancelled` ends the stream."""

    cancelled: bool


_lock = threading.Lock()
_pools: weakref.WeakKeyDictionary[Backend, _Entry] = weakref.WeakKeyDictionary()
_streams: weakref.WeakSet[Cancellable] = weakref.WeakSet()
_interrupted: weakref.WeakSet[Backend] = weakref.WeakSet()  # left by Ctrl-C or exit


def register(
    backend: Backend, monitor: Monitor | None, name: str, stall_timeout: float | None
) -> None:
    """Have `backend` finished (and `monitor` stopped) at interpreter exit."""
    ref = None if monitor is None else weakref.ref(monitor)
    with _lock:
        _pools[backend] = _Entry(ref, name, stall_timeout)


def interrupted(backend: Backend) -> None:
    """Mark `backend` as left by Ctrl-C (or SystemExit): nobody waits for its running
    tasks any more, so at exit they only get the grace, not the watched wait."""
    with _lock:
        _interrupted.add(backend)


def track_stream(owner: Cancellable) -> None:
    """Have the stream of `owner` cancelled at interpreter exit if it is still open."""
    with _lock:
        _streams.add(owner)


def finish_at_exit() -> None:
    """Cancel open streams, let submitted work complete, watched (see module docstring)."""
    global exiting
    exiting = True
    with _lock:
        streams = list(_streams)
        entries = list(_pools.items())
    for owner in streams:
        owner.cancelled = True
    try:
        for backend, _entry in entries:
            backend.shutdown(wait=False, cancel=False)
        _wait(entries)
    except KeyboardInterrupt:
        for backend, _entry in entries:
            with contextlib.suppress(Exception):
                backend.shutdown(wait=False, cancel=True)
        if any(not b.can_kill and not b.stopped for b, _e in entries):
            _die_by_sigint()
    finally:
        for _backend, entry in entries:
            monitor = None if entry.monitor is None else entry.monitor()
            if monitor is not None:
                monitor.stop(wait=False)


def _wait(entries: list[tuple[Backend, _Entry]]) -> None:
    start = last_progress = time.monotonic()
    last_state: tuple[int, int] | None = None
    told = halted = False
    while True:
        live = [(b, e) for b, e in entries if not b.stopped]
        if not live:
            return
        now = time.monotonic()
        with _lock:
            wanting = [(b, e) for b, e in live if b not in _interrupted]
        waited_for = [(b, e, [x for x in b.busy() if x.owner.wanted(x.key)]) for b, e in wanting]
        counts = [b.counts() for b, _e in wanting]
        wanted = sum(q for _d, q in counts) + sum(len(w) for _b, _e, w in waited_for)
        state = (sum(d for d, _q in counts), wanted)
        if state != last_state:
            last_state, last_progress = state, now
        if not wanted:
            if now - start >= _EXIT_GRACE and not halted:
                # Stop what nobody waits for at the next line of Python it runs: a
                # thread that keeps calling short native ops would otherwise re-enter
                # the interpreter during finalization and abort it (issue 17, hole 4).
                halted = True
                for backend, _entry in live:
                    with contextlib.suppress(Exception):
                        backend.halt()
            elif now - start >= 2 * _EXIT_GRACE:
                logger.warning(
                    "steadypool: exiting while tasks nobody waits for still run in %s "
                    "(a cancelled stream's, or a thread abandoned after task_timeout); "
                    "they are left behind",
                    ", ".join(repr(e.name) for _b, e in live),
                )
                return
        else:
            limit = 2 * min(e.stall_timeout or DEFAULT_STALL_TIMEOUT for _b, e in live)
            if now - last_progress >= limit:
                for backend, entry, busy in waited_for:
                    report = build_report(
                        backend, entry.name, busy, since_progress=now - last_progress, now=now
                    )
                    logger.error(
                        "%s\n(at interpreter exit: submitted work made no progress for %.0fs; "
                        "giving up on it so that the program can end)",
                        report,
                        now - last_progress,
                    )
                return
            if not told and now - start >= _TELL_AFTER:
                told = True
                logger.info(
                    "steadypool: waiting at exit for %d submitted items (as "
                    "concurrent.futures does); Ctrl-C stops the wait",
                    wanted,
                )
        time.sleep(_SLICE)


def _die_by_sigint() -> None:
    """End the process as an uncaught Ctrl-C does (killed by SIGINT), skipping the
    interpreter's finalization, which would abort while our threads run native code."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(130)  # not reached where SIGINT's default action ends the process


# Runs before threading joins non-daemon threads, before atexit handlers (which shut
# down Ray and multiprocessing), and before the interpreter freezes daemon threads; the
# concurrent.futures executors use the same hook.
with contextlib.suppress(RuntimeError):  # imported in a thread after shutdown began
    threading._register_atexit(finish_at_exit)  # type: ignore[attr-defined]
