"""Behaviour only the process backend has: crashes, kills, pickling, parent death."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import steadypool as sp

from ._faults import Gate, Journal, exit_now, hang, kill_self, segfault

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

WAIT = 20.0
WORKER_COUNTS = [1, 2, 5, 13]


class Unpicklable(Exception):
    """An exception that cannot be pickled back (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def _raise() -> None:
    raise ValueError("task failed")


def _raise_unpicklable() -> None:
    raise Unpicklable()


def _return_unpicklable() -> Any:
    return threading.Lock()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.set()


# (fault to run at item 1, pool options, expected type, text the message must contain)
FAULTS: dict[str, tuple[Callable[[Gate], Any], dict[str, Any], type, str]] = {
    "raise": (lambda g: _raise(), {}, ValueError, "task failed"),
    "hang": (hang, {"task_timeout": 0.5}, sp.TaskTimeout, "longer than task_timeout"),
    "os_exit": (lambda g: exit_now(3), {}, sp.WorkerCrashed, "exit code 3"),
    "sigkill": (lambda g: kill_self(), {}, sp.WorkerCrashed, "SIGKILL (-9)"),
    "segfault": (lambda g: segfault(), {}, sp.WorkerCrashed, "SIGSEGV (-11)"),
    "unpicklable_result": (
        lambda g: _return_unpicklable(),
        {},
        pickle.PicklingError,
        "could not be pickled",
    ),
    "unpicklable_exception": (
        lambda g: _raise_unpicklable(),
        {},
        sp.RemoteError,
        "Unpicklable: holds a lock",
    ),
}


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_table(workers: int, fault: str, gate: Gate) -> None:
    """Each fault fails only its item, with the right error and message; the others
    finish; the pool is usable afterwards; no child is left (leak check)."""
    run, options, expected, text = FAULTS[fault]

    def task(x: int) -> Any:
        return run(gate) if x == 1 else x

    with sp.Pool(workers, backend="processes", **options) as pool:
        out = list(pool.imap(task, range(2 * workers + 2), on_error="return"))
        error = out[1]
        assert isinstance(error, BaseException)
        assert isinstance(error, expected), repr(error)
        assert text in str(error)
        assert any("input position 1" in note for note in error.__notes__)
        assert [x for i, x in enumerate(out) if i != 1] == [
            x for x in range(2 * workers + 2) if x != 1
        ]
        assert list(pool.imap(abs, range(-3, 0))) == [3, 2, 1]


def _exit_at_3(x: int) -> int:
    if x == 3:
        exit_now(3)
    return x


@pytest.mark.parametrize("chunksize", [4, 8])
def test_map_chunk_whose_worker_crashes_yields_what_came_before(chunksize: int) -> None:
    """map(chunksize=k): an item that crashes its worker mid-chunk fails as that item
    (WorkerCrashed naming it), after the results before it; the pool stays usable."""
    got: list[int] = []
    with sp.Pool(2, backend="processes") as pool:
        with pytest.raises(sp.WorkerCrashed, match="item 3") as info:
            got.extend(pool.map(_exit_at_3, range(12), chunksize=chunksize))
        assert got == [0, 1, 2]
        assert any("input position 3" in note for note in info.value.__notes__)
        assert list(pool.map(abs, range(-5, 0), chunksize=2)) == [5, 4, 3, 2, 1]


def test_stats_count_a_crashed_item_as_done_and_failed() -> None:
    """An item that crashed its worker counts in done and in failed (once)."""
    with sp.Pool(2, backend="processes") as pool:
        out = list(pool.imap(_exit_at_3, range(6), on_error="return"))
        assert isinstance(out[3], sp.WorkerCrashed)
        stats = pool.stats()
    assert (stats.done, stats.failed, stats.replaced) == (6, 1, 1)


def test_a_stuck_setup_is_killed_and_run_again_with_retries(tmp_path: Path) -> None:
    """With retries, a setup past task_timeout is killed and a fresh process runs setup
    again; the pool then works."""
    from .test_pool import setup_stuck

    gate, once = Gate(tmp_path / "gate"), Gate(tmp_path / "once")
    try:
        with sp.Pool(
            1, backend="processes", setup=setup_stuck(gate, once=once), task_timeout=1.0, retries=1
        ) as pool:
            assert list(pool.imap(abs, range(-3, 0))) == [3, 2, 1]
            assert once.is_set()
    finally:
        gate.set()


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_unpicklable_argument_fails_its_item_naming_it(workers: int) -> None:
    """An argument that cannot be pickled fails that item (naming the argument and the
    item); nothing hangs and the rest runs."""
    items: list[Any] = [0, threading.Lock(), 2]
    with sp.Pool(workers, backend="processes") as pool:
        out = list(pool.imap(repr, items, on_error="return"))
    assert out[0] == "0"
    assert out[2] == "2"
    assert isinstance(out[1], pickle.PicklingError)
    assert "argument 0, <unlocked _thread.lock object" in str(out[1])
    assert any("input position 1" in note for note in out[1].__notes__)


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_failing_setup_breaks_the_pool(workers: int) -> None:
    """A setup error in the children: BrokenPool with the remote cause, never a hang."""

    def setup(worker: sp.Worker) -> None:
        raise OSError(f"no device for worker {worker.index}")

    with sp.Pool(workers, backend="processes", setup=setup) as pool:
        with pytest.raises(sp.BrokenPool, match="setup") as info:
            list(pool.imap(abs, range(5)))
        assert isinstance(info.value.__cause__, OSError)
        assert "no device for worker" in "".join(
            __import__("traceback").format_exception(info.value)
        )


def test_unpicklable_function_is_refused_before_any_work() -> None:
    """A function that cannot be pickled is named at the call, before anything runs."""
    lock = threading.Lock()
    with sp.Pool(1, backend="processes") as pool:
        with pytest.raises(TypeError, match=r"cannot be sent to worker processes.*_thread.lock"):
            pool.imap(lambda x: lock, range(3))
        with pytest.raises(TypeError, match="cannot be pickled"):
            pool.submit(lambda: lock)


def test_remote_traceback_is_the_cause() -> None:
    """A task's exception keeps its type; the child's traceback is its __cause__."""
    with sp.Pool(1, backend="processes") as pool, pytest.raises(ZeroDivisionError) as info:
        pool.submit(divmod, 1, 0).result(WAIT)
    cause = info.value.__cause__
    assert cause is not None
    assert "ZeroDivisionError" in str(cause)
    assert "Traceback" in str(cause)


def test_sigkill_from_outside_fails_the_item_and_a_new_worker_takes_over(
    tmp_path: Path, gate: Gate
) -> None:
    """Killing a busy child from outside: WorkerCrashed names SIGKILL and the item."""
    pids = Journal(tmp_path / "pids")

    def task(x: int) -> int:
        if x == 0:
            pids.record(os.getpid())
            hang(gate)
        return x

    with sp.Pool(1, backend="processes") as pool:
        future = pool.submit(task, 0)
        (pid,) = pids.wait_for(1)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(sp.WorkerCrashed, match=r"SIGKILL \(-9\)") as info:
            future.result(WAIT)
        assert info.value.exitcode == -9
        assert "out-of-memory" in str(info.value)
        assert pool.submit(task, 5).result(WAIT) == 5
        assert pool.stats().replaced == 1


def test_retries_run_a_crashed_item_again_on_a_fresh_worker(tmp_path: Path) -> None:
    """retries=1: the first attempt's crash is retried, and the second attempt succeeds."""
    attempts = Journal(tmp_path / "attempts")

    def task(x: int) -> int:
        attempts.record(x)
        if len(attempts.read()) == 1:
            os._exit(7)
        return x * 10

    with sp.Pool(1, backend="processes", retries=1) as pool:
        assert pool.submit(task, 4).result(WAIT) == 40
    assert attempts.read() == [4, 4]


def test_task_timeout_kills_the_child_and_retries(tmp_path: Path, gate: Gate) -> None:
    """task_timeout kills the stuck child; with retries the item runs again and succeeds;
    the TaskTimeout stack came from the child."""
    attempts = Journal(tmp_path / "attempts")

    def task(x: int) -> int:
        attempts.record(x)
        if len(attempts.read()) == 1:
            hang(gate)
        return x

    with sp.Pool(1, backend="processes", task_timeout=0.5, retries=1) as pool:
        assert pool.submit(task, 9).result(WAIT) == 9
        assert pool.stats().timed_out == 1


def test_stall_restart_kills_and_retries_with_the_child_stack_in_the_report(
    tmp_path: Path, gate: Gate
) -> None:
    """on_stall='restart' on processes kills the stuck workers and retries their items;
    the report carries the child's Python stack (faulthandler)."""
    attempts = Journal(tmp_path / "attempts")
    reports: list[str] = []

    def task(x: int) -> int:
        attempts.record(x)
        if len(attempts.read()) == 1:
            hang(gate)
        return x

    import logging

    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("steadypool")
    logger.addHandler(handler)
    try:
        with sp.Pool(
            1, backend="processes", stall_timeout=0.5, on_stall="restart", retries=1
        ) as pool:
            assert pool.submit(task, 3).result(WAIT) == 3
    finally:
        logger.removeHandler(handler)
    text = "\n".join(reports)
    assert "on_stall='restart'" in text
    assert "in hang" in text  # the child's stack names the blocking function


def test_a_child_is_shown_only_its_device() -> None:
    """A worker for cuda:N runs with CUDA_VISIBLE_DEVICES=N and calls it cuda:0 (the
    real thing runs in tests/test_gpu.py on a machine with GPUs)."""
    from steadypool._devices import child_view as _child_view

    assert _child_view("cuda:1") == ("cuda:0", {"CUDA_VISIBLE_DEVICES": "1"})
    assert _child_view("cpu") == ("cpu", {})
    assert _child_view(None) == (None, {})


def test_forkserver_start_method_works() -> None:
    """start_method='forkserver' runs the same tasks."""
    with sp.Pool(2, backend="processes", start_method="forkserver") as pool:
        assert list(pool.map(pow, range(5), [2] * 5)) == [0, 1, 4, 9, 16]


def test_large_arrays_travel_intact_and_writable() -> None:
    """A 15 MB float32 array goes out and back unchanged, and arrives writable."""
    array = np.arange(8 * 20 * 150 * 163, dtype=np.float32).reshape(8, 20, 150, 163)
    with sp.Pool(1, backend="processes") as pool:
        back = pool.submit(np.negative, array).result(WAIT)
    assert back.flags.writeable
    np.testing.assert_array_equal(back, -array)


PARENT = textwrap.dedent(
    """
    import pathlib, sys, time
    import steadypool as sp
    from tests._faults import Gate, Journal, hang

    mode, tmp = sys.argv[1], pathlib.Path(sys.argv[2])
    gate, pids = Gate(tmp / "never"), Journal(tmp / "pids")

    def pid_then_hang(_):
        import os
        pids.record(os.getpid())
        hang(gate)

    with sp.Pool(2, backend="processes") as pool:
        for _ in range(2):
            pool.submit(pid_then_hang, 0)
        if mode == "interrupt":
            for _ in pool.imap(pid_then_hang, range(10)):
                pass
        else:
            time.sleep(60)
    """
)


def _children_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not _alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigkill", "interrupt"])
def test_children_never_outlive_the_parent(how: str, tmp_path: Path) -> None:
    """SIGKILL of the parent, or Ctrl-C in it, leaves no worker process behind."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, how, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        pids = Journal(tmp_path / "pids").wait_for(2)[:2]
        assert all(_alive(pid) for pid in pids)
        start = time.monotonic()
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
        assert time.monotonic() - start < WAIT
        if how == "interrupt":
            assert "KeyboardInterrupt" in err
        assert _children_gone(pids, WAIT), f"worker processes {pids} outlived the parent"
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)  # also closes the pipes


@pytest.mark.parametrize("fault", ["os_exit", "timeout"])
def test_crash_with_a_prefetched_item_behind_it_loses_nothing(fault: str, gate: Gate) -> None:
    """Once tasks are short the child holds a second task behind the running one; when
    it dies (or is killed), that one never started: it runs again, and only the bad
    item fails."""

    def task(x: int) -> int:
        if x == 150:
            if fault == "os_exit":
                os._exit(5)
            hang(gate)
        return x

    options = {"task_timeout": 1.0} if fault == "timeout" else {}
    with sp.Pool(1, backend="processes", **options) as pool:  # type: ignore[arg-type]
        out = list(pool.imap(task, range(300), window=8, on_error="return"))
    expected_error = sp.WorkerCrashed if fault == "os_exit" else sp.TaskTimeout
    assert isinstance(out[150], expected_error)
    assert [x for i, x in enumerate(out) if i != 150] == [x for x in range(300) if x != 150]


def _threads(_: int) -> tuple[str | None, int | None]:
    torch = sys.modules.get("torch")
    return os.environ.get("OMP_NUM_THREADS"), None if torch is None else torch.get_num_threads()


def test_cpu_workers_share_the_cores() -> None:
    """Worker processes pinned to the CPU get the cores divided among them for their
    math libraries (set before they load; torch told directly if already loaded)."""
    share = max(1, (os.cpu_count() or 1) // 2)
    with sp.Pool(devices=["cpu", "cpu"], backend="processes") as pool:
        seen = set(pool.map(_threads, range(4)))
    assert {env for env, _ in seen} == {str(share)}
    assert all(threads in (None, share) for _, threads in seen)


_FAULTS: dict[str, Callable[[], None]] = {
    "os_exit": exit_now,
    "sigkill": kill_self,
    "segfault": segfault,
}


def _fault_at(x: int, at: int, fault: str) -> int:
    if x == at:
        _FAULTS[fault]()
    return x


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("fault", sorted(_FAULTS))
def test_a_crash_among_many_tiny_items_names_its_own_item(fault: str, workers: int) -> None:
    """Tiny tasks travel to a child many at a time and come back in batches; when the
    child dies, the item its slot says it was running fails alone, named, and every
    other item is delivered once, in order (those whose results died with it run
    again)."""
    with sp.Pool(workers, backend="processes") as pool:
        out = list(
            pool.imap(partial(_fault_at, at=2000, fault=fault), range(3000), on_error="return")
        )
        stats = pool.stats()
    assert isinstance(out[2000], sp.WorkerCrashed)
    assert "item 2000" in str(out[2000])
    assert [x for i, x in enumerate(out) if i != 2000] == [x for x in range(3000) if x != 2000]
    assert (stats.done, stats.failed, stats.replaced) == (3000, 1, 1)
