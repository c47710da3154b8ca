"""Ray backend: one Ray actor per worker, on a local instance or a cluster.

Data flow::

    submit() --pickle the arguments now (errors are that item's outcome)--> Ledger
    an idle actor gets a batch of the next items (ledger.take):
        actor.run_batch.remote(fn_ref, [(task id, argument frames), ...])
    Ray completes the call's future --done callback (a Ray thread)--> _finished():
        ledger.settle(run, outcome) per item, then the next batch goes to the same actor
    poller --drain() of a long batch--> _drained(): ledger.settle per finished item
    watchdog --busy()/stack()/fail()--> fail() kills the actor (ray.kill), replaces it

Batches: one call per actor at a time, of one item while items take BATCH_BELOW or
more, else of as many (with the same function) as take BATCH_TIME (at most
BATCH_MAX), so Ray's ~1 ms per call is paid once per batch.  Each item keeps its own
outcome, error and position.  A batch still running after DRAIN_AFTER is *drained*
by the poller thread, then again at doubling intervals (at most DRAIN_MAX apart): a
control call, run by the actor beside the batch, hands over the outcomes finished so
far and says which item runs and since when.  So a result never waits long for the
rest of its batch, and timeouts and stall reports name one item; `fail()` drains once
more before it kills, to be sure of the item.  A batch whose actor dies is run again
one item per call, so the crash names its own item.

Who owns what: the `Ledger` owns every item (queue, what each actor holds, the
exactly-once `settle`, retries, cancel, counts): whichever of the batch's callback, a
drain's, `fail()` or the crash handler settles an item first delivers it, and the
others find it settled.  `_lock` guards `_slots`, `_history`, every `slot.life`,
`slot.batch`, `slot.current` and the drain fields; it is taken before the ledger's lock,
never after.  Nothing arriving from Ray can fail to unpickle as a whole: arguments and
outcomes travel as steadypool's own frames (`_actor.py`).

What wakes whom: no thread of ours waits on Ray.  Ray completes each call's future;
the callbacks deliver and dispatch.  ``shutdown(wait=True)`` waits on `_idle` (a
Condition on `_lock`, notified whenever an actor goes idle or a drain returns) in
slices.  The poller sleeps on `_poke` (set when a batch is sent, a drain returns, and at
the end) until the next drain is due, and at most ALIVE_CHECK (a Ray shut down under the
pool completes no future: `_ray_actors`).  Actors' lives are in `_ray_actors.py`, the
Ray instance's in `_ray_session.py`, the actor's own code in `_actor.py`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._exceptions import BrokenPool, WorkerCrashed
from .._oom import memory_line, size_text
from .._records import SETUP, Busy, setup_busy
from .._stats import count_failure
from .._worker import describe
from ._actor import Actor, for_ray
from ._base import FunctionCache
from ._ledger import Run, ahead
from ._life import WorkerState
from ._ray_actors import RayActors, Slot
from ._ray_session import connect, disconnect, first_line

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._records import Task
    from ._base import BackendOptions

__all__ = ["BACKEND", "RayBackend"]

logger = logging.getLogger("steadypool")
_JOIN_SLICE = 0.5
_START_DEATHS = 5  # actors of one index dying in a row before setup: no node can host it
BATCH_BELOW = 0.005  # seconds: items shorter than this on average go in batches
BATCH_TIME = 0.005  # seconds of work per batch
BATCH_MAX = 256  # items per batch, at most
DRAIN_AFTER = 0.01  # seconds a batch runs before its first drain
DRAIN_MAX = 1.0  # seconds between drains of a long batch, at most
_DRAIN_WAIT = 2.0  # seconds fail() waits for a drain's answer
ALIVE_CHECK = 1.0  # seconds between the poller's looks at whether Ray is still there


class RayBackend(RayActors):
    """Runs tasks on Ray actors (a local instance, or the cluster at `address`)."""

    options = frozenset({"retries", "address", "max_tasks_per_worker", "max_worker_memory"})
    destination = "a Ray actor"
    replacing = "its Ray actor was killed and a fresh one took its place"

    def _open(self, options: BackendOptions) -> None:
        self._ray = connect(options.address)
        self._actor_class = self._ray.remote(concurrency_groups={"control": 1})(Actor)
        # Re-entrant: a call's done-callback may run at once, in the thread that added it.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._disconnected = False
        self._slots: dict[int, Slot] = {}
        self._leaving: list[Slot] = []
        self._max_tasks = options.max_tasks
        self._max_memory = options.max_memory
        self._fn_refs: FunctionCache[Any] = FunctionCache(128)
        self._start_deaths: dict[int, int] = {}  # index -> actors that died starting, in a row
        self._poke = threading.Event()
        self._poller = threading.Thread(
            target=self._poll, name=f"steadypool-{self.name}-drain", daemon=True
        )
        with self._lock:
            for worker in self._workers:
                self._start(worker)
        self._poller.start()

    # --- actors ------------------------------------------------------------------------------

    # --- items -----------------------------------------------------------------------------

    def _dispatch(self, slot: Slot) -> None:
        """Give `slot` its next batch of pending items, if it is idle."""
        with self._lock:
            if not slot.life.takes_items or slot.batch or not self._ours(slot):
                return
            count = ahead(self._task_time, below=BATCH_BELOW, budget=BATCH_TIME, most=BATCH_MAX)
            if self._max_tasks is not None:
                count = min(count, self._max_tasks - slot.given)
            batch = self._ledger.take(slot, count, same_fn=True)
            if not batch:
                self._idle.notify_all()
                return
            now = time.monotonic()
            slot.batch, slot.current = batch, None
            slot.drains, slot.next_drain = 0, now + DRAIN_AFTER
            slot.given += len(batch)
            if self._max_tasks is not None and slot.given >= self._max_tasks:
                self._recycle(slot, leave=True)  # given its last items; it leaves after them
            elif self._successor_due(slot):
                self._recycle(slot, leave=False)
        items = []
        for run in batch:
            run.started = now
            slot.waited += now - run.queued_at
            items.append((run.task_id, run.wire))
        try:
            if not self._ray_up():
                raise RuntimeError("Ray was shut down")  # _not_sent breaks the pool
            ref = slot.actor.run_batch.remote(self._fn_ref(batch[0].fn), items)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the call could not be made: the batch's outcome
            del items
            self._not_sent(slot, batch, exc)
            return
        del items
        ref.future().add_done_callback(
            lambda future, slot=slot, batch=batch: self._finished(slot, batch, future)
        )
        if len(batch) > 1:
            self._poke.set()

    def _not_sent(self, slot: Slot, batch: list[Run], cause: BaseException) -> None:
        """A call that Ray refused to make: each item goes alone, and one that cannot
        go alone either fails with why."""
        with self._lock:
            if slot.batch is batch:
                slot.batch = []
        if self._ray_gone():
            return
        if len(batch) > 1:
            self._ledger.requeue(batch, solo=True)
            self._requeued()
        else:
            error = RuntimeError(f"the item could not be sent to a Ray actor: {first_line(cause)}")
            self._ledger.settle(batch[0], False, error, None)
        self._dispatch(slot)
        self._leave_if_done(slot)

    def _fn_ref(self, fn: Callable[..., Any]) -> Any:
        """The function in Ray's object store, put once while the function lives."""
        ref = self._fn_refs.get(fn)
        if ref is None:
            ref = self._ray.put(fn)
            self._fn_refs.put(fn, ref)
        return ref

    def _finished(self, slot: Slot, batch: list[Run], future: Any) -> None:
        with self._lock:
            if slot.batch is not batch:
                return  # claimed by the watchdog: its outcomes are delivered
            slot.batch, slot.current = [], None
        try:
            try:
                outcomes, unrun, resident = future.result()
            except Exception as exc:
                # A call failed by ray.shutdown() is no crash of its actor: the pool breaks.
                if not self._ray_gone():
                    self._crashed(slot, exc)
                return
            self._deliver(slot, outcomes)
            del outcomes
            if resident is not None:
                slot.rss = (resident, slot.items)  # for the message if it dies
            line = memory_line(resident, self._max_memory)
            if line is not None:
                self._recycle(slot, leave=line)
            if unrun:  # it stopped past max_worker_memory: what it did not start goes back
                self._ledger.requeue([r for r in batch if r.task_id in set(unrun)], solo=False)
                self._requeued()
            self._dispatch(slot)
        finally:
            self._leave_if_done(slot)  # a recycled actor whose batch ended, however

    def _deliver(self, slot: Slot, outcomes: list[tuple[int, str, list[Any], float]]) -> None:
        """Settle the items an actor reported (those nobody settled yet)."""
        self._settle_outcomes(slot, slot, outcomes, slot.where)

    def _poll(self) -> None:
        """Drain the batches that run long (see the module docstring); ends at _stop."""
        while True:
            if self._ray_gone():
                return
            with self._lock:
                if self._disconnected:
                    return
                now = time.monotonic()
                due = []
                for slot in self._all():
                    # A slot being drained is looked at again when its drain returns.
                    if len(slot.batch) > 1 and not slot.draining and now >= slot.next_drain:
                        slot.drains += 1
                        slot.next_drain = now + min(DRAIN_MAX, DRAIN_AFTER * 2**slot.drains)
                        due.append((slot, slot.batch))
                wake = min(
                    (s.next_drain for s in self._all() if len(s.batch) > 1 and not s.draining),
                    default=None,
                )
            for slot, batch in due:
                self._drain(slot, batch)
            # Wake-up path: the next drain due, a batch sent or a drain returned
            # (`_poke`), or _stop; and every ALIVE_CHECK, to notice a Ray shut down
            # under the pool (its calls' futures are then never completed).
            self._poke.wait(min(ALIVE_CHECK, max(0.0, (wake or now + ALIVE_CHECK) - now)))
            self._poke.clear()

    def _drain(self, slot: Slot, batch: list[Run], done: threading.Event | None = None) -> None:
        """Ask the actor of `slot` for what `batch` has finished and what runs now; the
        answer is handled by `_drained` (then `done` is set)."""
        with self._lock:
            slot.draining += 1
        try:
            if not self._ray_up():
                raise RuntimeError("Ray was shut down")
            ref = slot.actor.drain.options(concurrency_group="control").remote()
        except Exception:
            with self._lock:
                slot.draining -= 1
            if done is not None:
                done.set()
            return
        ref.future().add_done_callback(lambda future: self._drained(slot, batch, future, done))

    def _drained(
        self, slot: Slot, batch: list[Run], future: Any, done: threading.Event | None
    ) -> None:
        try:
            try:
                outcomes, current = future.result()
            except Exception:
                return  # the actor died: the batch's call fails too (_crashed)
            with self._lock:
                if slot.batch is batch:
                    slot.current = (
                        None if current is None else (current[0], time.monotonic() - current[1])
                    )
            self._deliver(slot, outcomes)
        finally:
            with self._lock:
                slot.draining -= 1
                self._idle.notify_all()
            self._poke.set()  # the poller schedules this batch's next drain
            if done is not None:
                done.set()

    def _crashed(self, slot: Slot, cause: BaseException) -> None:
        """The actor's call failed: its actor died (or the call broke in Ray)."""
        actor_died = isinstance(cause, self._ray.exceptions.RayActorError)
        held = self._ledger.held(slot)
        if actor_died:
            with self._lock:
                slot.life.end()
                if self._ledger.broken is None:
                    self._replace(slot)
                elif slot in self._leaving:
                    self._leaving.remove(slot)
        if not held:
            if not actor_died:
                self._dispatch(slot)
                self._leave_if_done(slot)
            return
        if len(held) > 1:
            # Which item failed is not known: each goes again in a call of its own, so
            # the failure names its item (attempts unchanged: none of them failed yet).
            logger.warning(
                "steadypool: a batch of %d items on %s (%s) failed (%s); running them "
                "again one per call to find the item",
                len(held),
                describe(slot.worker.index, slot.worker.device),
                slot.where,
                first_line(cause),
            )
            self._ledger.requeue(held, solo=True)
            self._requeued()
            return
        (run,) = held
        started = run.started
        if not actor_died:
            error = RuntimeError(
                f"the Ray call running the item failed without its actor dying: {first_line(cause)}"
            )
            if self._ledger.settle(run, False, error, slot.worker):
                count_failure(slot, started, time.monotonic())
            self._dispatch(slot)
            self._leave_if_done(slot)
            return
        culprit = self._ledger.release(slot, run)
        position = run.position
        crash = WorkerCrashed(
            f"{describe(slot.worker.index, slot.worker.device)} ({slot.where}) died while "
            f"running {'a submitted task' if position is None else f'item {position}'}: "
            f"{first_line(cause)}; likely cause: the actor was killed (ray.kill, the OOM "
            "killer) or its node was lost"
            + (
                ""
                if slot.rss is None
                else f" (its resident memory was {size_text(slot.rss[0])} after its last "
                f"batch, {slot.rss[1]} items in; max_worker_memory recycles an actor that "
                "grows before it is killed)"
            )
            + ". "
            + ("Retrying it; " if culprit is None else "The item failed; ")
            + "a fresh actor takes its place.",
            worker=slot.worker,
        )
        if culprit is None:
            logger.warning("steadypool: %s", crash)
            self._requeued()
        elif self._ledger.settle(culprit, False, crash, slot.worker):
            count_failure(slot, started, time.monotonic())

    def _requeued(self) -> None:
        """Items went back to the queue: an index left without an actor (its recycled
        one had no successor) gets one, and idle actors take them."""
        with self._lock:
            self._staff()
        self._dispatch_idle()

    def _dispatch_idle(self, *, first: bool = False) -> None:
        """Give idle actors their next batches (with `first`, only one: a submit)."""
        with self._lock:
            idle = [s for s in self._all() if s.life.takes_items and not s.batch]
        for slot in idle[:1] if first else idle:
            self._dispatch(slot)

    # --- the Backend interface -------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._disconnected

    def prepare(self, fn: Callable[..., Any]) -> None:
        try:
            cloudpickle.dumps(fn, protocol=5)
        except Exception as why:
            raise TypeError(
                f"the function {fn!r} cannot be sent to Ray actors: it cannot be pickled "
                f"({type(why).__name__}: {why})"
            ) from why

    def submit(self, task: Task) -> None:
        run = self._run_for(task)
        if run is not None:
            run.wire = for_ray(run.wire)
            self._ledger.add(run)
            self._dispatch_idle()

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        self._ledger.close()
        if cancel:
            with self._lock:
                self._cancel(sum(1 for s in self._all() if s.batch))
        if wait:
            self._stop()
        else:
            threading.Thread(
                target=self._stop, name=f"steadypool-{self.name}-stop", daemon=True
            ).start()

    def halt(self) -> None:
        """Stop now: kill every actor; what they ran fails, nothing more starts."""
        self._ledger.close()
        self._ledger.cancel(0)
        self._give_up(
            WorkerCrashed(f"the pool {self.name!r} was stopped while the item was running"),
            BrokenPool(f"the pool {self.name!r} was stopped"),
            kill=True,
        )

    def _stop(self) -> None:
        """Wait until nothing runs or is queued, then kill the actors (once)."""
        # Like the other backends, every worker finishes its setup before it stops.
        while not self._ray_gone():
            with self._lock:
                if self._ledger.broken is not None or (
                    self._ledger.idle()
                    and not any(
                        s.batch or s.draining or not s.life.takes_items for s in self._all()
                    )
                ):
                    break
                self._idle.wait(_JOIN_SLICE)  # notified whenever an actor goes idle
        with self._lock:
            if self._disconnected:
                return
            self._disconnected = True
            slots = self._all()
        self._poke.set()
        if threading.current_thread() is not self._poller:
            self._poller.join(_JOIN_SLICE * 4)
        for slot in slots:
            self._kill(slot.actor)
        disconnect()

    def busy(self) -> list[Busy]:
        found = []
        with self._lock:
            slots = [
                (s, s.life.state, s.life.since, s.life.runs_items, s.batch) for s in self._all()
            ]
        for slot, state, since, runs_items, batch in slots:
            if state in (WorkerState.STARTING, WorkerState.SETUP):
                timed = state is WorkerState.SETUP
                found.append(
                    setup_busy(id(slot), slot.worker, since, slot.where, (slot, SETUP), timed=timed)
                )
                continue
            if not batch or not runs_items:
                continue
            run, started = self._running(slot, batch)
            found.append(
                Busy(
                    run.task_id,
                    slot.worker,
                    run.key,
                    run.owner,
                    started,
                    slot.where,
                    (slot, run, batch),
                )
            )
        return found

    def _running(self, slot: Slot, batch: list[Run]) -> tuple[Run, float]:
        """The item of `batch` running now and since when (here): a lone item's; in a
        batch, the one its actor named at the last drain, else the first not finished,
        timed from when the batch was sent (earlier than it started: an estimate that
        `fail` checks before acting on it)."""
        with self._lock:
            current = slot.current
        held = {run.task_id for run in self._ledger.held(slot)}
        open_runs = [r for r in batch if r.task_id in held]
        for run in open_runs:
            if current is not None and run.task_id == current[0]:
                return run, current[1]
        first = open_runs[0] if open_runs else batch[-1]
        return first, batch[0].started

    def stack(self, busy: Busy) -> str:
        slot, run = busy.handle[:2]
        with self._lock:
            if run is SETUP:
                if not slot.life.in_setup:
                    return ""
            elif run not in slot.batch:
                return ""
        if self._ray_gone():
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
        slot, run = busy.handle[:2]
        if run is SETUP:
            return self._fail_setup(busy, slot, error, retry=retry)
        assert isinstance(run, Run)
        batch = busy.handle[2]
        if len(batch) > 1:
            # Be sure of the item first: what finished is delivered, and the actor says
            # what runs now and since when.
            drained = threading.Event()
            self._drain(slot, batch, drained)
            drained.wait(_DRAIN_WAIT)
            with self._lock:
                current = slot.current
            if current is None or current[0] != run.task_id or current[1] > busy.started + 1e-3:
                return False  # another item runs, or this one for less: look again later
        with self._lock:
            if slot.batch is not batch or self._ledger.find(slot, run.task_id) is not run:
                return False  # finished (or died) first
            slot.life.doom()
            slot.batch, slot.current = [], None
            started = run.started
            # The others go back as they were: those before it finished, but their
            # results die with the actor, and run again.
            culprit = self._ledger.release(slot, run, retry=retry)
            self._replace(slot)
        self._kill(slot.actor)
        if culprit is not None and self._ledger.settle(culprit, False, error, slot.worker):
            count_failure(slot, started, time.monotonic())
        return True

    def withdraw(self) -> None:
        """Tell each actor not to start the items of its batch whose owners no longer
        want them; waits for the answers, so none of them starts after this returns."""
        asked = []
        with self._lock:
            slots = self._all()
        for slot in slots:
            unwanted = self._ledger.unwanted(slot)
            if unwanted and not self._ray_gone():
                call = slot.actor.withdraw.options(concurrency_group="control")
                asked.append(call.remote([r.task_id for r in unwanted]))
        if asked and self._ray_up():
            with contextlib.suppress(Exception):  # an actor that died runs nothing more
                self._ray.get(asked, timeout=5.0)

    def stop_unwanted(self) -> None:
        """Kill the actors running an item nobody waits for (the consumer left the
        `with` block by an exception); a fresh actor replaces one only while items wait."""
        with self._lock:
            slots = [(s, s.batch) for s in self._all() if s.batch]
        for slot, batch in slots:
            run, _started = self._running(slot, batch)
            if run.owner.wanted(run.key):
                continue
            with self._lock:
                if slot.batch is not batch or not slot.life.doom():
                    continue
                slot.batch, slot.current = [], None
                self._ledger.release(slot, None)
                if self._ledger.queued:
                    self._replace(slot)
                elif self._current(slot):
                    del self._slots[slot.worker.index]
                else:
                    self._leaving.remove(slot)
                self._idle.notify_all()
            self._kill(slot.actor)
        self._dispatch_idle()


BACKEND = RayBackend
