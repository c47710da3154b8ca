"""The ledger and the worker state machine, without a thread or a process: every item
gets exactly one outcome whatever order its paths race in."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steadypool._backends._ledger import Ledger, Run, RunState, ahead
from steadypool._backends._life import Life, WorkerState
from steadypool._exceptions import BrokenPool, PoolClosed
from steadypool._worker import Worker

if TYPE_CHECKING:
    from steadypool._records import Outcome


class Owner:
    """Records what the ledger tells it; `wanting` False plays a cancelled stream."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.dropped: list[Any] = []
        self.begun: list[Any] = []
        self.wanting = True

    def begin(self, key: Any) -> bool:
        self.begun.append(key)
        return self.wanting

    def put(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def drop(self, key: Any) -> None:
        self.dropped.append(key)

    def position(self, key: Any) -> int | None:
        return int(key)

    def wanted(self, key: Any) -> bool:
        return self.wanting


def _runs(owner: Owner, count: int) -> list[Run]:
    return [Run((i, abs, (i,), None, owner, time.monotonic())) for i in range(count)]


WORKER = Worker(0)


def test_take_hands_out_in_order_and_begins_each_run_once() -> None:
    """take() gives a holder up to its room, in queue order, and tells each owner once."""
    owner, ledger = Owner(), Ledger()
    for run in _runs(owner, 5):
        ledger.add(run)
    first = ledger.take("a", 3)
    assert [r.key for r in first] == [0, 1, 2]
    assert ledger.take("a", 3) == []  # no room: it holds 3
    assert [r.key for r in ledger.take("b", 3)] == [3, 4]
    assert owner.begun == [0, 1, 2, 3, 4]
    assert all(r.state is RunState.HELD for r in first)


def test_settle_delivers_exactly_once_whoever_comes_first() -> None:
    """A result, the watchdog and a crash racing for one run: the first one wins."""
    owner, ledger = Owner(), Ledger()
    (run,) = _runs(owner, 1)
    ledger.add(run)
    ledger.take("a", 1)
    assert ledger.settle(run, True, 10, WORKER)
    assert not ledger.settle(run, False, RuntimeError("late"), WORKER)
    assert ledger.close_held("a", [run.task_id]) == [None]  # a late result: nobody's
    assert [o[1:3] for o in owner.outcomes] == [(True, 10)]
    assert (ledger.done, ledger.failed) == (1, 0)
    assert run.fn is not abs
    assert run.args == ()


def test_release_requeues_in_order_and_hands_back_the_culprit() -> None:
    """A dead worker's runs go back to the head of the queue in order; the one it ran is
    returned to be failed (or goes back too while it has retries)."""
    owner, ledger = Owner(), Ledger(retries=1)
    runs = _runs(owner, 6)
    for run in runs:
        ledger.add(run)
    held = ledger.take("a", 4)
    culprit = ledger.release("a", held[1])
    assert culprit is None  # retried: attempts 1 <= retries 1
    assert held[1].attempts == 2
    again = ledger.take("b", 6)
    assert [r.key for r in again] == [0, 1, 2, 3, 4, 5]
    assert owner.begun == [0, 1, 2, 3, 4, 5]  # requeued runs are not begun twice
    culprit = ledger.release("b", again[1])
    assert culprit is again[1]  # out of retries
    assert ledger.settle(culprit, False, RuntimeError("crash"), WORKER)
    assert [r.key for r in ledger.take("c", 6)] == [0, 2, 3, 4, 5]


def test_cancel_keeps_begun_runs_and_drops_the_rest() -> None:
    """shutdown(cancel_futures=True): a requeued (begun) run is not dropped, since its
    future is RUNNING and cannot be cancelled (hole 3); the `free` first stay too."""
    owner, ledger = Owner(), Ledger()
    runs = _runs(owner, 6)
    for run in runs:
        ledger.add(run)
    ledger.take("a", 2)
    ledger.release("a")  # runs 0 and 1 back, begun
    ledger.cancel(free=1)
    assert owner.dropped == [3, 4, 5]
    assert [r.key for r in ledger.take("b", 6)] == [0, 1, 2]


def test_break_fails_every_queued_run_and_refuses_more() -> None:
    """break_pool fails what is queued with the first reason; add() then raises it."""
    owner, ledger = Owner(), Ledger()
    for run in _runs(owner, 3):
        ledger.add(run)
    broken = ledger.break_pool(BrokenPool("setup failed"))
    assert ledger.break_pool(BrokenPool("later")) is broken
    assert [type(o[2]) for o in owner.outcomes] == [BrokenPool] * 3
    with pytest.raises(BrokenPool):
        ledger.add(_runs(owner, 1)[0])
    ledger.close()
    with pytest.raises(PoolClosed):
        ledger.check_open()


def test_unwanted_runs_are_skipped_not_delivered() -> None:
    """A run whose owner gave up is withdrawn once and closed without an outcome; a
    requeued run of a stream that ended is skipped when taken."""
    owner, ledger = Owner(), Ledger()
    runs = _runs(owner, 3)
    for run in runs:
        ledger.add(run)
    ledger.take("a", 3)
    owner.wanting = False
    assert [r.key for r in ledger.unwanted("a")] == [0, 1, 2]
    assert ledger.unwanted("a") == []  # told once
    assert ledger.close_held("a", [runs[0].task_id]) == [runs[0]]  # its worker skipped it
    ledger.release("a")
    assert ledger.take("b", 3) == []
    assert owner.outcomes == []
    assert ledger.idle()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["take", "settle", "fail", "release", "retry"]), max_size=60))
def test_every_run_ends_in_at_most_one_outcome(steps: list[str]) -> None:
    """Property: whatever sequence of hand-outs, results, failures and worker deaths,
    no run is delivered twice, and once the queue drains every run has one outcome."""
    owner, ledger = Owner(), Ledger(retries=2)
    runs = _runs(owner, 8)
    for run in runs:
        ledger.add(run)
    holders = ["a", "b"]
    for i, step in enumerate(steps):
        holder = holders[i % 2]
        held = ledger.held(holder)
        if step == "take":
            ledger.take(holder, 3)
        elif step == "settle" and held:
            ledger.settle(held[0], True, held[0].key, WORKER)
        elif step == "fail" and held:
            ledger.settle(held[-1], False, RuntimeError("x"), WORKER)
        elif step in ("release", "retry"):
            culprit = ledger.release(holder, held[0] if held else None, retry=step == "retry")
            if culprit is not None:
                ledger.settle(culprit, False, RuntimeError("crash"), WORKER)
    for holder in holders:
        ledger.release(holder)  # the workers end: what they held goes back
    while not ledger.idle():
        for run in ledger.take("c", 8):
            ledger.settle(run, True, run.key, WORKER)
    keys = [o[0] for o in owner.outcomes]
    assert sorted(keys) == list(range(8)), keys
    assert ledger.done == 8


def test_ahead_is_one_for_long_items_and_bounded_for_short_ones() -> None:
    """The one send-ahead formula: 1 while items are long, 2..most while short."""
    assert ahead(0.01, below=0.005, budget=0.002, most=64) == 1
    assert ahead(0.001, below=0.005, budget=0.002, most=64) == 2
    assert ahead(1e-6, below=0.005, budget=0.002, most=64) == 64


def test_life_moves_only_forward_and_agrees_on_who_ended_it() -> None:
    """STARTING -> SETUP -> READY -> DOOMED -> GONE; a transition from the wrong state
    does nothing, so a kill and a death racing agree on which came first."""
    life = Life()
    assert life.state is WorkerState.STARTING
    assert life.setup_began()
    assert life.in_setup
    assert not life.setup_began()
    assert life.ready()
    assert life.takes_items
    assert not life.ready()
    assert life.doom()
    assert not life.takes_items
    assert not life.doom()
    assert life.end() is WorkerState.DOOMED
    assert life.end() is None
    fresh = Life()
    assert fresh.end() is WorkerState.STARTING  # died while starting: a crash, not a kill
