"""Hang protection: per-task timeouts and the stall watchdog.

Data flow::

    workers --(write their own slot: running task, start time; pool.last_done)--> backend
    Monitor thread --every tick: backend.busy(), backend.last_done--> Watchdog.check(now)
    Watchdog --(decisions: items to time out, a stall to report)--> Monitor
    Monitor --backend.fail(busy, error)--> the task's owner gets TaskTimeout / StallError
    Monitor --logging, on_stall callable, progress bars--> the user

Who owns what: `Watchdog` is pure (no threads, no clock: `now` is an argument), so
tests drive it with any times they like.  Only the `Monitor` thread calls it.  Workers
never talk to the monitor: they only store into their own slot (the hot path pays a
clock read and two stores), and the monitor reads those snapshots on its own tick.

What wakes the monitor: its tick (a wait on `_stop` with a timeout) or `stop()`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._records import BusyWorker, StallReport, label
from ._worker import describe, leave_signals_to_the_main_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._backends._base import Backend
    from ._records import Busy

__all__ = ["Monitor", "Watchdog", "build_report"]

logger = logging.getLogger("steadypool")

_MIN_TICK, _MAX_TICK = 0.01, 0.5  # seconds between monitor checks, clamped


# Frames that mean "this task waits for the result of a pool's task": the stdlib's
# Future.result/wait/as_completed, and steadypool's own streams, map and compat.
_RESULT_WAITS = (
    ("concurrent/futures/_base.py", ("result", "wait", "as_completed", "exception")),
    ("steadypool/_stream.py", ("__next__",)),
    ("steadypool/_map.py", ("map_results", "map_outcomes")),
    ("steadypool/compat.py", ("pop_results",)),
)


def _waits_on_a_result(stack: str) -> bool:
    """Whether a task's stack (traceback or faulthandler text) waits on a pool result."""
    for line in stack.splitlines():
        line = line.replace(os.sep, "/")
        for path, names in _RESULT_WAITS:
            if path in line and any(f"in {name}" in line for name in names):
                return True
    return False


def self_wait_hint(busy: Sequence[BusyWorker], queued: int) -> str:
    """Name the nested-wait deadlock when every busy worker waits on a pool's result
    while work is queued (cheap: the stacks are already there)."""
    if not busy or not queued or not all(_waits_on_a_result(b.stack) for b in busy):
        return ""
    return (
        f"every busy worker is waiting for the result of a pool's task while {queued} "
        "items are queued; a task that waits for another task of its own pool deadlocks "
        "once every worker is such a waiter (the awaited tasks can never start). Give "
        "the inner work a Pool of its own, or do not wait inside tasks"
    )


@dataclass
class Decision:
    """What one `Watchdog.check` wants done."""

    timed_out: list[Busy] = field(default_factory=list)
    stall: list[Busy] | None = None  # the busy items of a stall to report now
    # setups running past stall_timeout while the pool goes on without them (each once)
    slow_setups: list[Busy] = field(default_factory=list)
    since_progress: float = 0.0
    episode: int = 0


class Watchdog:
    """Decides, from snapshots and `now`, which items timed out and when a stall is due.

    Args:
        task_timeout: Seconds an item may run, or None.
        stall_timeout: Seconds without a finished item (while items run) that make a
            stall, or None.

    A stall *episode* starts when the pool has stalled for `stall_timeout`; it is
    reported then and again after 2x, 4x, ... `stall_timeout` (back-off) until an item
    finishes or nothing runs, which ends it.
    """

    def __init__(self, task_timeout: float | None, stall_timeout: float | None) -> None:
        self.task_timeout = task_timeout
        self.stall_timeout = stall_timeout
        self.stalls = 0  # episodes seen
        self._episode_since: float | None = None  # progress time of the current episode
        self._reports = 0  # reports made in the current episode
        self._next_report = 0.0
        # setups reported as slow: token -> (reports so far, when the next one is due)
        self._slow_setups: dict[int, tuple[int, float]] = {}

    @property
    def in_episode(self) -> bool:
        """Whether a stall episode is going on."""
        return self._episode_since is not None

    @property
    def tick(self) -> float:
        """How often the monitor should look, in seconds."""
        limits = [t for t in (self.task_timeout, self.stall_timeout) if t is not None]
        return min(_MAX_TICK, max(_MIN_TICK, min(limits) / 8)) if limits else _MAX_TICK

    def check(self, now: float, busy: Sequence[Busy], last_done: float) -> Decision:
        """Decide what to do at time `now`, given what runs and when an item last finished."""
        decision = Decision()
        if self.task_timeout is not None:
            decision.timed_out = [
                b for b in busy if b.timed and now - b.started >= self.task_timeout
            ]
        gone = {b.token for b in decision.timed_out}
        running = [b for b in busy if b.token not in gone]
        if self.stall_timeout is None:
            return decision
        # A setup is watched like a task: it counts for a stall of the pool, and one that
        # runs past stall_timeout is reported even while other workers progress (then
        # again after 2x, 4x, ... stall_timeout, as stalls are).
        setups = {b.token: b for b in running if b.is_setup}
        self._slow_setups = {t: v for t, v in self._slow_setups.items() if t in setups}
        for token, setup in setups.items():
            reports, due = self._slow_setups.get(token, (0, setup.started + self.stall_timeout))
            if now >= due:
                decision.slow_setups.append(setup)
                self._slow_setups[token] = (
                    reports + 1,
                    now + self.stall_timeout * 2 ** (reports + 1),
                )
        if not running:
            self._episode_since = None
            return decision
        since = max(last_done, min(b.started for b in running))
        if self._episode_since is not None and since > self._episode_since:
            self._episode_since = None  # progress: the episode is over
        stalled_for = now - since
        if stalled_for < self.stall_timeout:
            return decision
        if self._episode_since is None:
            self._episode_since = since
            self._reports = 0
            self._next_report = now
            self.stalls += 1
        if now >= self._next_report:
            self._reports += 1
            self._next_report = now + self.stall_timeout * 2**self._reports
            decision.stall = running
            decision.since_progress = stalled_for
            decision.episode = self._reports
        if decision.stall is not None:  # one report covers them
            decision.slow_setups = []
        return decision


class Monitor:
    """The one thread per pool that runs the `Watchdog` and carries out its decisions.

    Args:
        backend: The pool's backend (snapshots, stacks, failing items).
        watchdog: The decision logic.
        on_stall: ``"report"``, ``"raise"``, ``"restart"``, or a callable(report).
        name: The pool's name, for the thread and the reports.
        clock: The time source shared with the backend's slots.
        on_report: Called with each report after the policy ran (progress bars).
    """

    def __init__(
        self,
        backend: Backend,
        watchdog: Watchdog,
        on_stall: str | Callable[[StallReport], Any],
        *,
        name: str,
        clock: Callable[[], float],
        on_report: Callable[[StallReport | None], None],
    ) -> None:
        self._backend = backend
        self._watchdog = watchdog
        self._on_stall = on_stall
        self._name = name
        self._clock = clock
        self._on_report = on_report
        self._stop = threading.Event()
        self._stalled = False
        self.timed_out = 0  # items failed with TaskTimeout
        self._thread = threading.Thread(
            target=self._run, name=f"steadypool-{name}-watchdog", daemon=True
        )
        self._thread.start()

    @property
    def stalls(self) -> int:
        """Stall episodes seen so far."""
        return self._watchdog.stalls

    def stop(self, *, wait: bool) -> None:
        """End the monitor thread (idempotent)."""
        self._stop.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        tick = self._watchdog.tick
        # Wake-up path: the tick, or stop() setting the event.
        while not self._stop.wait(tick):
            try:
                self.check()
            except Exception:
                logger.exception("steadypool: the watchdog of pool %r failed a check", self._name)

    def check(self) -> None:
        """Look once: time out items, report or act on a stall."""
        now = self._clock()
        decision = self._watchdog.check(now, self._backend.busy(), self._backend.last_done)
        for busy in decision.timed_out:
            self._time_out(busy, now)
        if decision.stall is not None:
            self._stall(decision, now)
        elif decision.slow_setups:
            # A setup that does not finish, while the pool goes on with the others: the
            # stall policy applies to it alone.
            slowest = max(now - b.started for b in decision.slow_setups)
            self._stall(
                Decision(stall=decision.slow_setups, since_progress=slowest, episode=1), now
            )
        elif self._stalled and not self._watchdog.in_episode:
            self._stalled = False
            self._on_report(None)

    def _time_out(self, busy: Busy, now: float) -> None:
        from ._exceptions import TaskTimeout

        stack = self._backend.stack(busy)
        timeout = self._watchdog.task_timeout or 0.0
        where = label(busy.is_setup, busy.position)
        error = TaskTimeout(
            f"{where} ran for {now - busy.started:.1f}s, longer than task_timeout={timeout}s, "
            f"on {describe(busy.worker.index, busy.worker.device)}; " + self._backend.replacing,
            timeout=timeout,
            worker=busy.worker,
            stack=stack,
        )
        if stack:
            error.add_note("steadypool: its stack at the timeout:\n" + stack.rstrip())
        # Counted before fail() delivers the error, so that a consumer woken by it sees
        # the count; taken back if the item finished first (only this thread writes it).
        counted = 0 if busy.is_setup else 1  # timed_out counts items
        self.timed_out += counted
        if self._backend.fail(busy, error, retry=True):
            logger.warning("steadypool: %s", error)
        else:
            self.timed_out -= counted

    def _stall(self, decision: Decision, now: float) -> None:
        from ._exceptions import StallError

        report = self.report(decision, now)
        self._stalled = True
        policy = self._on_stall
        if callable(policy):
            if decision.episode == 1:
                policy(report)
        elif policy == "report":
            logger.warning("%s", report)
        elif policy == "restart" and self._backend.can_kill:
            from ._exceptions import TaskTimeout

            logger.warning("%s\n(on_stall='restart': killing and replacing these workers)", report)
            for busy in decision.stall or ():
                where = label(busy.is_setup, busy.position)
                error = TaskTimeout(
                    f"{where} stalled for {decision.since_progress:.1f}s on "
                    f"{describe(busy.worker.index, busy.worker.device)} and "
                    f"on_stall='restart' killed it; {self._backend.replacing}",
                    timeout=self._watchdog.stall_timeout or 0.0,
                    worker=busy.worker,
                    stack=next((b.stack for b in report.busy if b.position == busy.position), ""),
                )
                self._backend.fail(busy, error, retry=True)
        else:
            why = ""
            if policy == "restart" and not self._backend.can_kill:
                why = (
                    " (on_stall='restart' needs a backend that can kill workers, such as "
                    "'processes'; a thread cannot be killed, so this raised instead)"
                )
            logger.error("%s", report)
            for busy in decision.stall or ():
                # One instance per item: owners add notes, which must not pile up.
                self._backend.fail(busy, StallError(f"{report}{why}", report=report))
        self._on_report(report)

    def report(self, decision: Decision, now: float) -> StallReport:
        """Build the `StallReport` for a stall decision."""
        return build_report(
            self._backend,
            self._name,
            decision.stall or (),
            since_progress=decision.since_progress,
            now=now,
            episode=decision.episode,
        )


def build_report(
    backend: Backend,
    name: str,
    running: Sequence[Busy],
    *,
    since_progress: float,
    now: float,
    episode: int = 1,
) -> StallReport:
    """Describe where `running` items of `backend` are (stacks included)."""
    busy = tuple(
        BusyWorker(
            index=b.worker.index,
            device=b.worker.device,
            position=b.position,
            running_for=now - b.started,
            stack=backend.stack(b),
            where=b.where,
            setup=b.is_setup,
        )
        for b in running
    )
    done, queued = backend.counts()
    return StallReport(
        hint=self_wait_hint(busy, queued),
        pool=name,
        since_progress=since_progress,
        done=done,
        in_flight=len(busy),
        queued=queued,
        busy=busy,
        devices=cuda_memory({b.device for b in busy}),
        episode=episode,
    )


def cuda_memory(devices: set[str | None]) -> tuple[str, ...]:
    """Memory lines per CUDA device in `devices`, only if torch is already imported."""
    torch: Any = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_available() or not cuda.is_initialized():
        return ()
    lines = []
    for device in sorted(d for d in devices if d and d.startswith("cuda")):
        try:
            allocated = cuda.memory_allocated(device) / 2**20
            reserved = cuda.memory_reserved(device) / 2**20
        except Exception as exc:  # a device this process cannot see
            lines.append(f"{device}: memory unknown ({exc})")
            continue
        lines.append(f"{device}: {allocated:.0f} MiB allocated, {reserved:.0f} MiB reserved")
    return tuple(lines)
