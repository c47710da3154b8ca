"""Ray backend: one Ray actor per worker, on a local instance or a cluster.

Data flow::

    submit() --(_lock)--> an idle actor: actor.run.remote(fn_ref, args, kwargs)
                          else _pending
    Ray completes the call's future --done callback (a Ray thread)--> _finished():
        owner.put(outcome), then the next pending item goes to the same actor
    watchdog --busy()/stack()/fail()--> fail() kills the actor (ray.kill), replaces it

Who owns what: `_lock` guards `_pending`, `_closed`, `_broken`, `_slots` and every
`slot.running`.  Whoever moves a `slot.running` from a run to None owns that run's
outcome: the call's done-callback, or `fail()`.  So every item gets exactly one
outcome, also when an actor dies (its call's future fails: `WorkerCrashed`, retried up
to `retries` times on a fresh actor) or is killed by the watchdog.

What wakes whom: no thread of ours waits on Ray.  Ray completes each call's future;
the callbacks deliver and dispatch.  ``shutdown(wait=True)`` waits on `_idle`
(a Condition notified whenever an actor finishes) in slices.

Ray is imported only when this backend is used.  If no Ray instance is connected, the
first pool starts a local one sized to the machine, and the last pool that used it
shuts it down: steadypool never leaves behind a Ray instance it started.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

import cloudpickle

from .. import _remote
from .._devices import activate
from .._exceptions import BrokenPool, PoolClosed, WorkerCrashed
from .._records import SETUP, Busy, setup_busy
from .._stats import WorkerStats, count_failure, per_worker
from .._worker import Worker, bind, describe
from ._base import Backend, FunctionCache, Run, give_up_on_setup, take_runnable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._records import Task

__all__ = ["BACKEND", "RayBackend"]

logger = logging.getLogger("steadypool")
_JOIN_SLICE = 0.5
_START_DEATHS = 5  # actors of one index dying in a row before setup: no node can host it
_pool_ids = itertools.count()

# The Ray instance steadypool started (if any) and how many pools use it.
_ray_lock = threading.Lock()
_ray_users = 0
_ray_started_here = False


def _connect(address: str | None) -> Any:
    global _ray_users, _ray_started_here
    import ray

    with _ray_lock:
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
                except ConnectionError as exc:
                    raise ConnectionError(
                        f"no Ray cluster at address {address!r}: {exc} (start one with "
                        "`ray start --head`, or give no address for a local Ray instance)"
                    ) from exc
            else:
                ray.init(
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
                _ray_started_here = True
        _ray_users += 1
    return ray


def _disconnect() -> None:
    global _ray_users, _ray_started_here
    import ray

    with _ray_lock:
        _ray_users -= 1
        if _ray_users == 0 and _ray_started_here:
            ray.shutdown()
            _ray_started_here = False


class _Actor:
    """The body of one worker actor (wrapped with ray.remote on first use)."""

    def __init__(self, worker: Worker, setup: bytes | None) -> None:
        self.worker = worker
        self.setup_bytes = setup
        self.ident = 0

    def begin(self) -> tuple[int, str]:
        """Answer as soon as the actor runs: (pid, node id); setup follows."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def setup(self) -> tuple[bool, Any, int, str]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        self.ident = threading.get_ident()  # stack() shows the setup while it runs
        try:
            bind(self.worker)
            activate(self.worker.device)
            if self.setup_bytes is not None:
                self.worker = self.worker.with_state(
                    cloudpickle.loads(self.setup_bytes)(self.worker)
                )
        except BaseException as exc:
            return False, _remote.exception_payload(exc), os.getpid(), node
        return True, None, os.getpid(), node

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> tuple[bool, Any]:
        bind(self.worker)
        self.ident = threading.get_ident()
        try:
            return True, fn(*args) if kwargs is None else fn(*args, **kwargs)
        except BaseException as exc:
            return False, _remote.exception_payload(exc)

    def stack(self) -> str:
        frame = sys._current_frames().get(self.ident)
        if frame is None:
            return ""
        return "".join(traceback.format_stack(frame))


class _Slot:
    """One actor holding a worker index."""

    __slots__ = (
        "actor",
        "begun",
        "busy",
        "failed",
        "items",
        "ready",
        "running",
        "setup_started",
        "waited",
        "where",
        "worker",
    )

    def __init__(self, worker: Worker, actor: Any) -> None:
        self.worker = worker
        self.actor = actor
        self.ready = False
        self.begun = False  # the actor process runs (setup is timed from then)
        self.setup_started: float | None = time.monotonic()  # until setup is done
        self.running: Run | None = None
        self.where = "actor starting"
        self.items = self.failed = 0
        self.busy = self.waited = 0.0


class RayBackend(Backend):
    """Runs tasks on Ray actors (a local instance, or the cluster at `address`)."""

    options = frozenset({"retries", "address"})
    can_kill = True
    replacing = "its Ray actor was killed and a fresh one took its place"

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
        try:
            self._setup = None if setup is None else cloudpickle.dumps(setup)
        except Exception as why:
            raise TypeError(f"setup {setup!r} cannot be sent to Ray actors: {why}") from why
        self._ray = _connect(address)
        self._actor_class = self._ray.remote(concurrency_groups={"control": 1})(_Actor)
        # Re-entrant: a call's done-callback may run at once, in the thread that added it.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._pending: deque[Run] = deque()
        self._closed = False
        self._disconnected = False
        self._broken: BrokenPool | None = None
        self._workers = list(workers)
        self._slots: dict[int, _Slot] = {}
        self._history: list[_Slot] = []
        self._fn_refs: FunctionCache[Any] = FunctionCache(128)
        self._start_deaths: dict[int, int] = {}  # index -> actors that died starting, in a row
        self._setup_kills: dict[int, int] = {}  # index -> setups killed by the watchdog
        with self._lock:
            for worker in self._workers:
                self._start(worker)

    # --- actors ------------------------------------------------------------------------------

    def _start(self, worker: Worker) -> None:
        """Create the actor for `worker` and run its setup (caller holds `_lock`)."""
        # CPU actors reserve no CPU (a pool may have more workers than the cluster has
        # CPUs, e.g. for I/O) and are spread over the nodes; a GPU actor asks for one GPU,
        # which Ray picks and shows it as cuda:0.
        seen: str | None = worker.device
        options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
        if worker.device is not None and worker.device.startswith("cuda"):
            seen, options = "cuda:0", {"num_cpus": 0, "num_gpus": 1}
        actor = self._actor_class.options(name=None, max_concurrency=1, **options).remote(
            Worker(worker.index, seen), self._setup
        )
        slot = _Slot(worker, actor)
        self._slots[worker.index] = slot
        self._history.append(slot)
        actor.begin.remote().future().add_done_callback(
            lambda future, slot=slot: self._begun(slot, future)
        )
        actor.setup.remote().future().add_done_callback(
            lambda future, slot=slot: self._set_up(slot, future)
        )

    def _begun(self, slot: _Slot, future: Any) -> None:
        """The actor runs: its setup is timed (task_timeout) from now, as on the other
        backends; until now it was being scheduled and started (stall reports only)."""
        try:
            pid, node = future.result()
        except Exception:
            return  # it died first: _set_up hears of it too
        with self._lock:
            if slot.setup_started is not None and not slot.begun:
                slot.setup_started = time.monotonic()
                slot.begun = True
                slot.where = f"Ray actor pid {pid} on node {node[:12]}"

    def _set_up(self, slot: _Slot, future: Any) -> None:
        with self._lock:
            current = self._slots.get(slot.worker.index) is slot and slot.setup_started is not None
            slot.setup_started = None
        if not current:
            return  # the watchdog gave up on this setup (fail) and killed the actor
        try:
            ok, error, pid, node = future.result()
        except self._ray.exceptions.RayActorError as exc:
            self._died_starting(slot, exc)
            return
        except Exception as exc:  # the setup call failed without the actor dying
            ok, error, pid, node = False, (exc, "".join(traceback.format_exception(exc))), 0, ""
        if not ok:
            cause, text = error
            broken = BrokenPool(
                f"setup(worker) raised {type(cause).__name__}: {cause} on "
                f"{describe(slot.worker.index, slot.worker.device)} of pool {self.name!r} "
                "(a Ray actor); the pool cannot run tasks. Fix setup (its traceback is the "
                "cause below) and create a new Pool.",
                worker=slot.worker,
            )
            broken.__cause__ = _remote.rebuild_exception(cause, text)
            self._break(broken)
            return
        with self._lock:
            slot.where = f"Ray actor pid {pid} on node {node[:12]}"
            slot.ready = True
            self._start_deaths.pop(slot.worker.index, None)
            self._setup_kills.pop(slot.worker.index, None)
        self._dispatch(slot)

    def _died_starting(self, slot: _Slot, cause: BaseException) -> None:
        """An actor died before its setup finished (its node was lost, it was killed):
        a crash, not a failing setup; start a fresh one, unless this keeps happening."""
        index = slot.worker.index
        with self._lock:
            deaths = self._start_deaths[index] = self._start_deaths.get(index, 0) + 1
            again = deaths < _START_DEATHS and self._broken is None and not self._closed
            if again:
                self._start(slot.worker)
        first = str(cause).splitlines()[0] if str(cause) else ""
        if again:
            logger.warning(
                "steadypool: the Ray actor of %s in pool %r died while starting (%s: %s); "
                "starting a fresh one (likely cause: its node was lost)",
                describe(index, slot.worker.device),
                self.name,
                type(cause).__name__,
                first,
            )
            return
        if self._closed:
            return
        broken = BrokenPool(
            f"the Ray actor of {describe(index, slot.worker.device)} in pool {self.name!r} "
            f"died {deaths} times in a row while starting, last with {type(cause).__name__}: "
            f"{first}; no node of the cluster could host it. Check the cluster (ray status): "
            "nodes lost, or none with the resources this worker asks for.",
            worker=slot.worker,
        )
        broken.__cause__ = cause
        self._break(broken)

    def _dispatch(self, slot: _Slot) -> None:
        """Give `slot` its next pending item, if it is idle."""
        with self._lock:
            if (
                not slot.ready
                or slot.running is not None
                or self._slots.get(slot.worker.index) is not slot
            ):
                return
            run = take_runnable(self._pending)
            if run is None:
                self._idle.notify_all()
                return
            run.started = time.monotonic()
            slot.running = run
        slot.waited += run.started - run.task[5]
        _key, fn, args, kwargs, _owner, _queued = run.task
        ref = slot.actor.run.remote(self._fn_ref(fn), args, kwargs)
        ref.future().add_done_callback(
            lambda future, slot=slot, run=run: self._finished(slot, run, future)
        )

    def _fn_ref(self, fn: Callable[..., Any]) -> Any:
        """The function in Ray's object store, put once while the function lives."""
        ref = self._fn_refs.get(fn)
        if ref is None:
            ref = self._ray.put(fn)
            self._fn_refs.put(fn, ref)
        return ref

    def _finished(self, slot: _Slot, run: Run, future: Any) -> None:
        finished = time.monotonic()
        with self._lock:
            if slot.running is not run:
                return  # claimed by the watchdog: its outcome is delivered
            slot.running = None
        key, owner = run.task[0], run.task[4]
        try:
            ok, value = future.result()
        except Exception as exc:
            self._crashed(slot, run, exc)
            return
        slot.busy += finished - run.started
        slot.items += 1
        self.last_done = finished
        if ok:
            owner.put((key, True, value, slot.worker))
        else:
            slot.failed += 1
            remote, text = value
            owner.put((key, False, _remote.rebuild_exception(remote, text), slot.worker))
        self._dispatch(slot)

    def _crashed(self, slot: _Slot, run: Run, cause: BaseException) -> None:
        ray = self._ray
        if not isinstance(cause, ray.exceptions.RayActorError):
            # The call failed without the actor dying: its result could not travel back.
            count_failure(slot, run.started, time.monotonic())
            run.task[4].put(
                (
                    run.task[0],
                    False,
                    _remote.rebuild_exception(
                        RuntimeError(
                            f"the result could not be sent back from the Ray actor: "
                            f"{type(cause).__name__}: {cause}"
                        ),
                        "",
                    ),
                    slot.worker,
                )
            )
            self._dispatch(slot)
            return
        with self._lock:
            requeue = run.attempts <= self._retries
            if requeue:
                run.attempts += 1
                self._pending.appendleft(run)
            replace = self._slots.get(slot.worker.index) is slot and self._broken is None
            if replace:
                self._start(slot.worker)
        item = run.task[4].position(run.task[0])
        crash = WorkerCrashed(
            f"{describe(slot.worker.index, slot.worker.device)} ({slot.where}) died while "
            f"running {'a submitted task' if item is None else f'item {item}'}: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}; "
            "likely cause: the actor was killed (ray.kill, the OOM killer) or its node was "
            "lost. "
            + ("Retrying it; " if requeue else "The item failed; ")
            + "a fresh actor takes its place.",
            worker=slot.worker,
        )
        if requeue:
            logger.warning("steadypool: %s", crash)
        else:
            count_failure(slot, run.started, time.monotonic())
            run.task[4].put((run.task[0], False, crash, slot.worker))

    def _break(self, broken: BrokenPool) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = broken
            dropped = list(self._pending)
            self._pending.clear()
            self._idle.notify_all()
        for run in dropped:
            run.task[4].put((run.task[0], False, self._broken, None))

    # --- the Backend interface -------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._disconnected

    @property
    def broken(self) -> BrokenPool | None:
        return self._broken

    def prepare(self, fn: Callable[..., Any]) -> None:
        try:
            cloudpickle.dumps(fn, protocol=5)
        except Exception as why:
            raise TypeError(
                f"the function {fn!r} cannot be sent to Ray actors: it cannot be pickled "
                f"({type(why).__name__}: {why})"
            ) from why

    def submit(self, task: Task) -> None:
        run = Run(task)
        with self._lock:
            if self._closed:
                raise PoolClosed("cannot submit to a steadypool Pool after shutdown()")
            if self._broken is not None:
                raise self._broken
            self._pending.append(run)
            idle = [s for s in self._slots.values() if s.ready and s.running is None]
        for slot in idle[:1]:
            self._dispatch(slot)

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        with self._lock:
            self._closed = True
            dropped = []
            if cancel:
                # What idle or starting workers take next still runs (Backend.shutdown).
                busy = sum(1 for s in self._slots.values() if s.running is not None)
                free = max(0, len(self._workers) - busy)
                while len(self._pending) > free:
                    dropped.append(self._pending.pop())
                dropped.reverse()
        for run in dropped:
            run.task[4].drop(run.task[0])
        if wait:
            self._stop()
        else:
            threading.Thread(
                target=self._stop, name=f"steadypool-{self.name}-stop", daemon=True
            ).start()

    def _stop(self) -> None:
        """Wait until nothing runs or is queued, then kill the actors (once)."""
        with self._lock:
            # Like the other backends, every worker finishes its setup before it stops.
            while self._broken is None and (
                self._pending
                or any(s.running is not None or not s.ready for s in self._slots.values())
            ):
                self._idle.wait(_JOIN_SLICE)  # notified whenever an actor goes idle
            if self._disconnected:
                return
            self._disconnected = True
            slots = list(self._slots.values())
        for slot in slots:
            with contextlib.suppress(Exception):
                self._ray.kill(slot.actor, no_restart=True)
        _disconnect()

    def busy(self) -> list[Busy]:
        found = []
        for slot in list(self._slots.values()):
            started = slot.setup_started
            if started is not None:
                found.append(
                    setup_busy(
                        id(slot), slot.worker, started, slot.where, (slot, SETUP), timed=slot.begun
                    )
                )
                continue
            run = slot.running
            if run is not None:
                found.append(
                    Busy(
                        run.task_id,
                        slot.worker,
                        run.task[0],
                        run.task[4],
                        run.started,
                        slot.where,
                        (slot, run),
                    )
                )
        return found

    def stack(self, busy: Busy) -> str:
        slot, run = busy.handle
        current = SETUP if slot.setup_started is not None else slot.running
        if current is not run:
            return ""
        try:
            ref = slot.actor.stack.options(concurrency_group="control").remote()
            text: str = self._ray.get(ref, timeout=2.0)
        except Exception as exc:
            return f"(no stack from the Ray actor: {type(exc).__name__})"
        if not text and run is SETUP:
            return (
                "(no stack yet: the Ray actor has not started running setup; it is still "
                "being scheduled or started, e.g. waiting for a node with the resources "
                "it asks for)\n"
            )
        return text

    def fail(self, busy: Busy, error: BaseException, *, retry: bool = False) -> bool:
        slot, run = busy.handle
        if run is SETUP:
            return self._fail_setup(busy, slot, error, retry=retry)
        with self._lock:
            if slot.running is not run:
                return False
            slot.running = None
            requeue = retry and run.attempts <= self._retries
            if requeue:
                run.attempts += 1
                self._pending.appendleft(run)
            self._start(slot.worker)  # the replacement takes the index at once
        with contextlib.suppress(Exception):
            self._ray.kill(slot.actor, no_restart=True)
        if not requeue:
            count_failure(slot, run.started, time.monotonic())
            run.task[4].put((run.task[0], False, error, slot.worker))
        return True

    def _fail_setup(self, busy: Busy, slot: _Slot, error: BaseException, *, retry: bool) -> bool:
        """The watchdog gives up on an actor's setup: kill it; a fresh actor runs setup
        again while `retries` allow, else the pool breaks."""
        index = slot.worker.index
        with self._lock:
            if slot.setup_started is None or self._slots.get(index) is not slot:
                return False  # it finished (or died) first
            slot.setup_started = None
            kills = self._setup_kills[index] = self._setup_kills.get(index, 0) + 1
            retries = self._retries if retry else 0
            broken = give_up_on_setup(
                self.name, busy, error, attempt=kills, retries=retries, fresh="Ray actor"
            )
            if broken is None:
                self._start(slot.worker)
        with contextlib.suppress(Exception):
            self._ray.kill(slot.actor, no_restart=True)
        if broken is not None:
            self._break(broken)
        return True

    def counts(self) -> tuple[int, int]:
        return sum(s.items for s in self._history), len(self._pending)

    def worker_stats(self) -> tuple[tuple[WorkerStats, ...], int, int]:
        history = list(self._history)
        replaced = max(0, len(history) - len(self._workers))
        return per_worker(self._workers, history), 0, replaced


BACKEND = RayBackend
