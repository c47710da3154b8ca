"""Process backend: one worker process per worker, driven by one manager thread.

Data flow::

    submit() --pickle now (errors surface at once)--> _pending --wake pipe--> manager
    manager --task frames--> child socket ... child --result frames--> manager
    manager --owner.put(outcome)--> the task's owner
    watchdog --busy()/stack()/fail()--> child slots, child.sent (fail() kills the child)

Who owns what:

* The manager thread owns the children: it spawns them, talks on their sockets, reaps
  and replaces them.  Spawning from the manager matters: Linux's PR_SET_PDEATHSIG
  follows the thread that forked, and the manager is the last of ours to end.
* `_lock` guards `_pending`, `_closed`, `_broken`, `_woken` and every `child.sent`.
  Whoever takes a run out of a `child.sent` owns that run's outcome: the manager when
  its result or the child's death arrives, `fail()` when the watchdog claims it.  So
  every item gets exactly one outcome.
* Each child runs its tasks one at a time, in the order sent (`child.sent`).  While
  tasks are long it holds one; while they are short, as many as take AHEAD_TIME to
  run (at most AHEAD_MAX), sent and answered in batches: one message for many tiny
  tasks, so neither side wakes per item.  The child writes the task it starts into its
  `Slot` (shared memory): the watchdog reads there which item runs and since when, and
  a dead child names exactly the item its slot says was running.  The others in
  `sent` go back to the queue as they were, including those that finished while their
  results waited in the child's outbox (at most FLUSH_AFTER): those run again.
  When a stream ends early, its thread (`withdraw()`) sends a "withdraw" frame naming
  the items in `sent` its owner no longer wants; the child takes out those it has not
  started and answers "skipped".

What wakes the manager (one `multiprocessing.connection.wait` on all of them): a
message or EOF on a child's socket, a child's sentinel (it ended), or a byte on the
wake pipe (shutdown, `fail()`, or a new task when none is waiting for the manager
already: `_woken`, so a burst of submits writes one byte).  No polling.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict, deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import _remote
from .._devices import child_view
from .._exceptions import BrokenPool, PoolClosed, WorkerCrashed
from .._records import SETUP, Busy, setup_busy
from .._stats import WorkerStats, count_failure, per_worker
from .._worker import Worker, describe
from ._base import Backend, FunctionCache, Run, give_up_on_setup, take_runnable
from ._child import FN_CACHE, Slot, child_main

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._records import Task

__all__ = ["BACKEND", "ProcessBackend"]

logger = logging.getLogger("steadypool")

START_METHODS = ("spawn", "forkserver")
_JOIN_SLICE = 0.5
_STOP_GRACE = 3.0  # seconds a child gets to exit after "stop" before it is killed
_STACK_WAIT = 1.0  # seconds to wait for a child's faulthandler dump
_START_FAILURES = 3  # consecutive deaths of one index before it runs a task: broken
_pool_ids = itertools.count()
_live_backends: set[ProcessBackend] = set()  # for the exit hook; guarded by the GIL
_PREFETCH_BELOW = 0.005  # seconds: send tasks ahead while tasks average less than this
AHEAD_TIME = 0.002  # seconds of work sent ahead to a child while tasks are short
AHEAD_MAX = 64  # tasks sent ahead to a child, at most
_ORDER = {"wake": 0, "message": 1, "died": 2}


class _Run(Run):
    """A `Run` with what it takes to send it: the pickled arguments and function."""

    __slots__ = ("fn_bytes", "fn_id", "frames", "withdrawn")

    def __init__(self, task: Task, frames: list[bytes | memoryview], fn_id: int, fn_bytes: bytes):
        super().__init__(task)
        self.frames = frames
        self.fn_id = fn_id
        self.fn_bytes = fn_bytes
        self.withdrawn = False  # a "withdraw" frame was sent for it


class _Child:
    """One worker process, as the manager sees it."""

    __slots__ = (
        "busy",
        "doomed",
        "dump_path",
        "failed",
        "fn_ids",
        "items",
        "lifeline",
        "main_ident",
        "pid",
        "process",
        "ready",
        "send_lock",
        "sent",
        "setup_started",
        "slot",
        "sock",
        "waited",
        "worker",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.process: Any = None
        self.sock: socket.socket | None = None
        # Guards writes to `sock`: the manager sends tasks, a stream's thread "withdraw"
        # frames (whole messages, never interleaved).
        self.send_lock = threading.Lock()
        self.lifeline: socket.socket | None = None
        self.dump_path = ""
        # The tasks sent to the child and not answered, by task id, in the order sent.
        self.sent: OrderedDict[int, _Run] = OrderedDict()
        self.slot: Slot | None = None  # what it runs now (see the module docstring)
        self.fn_ids: OrderedDict[int, None] = OrderedDict()  # what the child has cached
        self.ready = False
        self.setup_started: float | None = None  # while the child runs setup(worker)
        self.doomed = False  # killed on purpose (watchdog): its death is not a crash
        self.pid = 0
        self.main_ident = 0
        self.items = 0
        self.failed = 0
        self.busy = 0.0
        self.waited = 0.0


class ProcessBackend(Backend):
    """Runs tasks in worker processes that can be killed and replaced."""

    options = frozenset({"retries", "start_method"})
    can_kill = True
    replacing = "its worker process was killed and a fresh one took its place"

    def __init__(
        self,
        workers: Sequence[Worker],
        setup: Callable[[Worker], Any] | None,
        *,
        name: str,
        retries: int = 0,
        start_method: str | None = None,
        address: str | None = None,
    ) -> None:
        self.name = name or f"pool{next(_pool_ids)}"
        self.last_done = 0.0
        self._retries = retries
        self._context: Any = multiprocessing.get_context(start_method or "spawn")
        try:
            self._setup = None if setup is None else cloudpickle.dumps(setup)
        except Exception as why:
            raise TypeError(
                f"setup {setup!r} cannot be sent to worker processes: it cannot be pickled "
                f"({type(why).__name__}: {why}); define it at module level, or make what "
                "it captures picklable"
            ) from why
        self._workers = list(workers)
        self._lock = threading.Lock()
        self._pending: deque[_Run] = deque()
        self._woken = False  # a wake byte is on its way for the tasks in `_pending`
        self._closed = False
        self._broken: BrokenPool | None = None
        self._fn_cache: FunctionCache[tuple[int, bytes]] = FunctionCache(FN_CACHE // 2)
        self._fn_ids = itertools.count()
        self._children: list[_Child] = []  # every child ever (stats); live ones below
        self._live: dict[int, _Child] = {}  # worker index -> its current child
        self._start_failures: dict[int, int] = {}
        self._setup_kills: dict[int, int] = {}  # index -> setups killed by the watchdog
        self._dump_dir = tempfile.mkdtemp(prefix="steadypool-")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._manager = threading.Thread(
            target=self._manage, name=f"steadypool-{self.name}-manager", daemon=True
        )
        _live_backends.add(self)
        self._manager.start()

    # --- called from any thread ----------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._closed and not self._manager.is_alive()

    @property
    def broken(self) -> BrokenPool | None:
        return self._broken

    def prepare(self, fn: Callable[..., Any]) -> None:
        """Pickle `fn` now (cached), so an unpicklable function fails before any work."""
        self._fn_entry(fn)

    def _fn_entry(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        entry = self._fn_cache.get(fn)
        if entry is not None:
            return entry
        try:
            # With its source file: cloudpickle >= 3.1.3 writes "<dynamic-code>" in its
            # place, and remote tracebacks would lose their source lines.
            filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
            data = pickle.dumps((cloudpickle.dumps(fn, protocol=5), filename))
        except Exception as why:
            raise TypeError(
                f"the function {fn!r} cannot be sent to worker processes: it cannot be "
                f"pickled ({type(why).__name__}: {why}); define it at module level, or "
                "make what it captures picklable"
            ) from why
        entry = (next(self._fn_ids), data)
        self._fn_cache.put(fn, entry)
        return entry

    def submit(self, task: Task) -> None:
        key, fn, args, kwargs, owner, _queued_at = task
        if self._closed:
            raise PoolClosed("cannot submit to a steadypool Pool after shutdown()")
        if self._broken is not None:
            raise self._broken
        fn_id, fn_bytes = self._fn_entry(fn)
        try:
            frames = _remote.dumps((args, kwargs))
        except Exception as why:
            owner.put((key, False, _remote.argument_error(args, kwargs, why), None))
            return
        run = _Run(task, frames, fn_id, fn_bytes)
        with self._lock:
            if self._closed:
                raise PoolClosed("cannot submit to a steadypool Pool after shutdown()")
            if self._broken is not None:
                raise self._broken
            self._pending.append(run)
            woken, self._woken = self._woken, True
        if not woken:
            self._wake()

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        with self._lock:
            self._closed = True
            dropped = []
            if cancel:
                # What idle or starting workers take next still runs (Backend.shutdown).
                busy = sum(1 for c in self._live.values() if c.sent)
                free = max(0, len(self._workers) - busy)
                while len(self._pending) > free:
                    dropped.append(self._pending.pop())
                dropped.reverse()
        for run in dropped:
            run.task[4].drop(run.task[0])
        self._wake()
        if wait and threading.current_thread() is not self._manager:
            while self._manager.is_alive():
                self._manager.join(_JOIN_SLICE)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # --- the watchdog's view ---------------------------------------------------------------

    def busy(self) -> list[Busy]:
        found = []
        for child in list(self._live.values()):
            started = child.setup_started
            if started is not None and not child.doomed:
                where = f"pid {child.pid}"
                found.append(setup_busy(id(child), child.worker, started, where, (child, SETUP)))
                continue
            run = None if child.doomed else self._running(child)
            if run is None:
                continue
            key, owner = run.task[0], run.task[4]
            found.append(
                Busy(
                    run.task_id,
                    child.worker,
                    key,
                    owner,
                    run.started,
                    f"pid {child.pid}",
                    (child, run),
                )
            )
        return found

    @staticmethod
    def _running(child: _Child) -> _Run | None:
        """The run `child` is running now, by its slot (None between tasks); its
        `started` is set from the slot on the way."""
        slot = child.slot
        now = None if slot is None else slot.read()
        if now is None or not now[2]:
            return None
        run = child.sent.get(now[0])
        if run is not None:
            run.started = now[1]
        return run

    def stack(self, busy: Busy) -> str:
        child, run = busy.handle
        current = SETUP if child.setup_started is not None else self._running(child)
        if current is not run or not child.pid:
            return ""
        try:
            with open(child.dump_path, "r+") as dump:
                dump.truncate(0)
            os.kill(child.pid, signal.SIGUSR1)
        except OSError:
            return ""
        text, deadline = "", time.monotonic() + _STACK_WAIT
        while time.monotonic() < deadline:
            time.sleep(0.02)
            with open(child.dump_path) as dump:
                now = dump.read()
            if now and now == text:
                break  # stopped growing: the dump is complete
            text = now
        return _remote.main_thread_stack(text, child.main_ident)

    def fail(self, busy: Busy, error: BaseException, *, retry: bool = False) -> bool:
        child, run = busy.handle
        if run is SETUP:
            return self._fail_setup(busy, child, error, retry=retry)
        with self._lock:
            if child.doomed or child.sent.get(run.task_id) is not run:
                return False  # finished (or died) first
            child.doomed = True
            requeue = retry and run.attempts <= self._retries
            if requeue:
                run.attempts += 1
            self._take_back(child, None if requeue else run)
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(child.pid, signal.SIGKILL)
        if requeue:
            logger.warning(
                "steadypool: %s; retrying it (attempt %d of %d)",
                error,
                run.attempts,
                self._retries + 1,
            )
        else:
            count_failure(child, run.started, time.monotonic())
            run.task[4].put((run.task[0], False, error, child.worker))
        self._wake()
        return True

    def _fail_setup(self, busy: Busy, child: _Child, error: BaseException, *, retry: bool) -> bool:
        """The watchdog gives up on a child's setup: kill it; a fresh child runs setup
        again while `retries` allow, else the pool breaks."""
        index = child.worker.index
        with self._lock:
            if child.setup_started is None or child.doomed:
                return False  # it finished (or died) first
            child.setup_started = None
            child.doomed = True
            kills = self._setup_kills[index] = self._setup_kills.get(index, 0) + 1
        retries = self._retries if retry else 0
        broken = give_up_on_setup(
            self.name, busy, error, attempt=kills, retries=retries, fresh="worker process"
        )
        if broken is not None:
            self._break(broken)
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(child.pid, signal.SIGKILL)
        self._wake()
        return True

    def _take_back(self, child: _Child, failed: _Run | None) -> None:
        """Put every run sent to `child` but `failed` back at the head of the queue, in
        the order sent (`_lock` held): those behind never started, those before
        finished but their results died with the child, and run again."""
        back = [r for r in child.sent.values() if r is not failed]
        child.sent.clear()
        self._pending.extendleft(reversed(back))

    def counts(self) -> tuple[int, int]:
        return sum(c.items for c in self._children), len(self._pending)

    def worker_stats(self) -> tuple[tuple[WorkerStats, ...], int, int]:
        children = list(self._children)
        replaced = max(0, len(children) - len(self._workers))
        return per_worker(self._workers, children), 0, replaced

    def _manage(self) -> None:
        try:
            for worker in self._workers:
                self._spawn(worker)
            while True:
                self._dispatch()
                if self._finished():
                    return
                by_handle: dict[Any, tuple[str, _Child | None]] = {self._wake_r: ("wake", None)}
                for child in self._live.values():
                    by_handle[child.process.sentinel] = ("died", child)
                    if child.sock is not None:
                        by_handle[child.sock] = ("message", child)
                # Wake-up path: a message, a death, or the wake pipe (see module docstring).
                # Messages first: a child's last result must be read before its death.
                ready = sorted(wait(list(by_handle)), key=lambda h: _ORDER[by_handle[h][0]])
                for handle in ready:
                    what, found = by_handle[handle]
                    if what == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif found is not None and found is self._live.get(found.worker.index):
                        if what == "message":
                            self._receive(found)
                        else:
                            self._reap(found)
        except BaseException as exc:
            logger.exception("steadypool: the manager of process pool %r failed", self.name)
            broken = BrokenPool(f"the manager of process pool {self.name!r} failed: {exc!r}")
            broken.__cause__ = exc
            self._break(broken)
        finally:
            self._stop_children()

    def _finished(self) -> bool:
        with self._lock:
            idle = all(not c.sent for c in self._live.values())
            return self._closed and not self._pending and idle

    def _spawn(self, worker: Worker) -> None:
        child = _Child(worker)
        on_cpu = sum(
            1 for w in self._workers if w.device is not None and w.device.startswith("cpu")
        )
        share = max(1, (os.cpu_count() or 1) // on_cpu) if on_cpu else 0
        seen, env = child_view(worker.device, share)
        parent_sock, child_sock = socket.socketpair()
        parent_life, child_life = socket.socketpair()
        generation = sum(1 for c in self._children if c.worker.index == worker.index)
        child.dump_path = os.path.join(self._dump_dir, f"w{worker.index}.{generation}.stack")
        open(child.dump_path, "w").close()
        child.slot = Slot.create(child.dump_path + ".slot")
        child.process = self._context.Process(
            target=child_main,
            args=(
                child_sock,
                child_life,
                Worker(worker.index, seen),
                env,
                self._setup,
                child.dump_path,
                # Under forkserver our parent is the fork server, not this process.
                os.getpid() if self._context.get_start_method() == "spawn" else None,
            ),
            name=f"steadypool-{self.name}-w{worker.index}"
            + (f".{generation}" if generation else ""),
            daemon=False,  # workers may start processes of their own
        )
        child.process.start()
        child_sock.close()
        child_life.close()
        child.sock, child.lifeline, child.pid = parent_sock, parent_life, child.process.pid
        self._children.append(child)
        self._live[worker.index] = child

    def _dispatch(self) -> None:
        ahead = self._ahead()
        for child in list(self._live.values()):
            if not child.ready or child.doomed:
                continue
            # Refill when half of what was sent ahead is answered: a batch per message.
            if len(child.sent) > ahead // 2:
                continue
            batch: list[_Run] = []
            with self._lock:
                while len(child.sent) < ahead:
                    run = take_runnable(self._pending)
                    if run is None:
                        break
                    child.sent[run.task_id] = run
                    batch.append(run)
                empty = not self._pending
                if empty:
                    self._woken = False  # a later submit must wake the manager again
            if batch:
                now = time.monotonic()
                for run in batch:
                    child.waited += now - run.task[5]
                self._send_tasks(child, batch)
            if empty:
                return

    def _ahead(self) -> int:
        """How many tasks a child holds: one while tasks are long, else AHEAD_TIME's
        worth (at least two, so it never waits for the manager between tasks)."""
        if self._task_time >= _PREFETCH_BELOW:
            return 1
        return max(2, min(AHEAD_MAX, int(AHEAD_TIME / max(self._task_time, 1e-7))))

    def withdraw(self) -> None:
        """Ask children not to start the items sent to them whose owners no longer want
        them; sent before this returns, so a child still busy with an item ahead of
        them sees it in time."""
        for child in list(self._live.values()):
            with self._lock:
                unwanted = [
                    run
                    for run in child.sent.values()
                    if not run.withdrawn and not run.task[4].wanted(run.task[0])
                ]
                for run in unwanted:
                    run.withdrawn = True
            if not unwanted:
                continue
            message = [pickle.dumps(("withdraw", [run.task_id for run in unwanted]))]
            with contextlib.suppress(OSError), child.send_lock:  # OSError: it died (_reap)
                if child.sock is not None:  # else it is ending: _reap requeues the runs
                    _remote.send_frames(child.sock, message)

    def _send_tasks(self, child: _Child, runs: list[_Run]) -> None:
        entries = []
        frames: list[bytes | memoryview] = []
        for run in runs:
            known = run.fn_id in child.fn_ids
            child.fn_ids[run.fn_id] = None
            child.fn_ids.move_to_end(run.fn_id)
            while len(child.fn_ids) > FN_CACHE // 2:
                child.fn_ids.popitem(last=False)
            entries.append(
                (run.task_id, run.fn_id, None if known else run.fn_bytes, len(run.frames))
            )
            frames += run.frames
        try:
            assert child.sock is not None
            with child.send_lock:
                _remote.send_frames(child.sock, [pickle.dumps(("tasks", entries)), *frames])
        except OSError:
            pass  # the child died: its sentinel comes next and _reap handles the runs

    def _receive(self, child: _Child) -> None:
        assert child.sock is not None
        try:
            frames = _remote.recv_frames(child.sock)
        except (EOFError, OSError):
            with child.send_lock:  # no withdraw() writes to a closed (reused) descriptor
                child.sock.close()
                child.sock = None  # it is ending; the sentinel follows
            return
        tag = pickle.loads(frames[0])
        if tag[0] == "setup":
            child.pid, child.main_ident = tag[1], tag[2]
            with self._lock:
                if not child.doomed:
                    child.setup_started = time.monotonic()
            return
        if tag[0] == "ready":
            with self._lock:
                child.setup_started = None
            child.ready, child.pid, child.main_ident = True, tag[1], tag[2]
            self._start_failures.pop(child.worker.index, None)
            self._setup_kills.pop(child.worker.index, None)
            return
        if tag[0] == "setup_failed":
            exc, text = _remote.loads(frames[1:])
            broken = BrokenPool(
                f"setup(worker) raised {type(exc).__name__}: {exc} on "
                f"{describe(child.worker.index, child.worker.device)} of pool {self.name!r} "
                f"(pid {child.pid}); the pool cannot run tasks. Fix setup (its traceback "
                "is the cause below) and create a new Pool.",
                worker=child.worker,
            )
            broken.__cause__ = _remote.rebuild_exception(exc, text)
            self._break(broken)
            return
        if tag[0] == "results":
            self._results(child, tag[1], frames)

    def _results(
        self, child: _Child, entries: list[tuple[int, str, int, float]], frames: list[bytearray]
    ) -> None:
        """Deliver a batch of outcomes, in the order the child ran them."""
        finished = time.monotonic()
        at = 1
        for task_id, tag, count, took in entries:
            payload = frames[at : at + count]
            at += count
            with self._lock:
                run = None if child.doomed else child.sent.pop(task_id, None)
            if run is None or tag == "skipped":
                # Claimed by the watchdog meanwhile (its outcome is delivered), or
                # withdrawn before it started (its owner waits for nothing).
                continue
            self._count_done(child, run, finished, took)
            try:
                value = _remote.loads(payload)
            except Exception as why:
                child.failed += 1
                error = pickle.UnpicklingError(
                    f"the {'result' if tag == 'ok' else 'exception'} sent back by "
                    f"{describe(child.worker.index, child.worker.device)} could not be "
                    f"unpickled here: {type(why).__name__}: {why}"
                )
                run.task[4].put((run.task[0], False, error, child.worker))
                continue
            self._hand_over(child, run, tag == "ok", value)
            del value, payload

    def _reap(self, child: _Child) -> None:
        """A child ended: fail or retry its item, and start a replacement."""
        child.process.join(_JOIN_SLICE)
        exitcode = child.process.exitcode
        with self._lock:
            run = self._running(child)  # the item it died running, if any
            requeue = run is not None and run.attempts <= self._retries
            if run is not None and requeue:
                run.attempts += 1
            self._take_back(child, None if requeue else run)
        self._close_child(child)
        del self._live[child.worker.index]
        crash: WorkerCrashed | None = None
        if run is not None and not child.doomed:
            where = describe(child.worker.index, child.worker.device)
            item = (
                "a submitted task"
                if run.task[4].position(run.task[0]) is None
                else (f"item {run.task[4].position(run.task[0])}")
            )
            crash = WorkerCrashed(
                f"{where} (pid {child.pid}) died with {_remote.describe_exit(exitcode)} "
                f"while running {item}; likely cause: {_remote.likely_cause(exitcode)}. "
                + (
                    f"Retrying it (attempt {run.attempts} of {self._retries + 1}); "
                    if requeue
                    else "The item failed; "
                )
                + "a fresh worker process takes this one's place.",
                exitcode=exitcode,
                worker=child.worker,
            )
            if requeue:
                logger.warning("steadypool: %s", crash)
                crash = None
        elif not child.ready and not child.doomed and self._broken is None:
            failures = self._start_failures.get(child.worker.index, 0) + 1
            self._start_failures[child.worker.index] = failures
            if failures >= _START_FAILURES:
                self._break(
                    BrokenPool(
                        f"worker process {child.worker.index} of pool {self.name!r} died "
                        f"{failures} times while starting, last with "
                        f"{_remote.describe_exit(exitcode)}; the pool cannot run tasks. Likely "
                        f"cause: {_remote.likely_cause(exitcode)}"
                    )
                )
        with self._lock:
            needed = self._broken is None and not (self._closed and not self._pending)
        if needed:
            self._spawn(child.worker)
        if crash is not None and run is not None:
            # Delivered once the replacement exists: whoever the crash wakes finds the
            # pool at full strength (and stats counting the replacement).
            count_failure(child, run.started, time.monotonic())
            run.task[4].put((run.task[0], False, crash, child.worker))

    def _break(self, broken: BrokenPool) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = broken
            dropped = list(self._pending)
            self._pending.clear()
        for run in dropped:
            run.task[4].put((run.task[0], False, self._broken, None))

    def _close_child(self, child: _Child) -> None:
        with child.send_lock:  # no withdraw() writes to a closed (reused) descriptor
            for sock in (child.sock, child.lifeline):
                if sock is not None:
                    sock.close()
            child.sock = child.lifeline = None
        if child.slot is not None:
            child.slot.close()
            child.slot = None
        for path in (child.dump_path, child.dump_path + ".slot"):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _stop_children(self) -> None:
        """Ask every child to stop, then kill what has not exited in time (manager only)."""
        live = list(self._live.values())
        for child in live:
            if child.sock is not None:
                with contextlib.suppress(OSError):
                    _remote.send_frames(child.sock, [pickle.dumps(("stop",))])
        deadline = time.monotonic() + _STOP_GRACE
        for child in live:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(_STOP_GRACE)
            self._close_child(child)
            # Items still running when the pool gave up on them (e.g. shutdown by a
            # failed manager) must not leave their owners waiting.
            with self._lock:
                runs = list(child.sent.values())
                child.sent.clear()
            for run in runs:
                stopped = WorkerCrashed(
                    f"the pool {self.name!r} stopped while the item was running"
                )
                run.task[4].put((run.task[0], False, stopped, None))
        self._live.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(self._dump_dir)
        _live_backends.discard(self)


def _kill_all_at_exit() -> None:
    """At interpreter exit, kill the children of pools still running (the exit wait gave
    up on them, or was interrupted) before multiprocessing's own exit hook joins them,
    which would wait on their tasks; and remove their stack-dump folders."""
    for backend in list(_live_backends):
        for child in list(backend._live.values()):
            with contextlib.suppress(Exception):
                child.process.kill()
        shutil.rmtree(backend._dump_dir, ignore_errors=True)


# Registered at import, after multiprocessing's own exit hook, so it runs first.
atexit.register(_kill_all_at_exit)

BACKEND = ProcessBackend
