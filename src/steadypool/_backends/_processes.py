"""Process backend: one worker process per worker, driven by one manager thread.

Data flow::

    submit() --pickle now (errors are that item's outcome)--> Ledger --wake pipe--> manager
    manager --TASKS frames--> child socket ... child --RESULTS frames--> manager
    manager --ledger.settle(run, outcome)--> the task's owner
    watchdog --busy()/stack()/fail()--> child slots, the ledger (fail() kills the child)

Who owns what:

* The `Ledger` owns every item from `submit` to its one outcome (the queue, what each
  child holds, the exactly-once `settle`, requeue, retries, cancel, counts); this module
  only moves items and tells it what happened.
* The manager thread owns the children: it spawns them, talks on their sockets, reaps
  and replaces them.  Spawning from the manager matters: Linux's PR_SET_PDEATHSIG
  follows the thread that forked, and the manager is the last of ours to end.
* `_lock` guards `_live`, `_leaving`, every `child.life` (its `WorkerState`),
  `_start_failures` and `_setup_kills`.  It is taken before the ledger's own lock, never
  after.  The manager is the only writer of `_live` and `_leaving`; other threads take a
  snapshot of them under `_lock`.
* Recycling (``max_tasks_per_worker``, ``max_worker_memory``): `_live[index]` is the
  newest child of an index; a recycled child moves to `_leaving` as its successor is
  spawned into `_live`.  A child is RETIRING (its successor starting, it still takes
  items) once its items left would take about a start-up (`_successor_due`) or its
  memory passed 90% of ``max_memory``; it is LEAVING (it takes no more) once its
  successor is READY, it was sent its ``max_tasks``-th item, or its memory passed
  ``max_memory``.  A LEAVING child that holds nothing is sent
  STOP; its end is no crash, and only the death of `_live[index]` spawns a child.
* Each child runs its items one at a time, in the order sent.  While items are long it
  holds one; while they are short, as many as take AHEAD_TIME to run (at most
  AHEAD_MAX), sent and answered in batches.  The child writes the item it starts into
  its `Slot` (shared memory): the watchdog reads there which item runs and since when,
  and a dead child is answered for by exactly the item its slot names -- the one it
  was running, or the one that finished last, whose result died on its way back (a
  death while sending a big result fails that item rather than running it again for
  ever).  The others it held go back to the queue as they were.
  When a stream ends early, its thread (`withdraw()`) sends a WITHDRAW frame naming
  the items the child holds whose owner no longer wants them; the child takes out
  those it has not started and answers SKIPPED.

What wakes the manager (one `multiprocessing.connection.wait` on all of them): a
message or EOF on a child's socket, a child's sentinel (it ended), or a byte on the
wake pipe (shutdown, `fail()`, `halt()`, or a submit that found the queue empty: while
the queue is not empty the manager dispatches again as children answer).  No polling.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import select
import shutil
import tempfile
import threading
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import _remote
from .._devices import child_view
from .._exceptions import BrokenPool, WorkerCrashed
from .._oom import SAMPLE_EVERY, crash_cause, memory_line
from .._records import SETUP, Busy, setup_busy
from .._stats import count_failure
from .._worker import Worker, describe
from . import _wire as wire
from ._base import FunctionCache, give_up_on_setup
from ._child import FN_CACHE
from ._ledger import Run, ahead
from ._life import WorkerState
from ._queued import QueuedBackend
from ._worker_process import WorkerProcess

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .._records import Task
    from ._base import BackendOptions

__all__ = ["BACKEND", "ProcessBackend"]

logger = logging.getLogger("steadypool")

START_METHODS = ("spawn", "forkserver")
_JOIN_SLICE = 0.5
_STOP_GRACE = 3.0  # seconds a child gets to exit after STOP before it is killed
_DRAIN_WAIT = 0.5  # seconds to read what a dead child sent before it died
_START_FAILURES = 3  # consecutive deaths of one index before it runs a task: broken
_live_backends: set[ProcessBackend] = set()  # for the exit hook; guarded by the GIL
_PREFETCH_BELOW = 0.005  # seconds: send tasks ahead while tasks average less than this
AHEAD_TIME = 0.002  # seconds of work sent ahead to a child while tasks are short
AHEAD_MAX = 64  # tasks sent ahead to a child, at most
_ORDER = {"wake": 0, "message": 1, "died": 2}


class ProcessBackend(QueuedBackend):
    """Runs tasks in worker processes that can be killed and replaced."""

    options = frozenset({"retries", "start_method", "max_tasks_per_worker", "max_worker_memory"})
    destination = "a worker process"
    replacing = "its worker process was killed and a fresh one took its place"

    def _open(self, options: BackendOptions) -> None:
        self._context: Any = multiprocessing.get_context(options.start_method or "spawn")
        self._lock = threading.Lock()
        # Set once (interpreter exit, Ctrl-C): the manager kills every child and ends,
        # without replacing any.
        self._halted = False
        self._fn_cache: FunctionCache[tuple[int, bytes]] = FunctionCache(FN_CACHE // 2)
        self._fn_ids = itertools.count()
        self._live: dict[int, WorkerProcess] = {}  # worker index -> its newest child
        self._leaving: list[WorkerProcess] = []  # recycled children finishing their items
        self._max_tasks = options.max_tasks
        self._max_memory = options.max_memory
        self._start_failures: dict[int, int] = {}
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
        return self._ledger.closed and not self._manager.is_alive()

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
        except KeyboardInterrupt:
            raise
        except BaseException as why:
            raise TypeError(
                f"the function {fn!r} cannot be sent to worker processes: it cannot be "
                f"pickled ({type(why).__name__}: {why}); define it at module level, or "
                "make what it captures picklable"
            ) from (why if isinstance(why, Exception) else None)
        entry = (next(self._fn_ids), data)
        self._fn_cache.put(fn, entry)
        return entry

    def submit(self, task: Task) -> None:
        run = self._run_for(task)  # PoolClosed / BrokenPool first, as on every backend
        if run is not None:
            fn_id, fn_bytes = self._fn_entry(run.fn)
            run.wire = (run.wire, fn_id, fn_bytes)
            if self._ledger.add(run):
                self._wake()

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        self._ledger.close()
        if cancel:
            self._cancel(sum(1 for c in self._snapshot() if self._ledger.holds(c)))
        self._wake()
        if wait and threading.current_thread() is not self._manager:
            while self._manager.is_alive():
                self._manager.join(_JOIN_SLICE)

    def halt(self) -> None:
        """Stop now (Ctrl-C, interpreter exit): nothing more starts, every child is
        killed, what it held is failed; no child is replaced."""
        self._ledger.close()
        self._ledger.cancel(0)
        self._halted = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _snapshot(self) -> list[WorkerProcess]:
        """Every child alive: the newest of each index and those leaving."""
        with self._lock:
            return [*self._live.values(), *self._leaving]

    # --- the watchdog's view ---------------------------------------------------------------

    def busy(self) -> list[Busy]:
        found = []
        for child in self._snapshot():
            # Unlocked read of `life`: one attribute, replaced whole; a stale state gives a
            # snapshot that `fail` checks again under `_lock` before it acts.
            life = child.life
            if life.state is WorkerState.SETUP:
                where = f"pid {child.pid}"
                found.append(setup_busy(id(child), child.worker, life.since, where, (child, SETUP)))
                continue
            run = self._running(child) if life.runs_items else None
            if run is None:
                continue
            found.append(
                Busy(
                    run.task_id,
                    child.worker,
                    run.key,
                    run.owner,
                    run.started,
                    f"pid {child.pid}",
                    (child, run),
                )
            )
        return found

    def _last(self, child: WorkerProcess) -> tuple[Run | None, bool]:
        """(the run `child`'s slot names, if the child still holds it, and whether it is
        running: else it finished and its result has not arrived); its `started` is
        set from the slot on the way."""
        now = child.last()
        if now is None:
            return None, False
        run = self._ledger.find(child, now[0])
        if run is not None:
            run.started = now[1]
        return run, now[2]

    def _running(self, child: WorkerProcess) -> Run | None:
        """The run `child` is running now (None between tasks)."""
        run, running = self._last(child)
        return run if running else None

    def stack(self, busy: Busy) -> str:
        child: WorkerProcess = busy.handle[0]
        current = SETUP if child.life.in_setup else self._running(child)
        if current is not busy.handle[1] or not child.pid:
            return ""
        return child.stack()

    def fail(self, busy: Busy, error: BaseException, *, retry: bool = False) -> bool:
        child, run = busy.handle
        if run is SETUP:
            return self._fail_setup(busy, child, error, retry=retry)
        assert isinstance(run, Run)
        with self._lock:
            if not child.life.runs_items:
                return False  # it died (or was killed) first
            if self._ledger.find(child, run.task_id) is not run:
                return False  # it finished first
            child.life.doom()
        started = run.started
        culprit = self._ledger.release(child, run, retry=retry)
        child.kill()
        if culprit is None:
            logger.warning(
                "steadypool: %s; retrying it (attempt %d of %d)",
                error,
                run.attempts,
                self._ledger.retries + 1,
            )
        elif self._ledger.settle(culprit, False, error, child.worker):
            count_failure(child, started, time.monotonic())
        self._wake()
        return True

    def _fail_setup(
        self, busy: Busy, child: WorkerProcess, error: BaseException, *, retry: bool
    ) -> bool:
        """The watchdog gives up on a child's setup: kill it; a fresh child runs setup
        again while `retries` allow, else the pool breaks."""
        index = child.worker.index
        with self._lock:
            if not child.life.in_setup or not child.life.doom():
                return False  # it finished (or died) first
            kills = self._setup_kills[index] = self._setup_kills.get(index, 0) + 1
        retries = self._ledger.retries if retry else 0
        broken = give_up_on_setup(
            self.name, busy, error, attempt=kills, retries=retries, fresh="worker process"
        )
        if broken is not None:
            self._ledger.break_pool(broken)
        child.kill()
        self._wake()
        return True

    def withdraw(self) -> None:
        """Ask children not to start the items sent to them whose owners no longer want
        them; sent before this returns, so a child still busy with an item ahead of
        them sees it in time."""
        for child in self._snapshot():
            unwanted = self._ledger.unwanted(child)
            if not unwanted:
                continue
            # If it died, _reap releases the runs.
            child.send([pickle.dumps((wire.WITHDRAW, [run.task_id for run in unwanted]))])

    def stop_unwanted(self) -> None:
        """Kill the children running an item nobody waits for (the consumer left the
        `with` block by an exception): its result would be thrown away."""
        for child in self._snapshot():
            run = self._running(child)
            if run is None or run.owner.wanted(run.key):
                continue
            with self._lock:
                if not child.life.runs_items or not child.life.doom():
                    continue
            self._ledger.release(child, None)
            child.kill()
        self._wake()

    # --- the manager thread ----------------------------------------------------------------

    def _manage(self) -> None:
        try:
            for worker in self._workers:
                self._spawn(worker)
            while not self._halted:
                self._dispatch()
                if self._ledger.closed and self._ledger.idle():
                    return
                by_handle: dict[Any, tuple[str, WorkerProcess | None]] = {
                    self._wake_r: ("wake", None)
                }
                for child in self._children():
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
                    elif found is not None and self._alive(found):
                        if what == "message":
                            self._receive(found)
                        else:
                            self._reap(found)
        except BaseException as exc:
            logger.exception("steadypool: the manager of process pool %r failed", self.name)
            broken = BrokenPool(f"the manager of process pool {self.name!r} failed: {exc!r}")
            broken.__cause__ = exc
            self._ledger.break_pool(broken)
        finally:
            self._stop_children()

    def _spawn(self, worker: Worker) -> None:
        child = WorkerProcess(worker)
        on_cpu = sum(
            1 for w in self._workers if w.device is not None and w.device.startswith("cpu")
        )
        share = max(1, (os.cpu_count() or 1) // on_cpu) if on_cpu else 0
        seen, env = child_view(worker.device, share)
        generation = sum(1 for c in self._history if c.worker.index == worker.index)
        child.start(
            self._context,
            seen=Worker(worker.index, seen),
            env=env,
            setup=self._setup,
            dump_path=os.path.join(self._dump_dir, f"w{worker.index}.{generation}.stack"),
            name=f"steadypool-{self.name}-w{worker.index}"
            + (f".{generation}" if generation else ""),
        )
        self._history.append(child)
        with self._lock:
            self._live[worker.index] = child

    def _children(self) -> list[WorkerProcess]:
        """Every child alive (manager only: it is the only writer, so no lock)."""
        return [*self._live.values(), *self._leaving]

    def _alive(self, child: WorkerProcess) -> bool:
        """Whether `child` is still one of ours (manager only)."""
        return child is self._live.get(child.worker.index) or child in self._leaving

    def _dispatch(self) -> None:
        count = ahead(self._task_time, below=_PREFETCH_BELOW, budget=AHEAD_TIME, most=AHEAD_MAX)
        for child in self._children():
            # Unlocked read of `life`: only the manager (this thread) makes a child READY
            # or recycles it, and a child doomed meanwhile is killed; what it was sent is
            # released.
            if not child.life.takes_items:
                continue
            # Refill when half of what was sent ahead is answered: a batch per message.
            if self._ledger.holds(child) > count // 2:
                continue
            want = count if self._max_tasks is None else min(count, self._max_tasks - child.given)
            batch = self._ledger.take(child, want)
            if batch:
                now = time.monotonic()
                child.given += len(batch)
                for run in batch:
                    child.waited += now - run.queued_at
                child.send_tasks(batch)  # if it died, _reap releases the batch
                if self._max_tasks is not None and child.given >= self._max_tasks:
                    self._recycle(child, leave=True)  # it was sent its last item
                elif self._successor_due(child):
                    self._recycle(child, leave=False)
            if not self._ledger.queued:
                return

    # --- recycling (manager only) ----------------------------------------------------------

    def _recycle(self, child: WorkerProcess, *, leave: bool) -> None:
        """Recycle `child`: it gives its index to a successor, spawned now; it leaves at
        once (`leave`: it was sent its last item) or goes on taking items until the
        successor is ready (RETIRING: its memory crossed the line)."""
        with self._lock:
            newest = child is self._live.get(child.worker.index)
            if not (child.life.leave() if leave else child.life.retire()):
                return  # not READY (nor RETIRING, to leave): killed, ended, recycled
            child.recycled = True
            if newest:  # else its successor was spawned when it began to retire
                del self._live[child.worker.index]
                self._leaving.append(child)
                if not self._wanted():  # nothing more to take: it leaves, alone
                    child.life.leave()
                    newest = False
        if newest:
            self._spawn(child.worker)
        self._leave_if_done(child)

    def _leave_if_done(self, child: WorkerProcess) -> None:
        """Tell a LEAVING child that holds nothing more to exit (its end is no crash)."""
        if child.life.state is WorkerState.LEAVING and not self._ledger.holds(child):
            child.send([pickle.dumps((wire.STOP,))])  # if it died, _reap hears of it

    def _wanted(self) -> bool:
        """Whether an index left without a child should get one (not once halted)."""
        return not self._halted and self._more_work()

    def _receive(self, child: WorkerProcess, timeout: float | None = None) -> None:
        frames = child.receive(timeout)
        if frames is None:
            return
        tag = pickle.loads(frames[0])
        if tag[0] == wire.RESULTS:
            self._results(child, tag[1], frames)
        elif tag[0] == wire.SETUP:
            child.pid, child.main_ident = tag[1], tag[2]
            with self._lock:
                child.life.setup_began()
        elif tag[0] == wire.READY:
            child.pid, child.main_ident = tag[1], tag[2]
            with self._lock:
                readied = child.life.ready()  # False: killed in setup meanwhile
                if readied:
                    self._started(child.life)
                    self._start_failures.pop(child.worker.index, None)
                    self._setup_kills.pop(child.worker.index, None)
            if readied:
                self._succeeded(child)
        elif tag[0] == wire.SETUP_FAILED:
            _ok, exc = wire.load_outcome(wire.ERR, frames[1:], f"pid {child.pid}")
            broken = BrokenPool(
                f"setup(worker) raised {type(exc).__name__}: {exc} on "
                f"{describe(child.worker.index, child.worker.device)} of pool {self.name!r} "
                f"(pid {child.pid}); the pool cannot run tasks. Fix setup (its traceback "
                "is the cause below) and create a new Pool.",
                worker=child.worker,
            )
            broken.__cause__ = exc
            self._ledger.break_pool(broken)

    def _results(
        self,
        child: WorkerProcess,
        entries: list[tuple[int, str, int, float]],
        frames: list[bytearray],
    ) -> None:
        """Deliver a batch of outcomes, in the order the child ran them."""

        def outcomes() -> Iterator[tuple[int, str, list[bytearray], float]]:
            at = 1
            for task_id, tag, count, took in entries:
                yield task_id, tag, frames[at : at + count], took
                at += count

        where = f"{describe(child.worker.index, child.worker.device)} (pid {child.pid})"
        self._settle_outcomes(child, child, outcomes(), where)
        memory, limit = child.memory, self._max_memory
        if memory is not None:
            # For the message if it dies (issue 20); after each answer with a limit.
            memory.sample(child.items, every=0.0 if limit else SAMPLE_EVERY)
            line = memory_line(memory.rss, limit)
            if line is not None:
                self._recycle(child, leave=line)
        self._leave_if_done(child)

    def _reap(self, child: WorkerProcess) -> None:
        """A child ended: settle or requeue what it held, and start a replacement."""
        child.process.join(_JOIN_SLICE)
        with self._lock:
            last = child.life.end()  # first: what it said last recycles nothing
        self._read_last_words(child)
        exitcode = child.process.exitcode
        with self._lock:
            newest = child is self._live.get(child.worker.index)
            if newest:
                del self._live[child.worker.index]
            else:
                self._leaving.remove(child)
        run, running = self._last(child) if last is not WorkerState.DOOMED else (None, False)
        started = run.started if run is not None else 0.0
        culprit = self._ledger.release(child, run)
        child.close()
        crash: WorkerCrashed | None = None
        if run is not None:
            crash = self._crash(child, run, exitcode, running=running, retried=culprit is None)
            if culprit is None:
                logger.warning("steadypool: %s", crash)
                crash = None
        elif last in (WorkerState.STARTING, WorkerState.SETUP) and self.broken is None:
            failures = self._start_failures.get(child.worker.index, 0) + 1
            self._start_failures[child.worker.index] = failures
            if failures >= _START_FAILURES:
                self._ledger.break_pool(
                    BrokenPool(
                        f"worker process {child.worker.index} of pool {self.name!r} died "
                        f"{failures} times while starting, last with "
                        f"{_remote.describe_exit(exitcode)}; the pool cannot run tasks. Likely "
                        f"cause: {_remote.likely_cause(exitcode)}"
                    )
                )
        ledger = self._ledger
        # A recycled child's successor holds its index already (unless none was needed).
        if child.worker.index not in self._live and self._wanted():
            self._spawn(child.worker)
        if (
            crash is not None
            and culprit is not None
            and ledger.settle(culprit, False, crash, child.worker)
        ):
            # Delivered once the replacement exists: whoever the crash wakes finds the
            # pool at full strength (and stats counting the replacement).
            count_failure(child, started, time.monotonic())

    def _crash(
        self, child: WorkerProcess, run: Run, exitcode: int | None, *, running: bool, retried: bool
    ) -> WorkerCrashed:
        """The `WorkerCrashed` of `run`, whose worker died running it (or sending its
        result back, when not `running`)."""
        where = describe(child.worker.index, child.worker.device)
        position = run.position
        item = "a submitted task" if position is None else f"item {position}"
        doing = (
            f"while running {item}"
            if running
            else f"after {item} finished, while its result was on its way back (a large "
            "result and a memory limit?)"
        )
        return WorkerCrashed(
            f"{where} (pid {child.pid}) died with {_remote.describe_exit(exitcode)} "
            f"{doing}; likely cause: {crash_cause(child.memory, exitcode)}. "
            + (
                f"Retrying it (attempt {run.attempts} of {self._ledger.retries + 1}); "
                if retried
                else "The item failed; "
            )
            + "a fresh worker process takes this one's place.",
            exitcode=exitcode,
            worker=child.worker,
        )

    def _read_last_words(self, child: WorkerProcess) -> None:
        """Read the messages a dead child sent before it died (results it finished), so
        that they are not taken for lost.  Bounded: a grandchild holding the socket open
        would otherwise keep it from ever reading EOF."""
        deadline = time.monotonic() + _DRAIN_WAIT
        while child.sock is not None and time.monotonic() < deadline:
            if not select.select([child.sock], [], [], 0)[0]:
                return
            self._receive(child, max(0.01, deadline - time.monotonic()))

    def _stop_children(self) -> None:
        """Ask every child to stop (kill it at once when halted), then kill what has not
        exited in time (manager only); fail what they still held."""
        live = self._children()
        for child in live:
            if self._halted:
                child.kill()
            else:
                child.send([pickle.dumps((wire.STOP,))])
        deadline = time.monotonic() + _STOP_GRACE
        for child in live:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(_STOP_GRACE)
            child.close()
            with self._lock:
                child.life.end()
            # Items still held when the pool gave up on them (halted, or the manager
            # failed) must not leave their owners waiting.
            self._ledger.fail_held(
                child,
                lambda _run: WorkerCrashed(
                    f"the pool {self.name!r} stopped while the item was running"
                ),
            )
        with self._lock:
            self._live.clear()
            self._leaving.clear()
        if self._ledger.queued:  # halted: what has begun and was not run fails
            self._ledger.break_pool(BrokenPool(f"the pool {self.name!r} was stopped"))
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(self._dump_dir)
        _live_backends.discard(self)


def _kill_all_at_exit() -> None:
    """At interpreter exit, kill the children of pools still running (the exit wait gave
    up on them, or was interrupted) before multiprocessing's own exit hook joins them,
    which would wait on their tasks; no child is replaced (issue 17, hole 8); and
    remove their stack-dump folders."""
    for backend in list(_live_backends):
        backend.halt()
        for child in backend._snapshot():
            with contextlib.suppress(Exception):
                child.process.kill()
        backend._manager.join(_STOP_GRACE)
        shutil.rmtree(backend._dump_dir, ignore_errors=True)


# Registered at import, after multiprocessing's own exit hook, so it runs first.
atexit.register(_kill_all_at_exit)

BACKEND = ProcessBackend
