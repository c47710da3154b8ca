"""Ray actors' lives: started (and scheduled on a node), set up, replaced, given up on.

The Ray backend's actors go through `Life`'s states: STARTING while Ray schedules and
starts the actor (only stall reports watch it: it may wait for a node), SETUP once it
answers `begin` (task_timeout applies from then, as on the other backends), READY once
`setup(worker)` returned.  An actor that dies before it is ready is a crash, not a
failing setup: a fresh one takes its place, unless this keeps happening (no node can
host it).  A setup that raises breaks the pool; one the watchdog gives up on is killed
and started again while `retries` allow.  If Ray itself is shut down under an open pool
(`ray.shutdown()`), the pool breaks rather than let a call start a new Ray instance
from one of our threads (issue 17, hole 10).

`RayActors` is the Ray backend's base: it holds the slots (one actor per worker index)
and these transitions; `RayBackend` adds items (dispatch, drains, crashes).  `_lock`
(re-entrant: a call's done-callback may run at once, in the thread that added it)
guards `_slots`, `_leaving`, `_history`, `_start_deaths`, `_setup_kills` and every
slot's fields.

Recycling: a recycled actor moves to `_leaving` as its successor is started into
`_slots`.  It is RETIRING (still taking items) once its items left would take about a
start-up (`_successor_due`) or its memory passed 90% of ``max_worker_memory``; LEAVING
(taking no more) once its successor is ready, it was given its last item, or its
memory passed the line (the actor then stops its batch there).  A LEAVING actor whose
batch is done is told to exit; its end is no crash and is followed by no start.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .._exceptions import BrokenPool
from .._worker import Worker, describe
from . import _wire as wire
from ._base import give_up_on_setup
from ._life import Life, WorkerState
from ._queued import QueuedBackend
from ._ray_session import first_line

if TYPE_CHECKING:
    import threading

    from .._records import Busy
    from ._ledger import Run

__all__ = ["RayActors", "Slot"]

logger = logging.getLogger("steadypool")
_START_DEATHS = 5  # actors of one index dying in a row before setup: no node can host it


class Slot:
    """One actor holding a worker index (fields under the backend's `_lock`)."""

    __slots__ = (
        "actor",
        "batch",
        "busy",
        "current",
        "draining",
        "drains",
        "failed",
        "given",
        "items",
        "life",
        "next_drain",
        "recycled",
        "rss",
        "waited",
        "where",
        "worker",
    )

    def __init__(self, worker: Worker, actor: Any) -> None:
        self.worker = worker
        self.actor = actor
        self.life = Life()
        # The runs of the actor's call in flight, in order ([] while idle).
        self.batch: list[Run] = []
        # The item the actor last said it runs, with its start here.
        self.current: tuple[int, float] | None = None
        self.draining = 0  # drain calls in flight
        self.drains = 0  # drains of this batch so far (they back off)
        self.next_drain = 0.0  # when the poller drains this batch next
        self.where = "actor starting"
        self.items = self.failed = 0
        self.given = 0  # items sent to it (max_tasks_per_worker counts these)
        self.recycled = False  # recycled: a successor took its index
        self.rss: tuple[int, int] | None = None  # (resident bytes, items) after a batch
        self.busy = self.waited = 0.0

    @property
    def begun(self) -> bool:
        """The actor process runs (it is past STARTING)."""
        return self.life.state is not WorkerState.STARTING


class RayActors(QueuedBackend):
    """The actors of a Ray pool and their lives (see the module docstring)."""

    _ray: Any
    _actor_class: Any
    _lock: threading.RLock
    _idle: threading.Condition
    _slots: dict[int, Slot]  # worker index -> its newest actor
    _leaving: list[Slot]  # recycled actors finishing their batch
    _max_memory: int | None
    _max_tasks: int | None
    _workers: list[Worker]
    _start_deaths: dict[int, int]  # index -> actors that died starting, in a row
    _poke: threading.Event

    def _dispatch(self, slot: Slot) -> None:
        raise NotImplementedError  # RayBackend gives a ready actor its first items

    def _start(self, worker: Worker) -> None:
        """Create the actor for `worker` and run its setup (caller holds `_lock`)."""
        if not self._ray_up():
            return  # the poller breaks the pool; the dead slot keeps the index till then
        # CPU actors reserve no CPU (a pool may have more workers than the cluster has
        # CPUs, e.g. for I/O) and are spread over the nodes; a GPU actor asks for one GPU,
        # which Ray picks and shows it as cuda:0.
        seen: str | None = worker.device
        options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
        if worker.device is not None and worker.device.startswith("cuda"):
            seen, options = "cuda:0", {"num_cpus": 0, "num_gpus": 1}
        actor = self._actor_class.options(name=None, max_concurrency=1, **options).remote(
            Worker(worker.index, seen), self._setup, self._max_memory
        )
        slot = Slot(worker, actor)
        self._slots[worker.index] = slot
        self._history.append(slot)
        actor.begin.remote().future().add_done_callback(
            lambda future, slot=slot: self._begun(slot, future)
        )
        actor.setup.remote().future().add_done_callback(
            lambda future, slot=slot: self._set_up(slot, future)
        )

    def _current(self, slot: Slot) -> bool:
        """Whether `slot` still holds its index (`_lock` held)."""
        return self._slots.get(slot.worker.index) is slot

    def _ours(self, slot: Slot) -> bool:
        """Whether `slot` holds its index or is recycled and finishing (`_lock` held)."""
        return self._current(slot) or slot in self._leaving

    def _all(self) -> list[Slot]:
        """Every actor alive: the newest of each index, and those leaving (`_lock` held)."""
        return [*self._slots.values(), *self._leaving]

    def _replace(self, slot: Slot) -> None:
        """`slot`'s actor ended (or is being killed): a fresh one takes its index if it
        held it; a recycled one just goes (its successor holds the index, or none was
        needed then: `_staff` starts one once items wait) (`_lock` held)."""
        if slot in self._leaving:
            self._leaving.remove(slot)
        if self._current(slot):
            self._start(slot.worker)

    def _staff(self) -> None:
        """Start an actor for each index that has none (its recycled actor got no
        successor: nothing was queued then) while items are queued (`_lock` held)."""
        if not self._ledger.queued or self._ledger.broken is not None:
            return
        for worker in self._workers:
            if worker.index not in self._slots:
                self._start(worker)

    # --- recycling (max_tasks_per_worker, max_worker_memory) -----------------------------

    def _recycle(self, slot: Slot, *, leave: bool) -> None:
        """Recycle `slot`: its successor starts now and takes its index; it leaves once
        its batch is done (`leave`: it was given its last items) or goes on taking items
        until the successor is ready (RETIRING: its memory crossed the line)."""
        with self._lock:
            newest = self._current(slot)
            if not (slot.life.leave() if leave else slot.life.retire()):
                return  # not READY (nor RETIRING, to leave): killed, ended, recycled
            slot.recycled = True
            if not newest:
                return
            self._leaving.append(slot)
            if self._more_work():
                self._start(slot.worker)  # takes the index: `slot` is not current now
            else:  # nothing more to take: no successor, and `slot` leaves now
                del self._slots[slot.worker.index]
                slot.life.leave()
        self._leave_if_done(slot)

    def _leave_if_done(self, slot: Slot) -> None:
        """A LEAVING actor whose batch is done exits: asked to, by a call queued behind
        anything it still runs (ray.kill would block here, often a Ray callback thread)."""
        with self._lock:
            if slot.life.state is not WorkerState.LEAVING or slot.batch:
                return
            slot.life.end()
            self._leaving.remove(slot)
            self._idle.notify_all()
        if self._ray_up():
            with contextlib.suppress(Exception):
                slot.actor.__ray_terminate__.remote()

    def _begun(self, slot: Slot, future: Any) -> None:
        """The actor runs: its setup is timed (task_timeout) from now, as on the other
        backends; until now it was being scheduled and started (stall reports only)."""
        try:
            pid, node = future.result()
        except Exception:
            return  # it died first: _set_up hears of it too
        with self._lock:
            if slot.life.setup_began():
                slot.where = f"Ray actor pid {pid} on node {node[:12]}"

    def _set_up(self, slot: Slot, future: Any) -> None:
        with self._lock:
            if not self._current(slot) or slot.life.state not in (
                WorkerState.STARTING,
                WorkerState.SETUP,
            ):
                return  # the watchdog gave up on this setup (fail) and killed the actor
        try:
            ok, error, pid, node = future.result()
        except self._ray.exceptions.RayActorError as exc:
            self._died_starting(slot, exc)
            return
        except Exception as exc:  # the setup call failed without the actor dying
            self._break_on_setup(slot, RuntimeError(first_line(exc)))
            return
        if not ok:
            _ok, cause = wire.load_outcome(wire.ERR, error, slot.where)
            self._break_on_setup(slot, cause)
            return
        with self._lock:
            slot.where = f"Ray actor pid {pid} on node {node[:12]}"
            if not slot.life.ready():
                return  # the watchdog gave up on this setup meanwhile (fail)
            self._started(slot.life)
            self._start_deaths.pop(slot.worker.index, None)
            self._setup_kills.pop(slot.worker.index, None)
        self._succeeded(slot)
        self._dispatch(slot)

    def _break_on_setup(self, slot: Slot, cause: BaseException) -> None:
        broken = BrokenPool(
            f"setup(worker) raised {type(cause).__name__}: {cause} on "
            f"{describe(slot.worker.index, slot.worker.device)} of pool {self.name!r} "
            "(a Ray actor); the pool cannot run tasks. Fix setup (its traceback is the "
            "cause below) and create a new Pool.",
            worker=slot.worker,
        )
        broken.__cause__ = cause
        self._break(broken)

    def _died_starting(self, slot: Slot, cause: BaseException) -> None:
        """An actor died before its setup finished (its node was lost, it was killed):
        a crash, not a failing setup; start a fresh one, unless this keeps happening."""
        index = slot.worker.index
        with self._lock:
            slot.life.end()
            deaths = self._start_deaths[index] = self._start_deaths.get(index, 0) + 1
            wanted = self._more_work()
            again = deaths < _START_DEATHS and wanted and self._ray_up()
            if again:
                self._start(slot.worker)
            elif self._current(slot):  # no actor for the index: nothing waits on this one
                del self._slots[index]
                self._idle.notify_all()
        if again:
            logger.warning(
                "steadypool: the Ray actor of %s in pool %r died while starting (%s); "
                "starting a fresh one (likely cause: its node was lost)",
                describe(index, slot.worker.device),
                self.name,
                first_line(cause),
            )
            return
        if not wanted or not self._ray_up():
            return  # shut down or broken, or Ray was (the poller breaks the pool)
        broken = BrokenPool(
            f"the Ray actor of {describe(index, slot.worker.device)} in pool {self.name!r} "
            f"died {deaths} times in a row while starting, last with {first_line(cause)}; "
            "no node of the cluster could host it. Check the cluster (ray status): "
            "nodes lost, or none with the resources this worker asks for.",
            worker=slot.worker,
        )
        broken.__cause__ = cause
        self._break(broken)

    def _ray_up(self) -> bool:
        """Whether Ray is still up; looked at right before every call this backend makes.

        A Ray call made after ``ray.shutdown()`` starts a new Ray instance (Ray's
        auto-init), here from a callback thread holding `_lock` while the shutdown waits
        for that thread: a deadlock (hole 10).  ``ray.shutdown()`` marks the driver
        disconnected before it fails the calls in flight, so a callback that the shutdown
        caused always sees Ray down here.  The one window left is a shutdown from another
        thread between this look and the call.  When Ray is down, the poller is woken:
        it alone breaks the pool (`_ray_gone`), outside any of our locks."""
        if self._ray.is_initialized():
            return True
        self._poke.set()
        return False

    def _kill(self, actor: Any) -> None:
        """Kill `actor`, if Ray is still up (an actor that is gone needs no kill)."""
        if self._ray_up():
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)

    def _ray_gone(self) -> bool:
        """Whether Ray was shut down under this pool; if so, break the pool (once) and
        fail what the actors held: no call may start a new Ray instance."""
        if self._ray.is_initialized():
            return False
        broken = BrokenPool(
            f"Ray was shut down (ray.shutdown()) while pool {self.name!r} was open; its "
            "actors are gone and the pool cannot run tasks. Shut the pool down before Ray."
        )
        self._give_up(broken, broken, kill=False)  # its actors are gone with it
        return True

    def _give_up(self, error: BaseException, broken: BrokenPool, *, kill: bool) -> None:
        """Every actor is done for (halted, or Ray is gone): it takes nothing more, what
        it held fails with `error`, it is killed if `kill`; the pool breaks with `broken`."""
        with self._lock:
            slots = self._all()
            for slot in slots:
                if kill:
                    slot.life.doom()
                else:
                    slot.life.end()
                slot.batch = []
            self._idle.notify_all()
        for slot in slots:
            self._ledger.fail_held(slot, lambda _run: error)
            if kill:
                self._kill(slot.actor)
        self._break(broken)

    def _break(self, broken: BrokenPool) -> None:
        self._ledger.break_pool(broken)
        with self._lock:
            self._idle.notify_all()

    def _fail_setup(self, busy: Busy, slot: Slot, error: BaseException, *, retry: bool) -> bool:
        """The watchdog gives up on an actor's setup: kill it; a fresh actor runs setup
        again while `retries` allow, else the pool breaks."""
        index = slot.worker.index
        with self._lock:
            if not self._current(slot) or slot.life.state not in (
                WorkerState.STARTING,
                WorkerState.SETUP,
            ):
                return False  # it finished (or died) first
            slot.life.doom()
            kills = self._setup_kills[index] = self._setup_kills.get(index, 0) + 1
            retries = self._ledger.retries if retry else 0
            broken = give_up_on_setup(
                self.name, busy, error, attempt=kills, retries=retries, fresh="Ray actor"
            )
            if broken is None:
                self._start(slot.worker)
        self._kill(slot.actor)
        if broken is not None:
            self._break(broken)
        return True
