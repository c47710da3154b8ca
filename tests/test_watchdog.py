"""Hang protection: the pure watchdog with explicit times, and a fault table on real pools."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

import steadypool as sp
from steadypool._records import SETUP, Busy
from steadypool._watchdog import Watchdog

if TYPE_CHECKING:
    from collections.abc import Iterator

WAIT = 10.0
WORKER_COUNTS = [1, 2, 5, 13]


class _Owner:
    def position(self, key: Any) -> int | None:
        return int(key)


def busy(token: int, started: float) -> Busy:
    return Busy(token, sp.Worker(token), token, _Owner(), started, f"t{token}", None)  # type: ignore[arg-type]


# --- the pure watchdog: deterministic, any clock -----------------------------------------


def test_no_stall_while_items_keep_finishing() -> None:
    """Progress within stall_timeout is never a stall, however long items run."""
    dog = Watchdog(None, stall_timeout=10.0)
    for now in range(0, 100, 5):
        decision = dog.check(float(now), [busy(1, 0.0)], last_done=float(now) - 1)
        assert decision.stall is None
    assert dog.stalls == 0


def setup_busy(token: int, started: float) -> Busy:
    return Busy(token, sp.Worker(token), None, SETUP, started, f"t{token}", None)


def test_a_slow_setup_is_reported_with_back_off_while_the_pool_progresses() -> None:
    """A setup past stall_timeout is reported even though items keep finishing, then
    again after 2x and 4x; a setup that ends is forgotten."""
    dog = Watchdog(None, stall_timeout=10.0)
    stuck = setup_busy(7, 0.0)
    times = [
        t
        for t in range(0, 80)
        if dog.check(float(t), [busy(1, float(t)), stuck], last_done=float(t)).slow_setups
    ]
    assert times == [10, 30, 70]
    assert dog.stalls == 0  # not a stall of the pool
    assert not dog.check(100.0, [busy(1, 99.0)], last_done=99.0).slow_setups


def test_a_worker_still_starting_is_not_timed_out() -> None:
    """task_timeout does not apply while a worker is still being started (a Ray actor
    waiting for a node): only stall reports watch that."""
    dog = Watchdog(task_timeout=1.0, stall_timeout=10.0)
    starting = setup_busy(3, 0.0)._replace(timed=False)
    assert dog.check(5.0, [starting], last_done=0.0).timed_out == []
    assert dog.check(5.0, [setup_busy(3, 0.0)], last_done=0.0).timed_out != []
    assert dog.check(10.0, [starting], last_done=0.0).stall == [starting]


def test_a_pool_stuck_in_setup_is_one_stall() -> None:
    """Every worker in setup and nothing finishing: one stall report covers them."""
    dog = Watchdog(None, stall_timeout=10.0)
    decision = dog.check(10.0, [setup_busy(1, 0.0), setup_busy(2, 0.0)], last_done=0.0)
    assert decision.stall is not None
    assert len(decision.stall) == 2
    assert decision.slow_setups == []


def test_stall_is_reported_once_then_with_back_off_until_progress() -> None:
    """An episode reports at T, then after 2T and 4T more; progress ends it; the next
    stall is a new episode."""
    dog = Watchdog(None, stall_timeout=10.0)
    running = [busy(1, 0.0)]
    reports = [t for t in range(0, 80) if dog.check(float(t), running, 0.0).stall is not None]
    assert reports == [10, 30, 70]  # 10, then +2x10, then +4x10
    assert dog.stalls == 1
    assert dog.check(80.0, running, last_done=79.0).stall is None  # progress
    assert not dog.in_episode
    assert dog.check(88.0, running, last_done=79.0).stall is None
    decision = dog.check(89.0, running, last_done=79.0)
    assert decision.stall == running
    assert decision.episode == 1
    assert dog.stalls == 2


def test_idle_pool_never_stalls_and_a_new_burst_counts_from_its_start() -> None:
    """Nothing running is not a stall; work starting after idleness is measured from
    its own start, not from the last finish an hour ago."""
    dog = Watchdog(None, stall_timeout=10.0)
    assert dog.check(3600.0, [], last_done=0.0).stall is None
    assert dog.check(3605.0, [busy(1, 3600.0)], last_done=0.0).stall is None
    decision = dog.check(3610.0, [busy(1, 3600.0)], last_done=0.0)
    assert decision.stall is not None
    assert decision.since_progress == 10.0


def test_task_timeout_picks_exactly_the_items_past_their_limit() -> None:
    """Each item is judged from its own start; timed-out items are not also a stall."""
    dog = Watchdog(task_timeout=5.0, stall_timeout=5.0)
    old, young = busy(1, 0.0), busy(2, 3.0)
    decision = dog.check(5.0, [old, young], last_done=0.0)
    assert decision.timed_out == [old]
    assert decision.stall is None  # young has run 2s only
    assert Watchdog(1.0, None).tick == pytest.approx(1.0 / 8)


# --- real pools: the fault table -----------------------------------------------------------


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked tasks wait on; set at teardown so abandoned threads can exit."""
    event = threading.Event()
    yield event
    event.set()


def blocked_in_device_call(release: threading.Event) -> None:
    """Stands for a CUDA call that never returns."""
    release.wait()


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_task_timeout_fails_the_item_others_finish_capacity_restored(
    workers: int, release: threading.Event
) -> None:
    """An item blocking forever fails with TaskTimeout; the rest finish; the worker is
    replaced (setup runs again), so all `workers` can still run at once."""
    setups: list[int] = []

    def task(x: int) -> int:
        if x == 3:
            blocked_in_device_call(release)
        return x

    with sp.Pool(workers, task_timeout=0.3, setup=lambda w: setups.append(w.index)) as pool:
        out = list(pool.imap(task, range(20), on_error="return"))
        assert [x for x in out if not isinstance(x, BaseException)] == [
            x for x in range(20) if x != 3
        ]
        error = out[3]
        assert isinstance(error, sp.TaskTimeout)
        assert isinstance(error, TimeoutError)
        assert error.timeout == 0.3
        assert "blocked_in_device_call" in error.stack
        assert any("input position 3" in note for note in error.__notes__)
        # Capacity: every worker must be alive to pass this barrier.
        barrier = threading.Barrier(workers, timeout=WAIT)
        assert list(pool.map(lambda _: barrier.wait() >= 0, range(workers))) == [True] * workers
        stats = pool.stats()
        assert stats.timed_out == 1
        assert stats.replaced == 1
        assert stats.abandoned_running == 1
        assert len(setups) == workers + 1


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_stall_report_policy_logs_where_it_is_stuck(
    workers: int, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """on_stall='report' logs a WARNING naming the worker, the item and the blocking
    function, and keeps waiting; when the item returns, the stream completes."""

    def task(x: int) -> int:
        if x == 1:
            blocked_in_device_call(release)
        return x

    pool = sp.Pool(workers, stall_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="steadypool"), pool:
        results = pool.imap(task, range(4), window=2)
        assert next(results) == 0
        _wait_for(lambda: any("no progress" in r.message for r in caplog.records))
        release.set()
        assert list(results) == [1, 2, 3]
    text = next(r.message for r in caplog.records if "no progress" in r.message)
    assert "blocked_in_device_call" in text
    assert "item 1" in text


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("policy", ["raise", "restart"])
def test_stall_raise_policy_raises_stall_error_promptly(
    workers: int, policy: str, release: threading.Event
) -> None:
    """on_stall='raise' (and 'restart' on threads, which says why) raises StallError in
    the consumer with the report; the pool stays usable."""

    def task(x: int) -> int:
        blocked_in_device_call(release)
        return x

    with sp.Pool(workers, stall_timeout=0.2, on_stall=policy) as pool:
        start = time.monotonic()
        with pytest.raises(sp.StallError) as info:
            list(pool.imap(task, range(workers)))
        assert time.monotonic() - start < WAIT
        report = info.value.report
        assert report is not None
        assert len(report.busy) >= 1
        assert "blocked_in_device_call" in str(report)
        if policy == "restart":
            assert "a thread cannot be killed" in str(info.value)
        assert pool.submit(abs, -4).result(WAIT) == 4


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_callable_policy_is_called_once_per_stall_episode(
    workers: int, release: threading.Event
) -> None:
    """A callable gets the report once per episode, not once per repeat."""
    reports: list[sp.StallReport] = []
    with sp.Pool(workers, stall_timeout=0.1, on_stall=reports.append) as pool:
        for _episode in range(2):
            gate = threading.Event()
            future = pool.submit(gate.wait, WAIT)
            _wait_for_count(reports, _episode + 1)
            time.sleep(0.5)  # several more ticks of the same episode: no more calls
            gate.set()
            assert future.result(WAIT) is True
        assert pool.stats().stalls == 2
    assert len(reports) == 2
    assert all(r.episode == 1 for r in reports)


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_stall_that_resolves_by_itself_is_reported_once_and_raises_nothing(
    workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A long pause that ends on its own: one report, no error, all results."""
    gate = threading.Event()

    def task(x: int) -> int:
        if x == 0:
            gate.wait(WAIT)
        return x

    def release_after_the_first_report() -> None:
        _wait_for(lambda: any("no progress" in r.message for r in caplog.records))
        gate.set()

    pool = sp.Pool(workers, stall_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="steadypool"), pool:
        results = pool.imap(task, range(10))
        releaser = threading.Thread(target=release_after_the_first_report)
        releaser.start()
        assert list(results) == list(range(10))
        releaser.join(WAIT)
    assert sum("no progress" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_slow_but_progressing_pool_never_reports_a_stall(
    workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Items that each take a while, but keep finishing, are never a stall."""

    def task(x: int) -> int:
        time.sleep(0.02)
        return x

    pool = sp.Pool(workers, stall_timeout=1.0, task_timeout=2.0)
    with caplog.at_level(logging.WARNING, logger="steadypool"), pool:
        assert list(pool.imap(task, range(40))) == list(range(40))
        assert pool.stats().stalls == 0
    assert not caplog.records


def test_progress_bar_shows_a_stall(
    release: threading.Event, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=True: the bar says STALLED while the pool is stalled."""
    seen: list[sp.StallReport] = []
    with sp.Pool(1, stall_timeout=0.1, on_stall=seen.append, progress=True) as pool:
        results = pool.imap(lambda x: blocked_in_device_call(release) if x == 1 else x, range(3))
        assert next(results) == 0
        _wait_for(lambda: bool(seen))
        release.set()
        assert list(results) == [None, 2]
    assert "STALLED" in capsys.readouterr().err


def test_stats_count_work_per_worker() -> None:
    """stats() adds up items, failures and busy time per worker."""
    with sp.Pool(2) as pool:
        list(pool.imap(lambda x: 1 / x, [1, 2, 0, 4], on_error="return"))
        stats = pool.stats()
    assert stats.done == 4
    assert stats.failed == 1
    assert sum(w.items for w in stats.workers) == 4
    assert stats.in_flight == stats.queued == 0
    assert stats.busy_seconds >= 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task_timeout": 0}, ValueError, "task_timeout must be a number of seconds > 0"),
        ({"stall_timeout": -1.0}, ValueError, "stall_timeout must be"),
        ({"task_timeout": "1"}, TypeError, "task_timeout must be"),
        ({"stall_timeout": 1, "on_stall": "kill"}, ValueError, "on_stall must be"),
    ],
)
def test_bad_watchdog_arguments_are_refused(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    """Bad timeouts or policies raise before any worker starts."""
    with pytest.raises(error, match=match):
        sp.Pool(1, **kwargs)


def test_timeout_and_stall_errors_round_trip_through_pickle() -> None:
    """Both errors keep their fields across a process boundary."""
    report = sp.StallReport("p", 3.0, 1, 1, 0, (sp.BusyWorker(0, None, 5, 3.0, "stack", "t"),))
    stall = pickle.loads(pickle.dumps(sp.StallError("stuck", report=report)))
    assert stall.report == report
    timeout = pickle.loads(
        pickle.dumps(sp.TaskTimeout("slow", timeout=2.0, worker=sp.Worker(1), stack="s"))
    )
    assert (timeout.timeout, timeout.worker, timeout.stack) == (2.0, sp.Worker(1), "s")
    assert str(timeout) == "slow"


def _wait_for_count(items: list[Any], count: int) -> None:
    _wait_for(lambda: len(items) >= count)


def _wait_for(condition: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_diagnose_includes_versions_and_the_report() -> None:
    """diagnose() gives the environment and the stall report, ready to paste."""
    report = sp.StallReport("p", 3.0, 1, 1, 0, (sp.BusyWorker(0, None, 5, 3.0, "  at x", "t"),))
    text = sp.diagnose(sp.StallError("stuck", report=report))
    assert "steadypool 0.1.0" in text
    assert "Python 3." in text
    assert "has run item 5 for 3.0s" in text
    assert "torch" in text
    timeout = sp.diagnose(sp.TaskTimeout("slow", timeout=1.0, stack="  File x, in f"))
    assert "stack at the timeout" in timeout


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_a_task_waiting_on_its_own_pool_is_named_in_the_stall_report(workers: int) -> None:
    """The classic nested deadlock (every worker waits on a task queued behind it) is
    reported with its likely cause."""
    reports: list[sp.StallReport] = []
    with sp.Pool(workers, stall_timeout=0.3, on_stall="raise") as pool:

        def outer(x: int) -> int:
            return pool.submit(abs, -x).result() + 1

        with pytest.raises(sp.StallError) as info:
            list(pool.map(outer, range(workers)))
        assert info.value.report is not None
        reports.append(info.value.report)
    hint = reports[0].hint
    assert "a task that waits for another task of its own pool deadlocks" in hint
    assert "likely cause:" in str(reports[0])


def test_stall_reporting_is_on_by_default() -> None:
    """A pool made with defaults watches itself (a hang is never silent); None turns it
    off."""
    assert (sp.Pool.__init__.__kwdefaults__ or {})["stall_timeout"] == 300.0
    with sp.Pool(1) as pool:
        assert pool.stall_timeout == 300.0
    with sp.Pool(1, stall_timeout=None) as pool:
        assert pool.stall_timeout is None
