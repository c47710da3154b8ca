"""Behaviour of `Pool` on every backend: results, order, window, errors, cancel, shutdown."""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
import weakref
from concurrent.futures import CancelledError, Future, wait
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import pytest

import steadypool as sp

from ._faults import Gate, Journal

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

WAIT = 10.0  # seconds any single wait inside a test may take before it fails


def square(x: int) -> int:
    return x * x


def fail_on(bad: int) -> Any:
    def task(x: int) -> int:
        if x == bad:
            raise ValueError(f"bad item {x}")
        return x

    return task


class Counting:
    """An input generator that records how far it has been read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i


# --- submit and map ---------------------------------------------------------------------


def test_submit_returns_a_future_with_the_result(backend: str) -> None:
    """submit() gives a concurrent.futures.Future carrying fn(*args, **kwargs)."""
    with sp.Pool(2, backend=backend) as pool:
        future = pool.submit(divmod, 17, 5)
        keyed = pool.submit(int, "ff", base=16)
        assert isinstance(future, Future)
        assert future.result(WAIT) == (3, 2)
        assert keyed.result(WAIT) == 255


def test_submit_exception_keeps_type_and_names_the_worker(backend: str) -> None:
    """A task's exception is the same object type, with a note naming its worker."""
    with sp.Pool(1, backend=backend) as pool:
        future = pool.submit(fail_on(3), 3)
        with pytest.raises(ValueError, match="bad item 3") as info:
            future.result(WAIT)
    assert any("on worker 0" in note for note in info.value.__notes__)


def test_map_matches_builtin_map_over_several_iterables(backend: str) -> None:
    """map() zips its iterables and yields in input order, like Executor.map."""
    with sp.Pool(3, backend=backend) as pool:
        assert list(pool.map(pow, range(20), [2] * 25)) == [i**2 for i in range(20)]


@pytest.mark.parametrize("chunksize", [1, 2, 7, 64])
def test_map_chunksize_gives_the_same_results(backend: str, chunksize: int) -> None:
    """Chunking changes how tasks are shipped, never which results come back."""
    with sp.Pool(2, backend=backend) as pool:
        assert list(pool.map(square, range(101), chunksize=chunksize)) == [
            i * i for i in range(101)
        ]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_error_names_its_exact_input_position(backend: str, chunksize: int) -> None:
    """The item's position is in the note, also when it ran inside a chunk."""
    with sp.Pool(2, backend=backend) as pool:
        results = pool.map(fail_on(13), range(30), chunksize=chunksize)
        got = [next(results) for _ in range(13)]
        with pytest.raises(ValueError, match="bad item 13") as info:
            next(results)
    assert got == list(range(13))
    assert any("input position 13" in note for note in info.value.__notes__)


def test_map_timeout_raises_timeout_error(backend: str, tmp_path: Path) -> None:
    """map(timeout=) raises TimeoutError when a result is not ready in time."""
    release = Gate(tmp_path / "release")
    with sp.Pool(1, backend=backend) as pool:
        results = pool.map(lambda _: release.wait(WAIT), range(3), timeout=0.05)
        with pytest.raises(TimeoutError):
            next(results)
        release.set()


def test_closing_map_cancels_tasks_not_started(backend: str, tmp_path: Path) -> None:
    """Closing the map iterator cancels what has not started, as Executor.map does."""
    started = Journal(tmp_path / "started")
    gate = Gate(tmp_path / "gate")

    def task(x: int) -> int:
        started.record(x)
        if x > 0:
            gate.wait(WAIT)
        return x

    with sp.Pool(1, backend=backend) as pool:
        results = pool.map(task, range(50))
        assert next(results) == 0
        started.wait_for(2)  # item 1 is running: the rest are queued
        results.close()
        gate.set()
    assert started.read() == [0, 1]


# --- imap: order, window, laziness ------------------------------------------------------


def test_imap_yields_in_input_order_despite_uneven_durations(backend: str) -> None:
    """Later items that finish first wait for their turn."""

    def task(x: int) -> int:
        time.sleep(0.002 * ((x * 7) % 5))
        return x

    with sp.Pool(4, backend=backend) as pool:
        assert list(pool.imap(task, range(40))) == list(range(40))


def test_imap_unordered_yields_every_result_once(backend: str) -> None:
    """ordered=False gives the same multiset of results in completion order."""
    with sp.Pool(3, backend=backend) as pool:
        assert sorted(pool.imap(square, range(50), ordered=False)) == [i * i for i in range(50)]


def test_imap_reads_nothing_before_it_is_advanced(backend: str) -> None:
    """imap is lazy: the input is not touched until the first next()."""
    source = Counting(100)
    with sp.Pool(2, backend=backend) as pool:
        results = pool.imap(square, source, window=5)
        assert source.read == 0
        assert next(results) == 0
        assert source.read == 1 + 5  # the yielded item, and a full window behind it
        results.close()


def test_imap_keeps_the_window_full_while_the_consumer_works(backend: str) -> None:
    """While the consumer holds an item, `window` more are read and in flight, no more."""
    source = Counting(1000)
    with sp.Pool(2, backend=backend) as pool:
        results = pool.imap(square, source, window=7)
        for expected in range(20):
            assert next(results) == expected * expected
            assert source.read == expected + 1 + 7
        results.close()


class Outstanding:
    """An input that records the most items read and not yet consumed (the consumer
    calls `consumed` for each result it takes)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.read = self.taken = self.most = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.read += 1
            self.most = max(self.most, self.read - self.taken)
            yield item

    def consumed(self) -> None:
        self.taken += 1


def test_the_default_window_adapts_within_its_bound(backend: str) -> None:
    """Without `window`, tiny tasks get a window that grows past 2 x workers (threads and
    processes hand out thousands of items a second here) but never past ADAPTIVE_MAX; the
    results stay complete and in order."""
    from steadypool._stream import ADAPTIVE_MAX

    source = Outstanding(list(range(5000)))
    with sp.Pool(2, backend=backend) as pool:
        for i, result in enumerate(pool.imap(square, source)):
            assert result == i * i
            source.consumed()
    assert source.taken == 5000
    assert source.most <= ADAPTIVE_MAX + 1  # the item being yielded, and a window behind it
    if backend != "ray":  # Ray's ~1 ms per call is not fast enough to need it
        assert source.most > 4 * (2 * 2) + 1  # grew at least twice from 2 x workers


def test_the_default_window_stays_within_its_memory_bound() -> None:
    """Items of 1 MiB: the adaptive window holds at most ADAPTIVE_BYTES of them (by
    sys.getsizeof), however fast they go."""
    from steadypool._stream import ADAPTIVE_BYTES

    source = Outstanding([bytes(1 << 20)] * 400)
    with sp.Pool(2) as pool:
        for result in pool.imap(len, source):
            assert result == 1 << 20
            source.consumed()
    assert 2 * 2 + 1 < source.most <= ADAPTIVE_BYTES // (1 << 20) + 1


def fail_or_hang(x: int, gate: Gate) -> int:
    """Tiny, except item 2500 raises and item 4000 hangs until `gate` is set."""
    if x == 2500:
        raise ValueError("bad item")
    if x == 4000:
        gate.wait(WAIT)
    return x


def test_errors_and_timeouts_stay_per_item_while_the_window_adapts(
    backend: str, tmp_path: Path
) -> None:
    """Thousands of tiny items grow the window; an error still names its input
    position, a hanging item times out alone (as one item, not as a chunk), and the
    order holds."""
    gate = Gate(tmp_path / "gate")
    with sp.Pool(2, backend=backend, task_timeout=1.0) as pool:
        try:
            out = list(pool.imap(partial(fail_or_hang, gate=gate), range(5000), on_error="return"))
        finally:
            gate.set()  # lets an abandoned thread end
        stats = pool.stats()
    assert len(out) == 5000
    assert isinstance(out[2500], ValueError)
    assert "input position 2500" in "".join(out[2500].__notes__)
    assert isinstance(out[4000], sp.TaskTimeout)
    rest = [x for i, x in enumerate(out) if i not in (2500, 4000)]
    assert rest == [i for i in range(5000) if i not in (2500, 4000)]
    assert (stats.failed, stats.timed_out) == (2, 1)


def tiny_then_gated(x: int, gate: Gate, started: Journal) -> int:
    """Tiny up to item 2999; from 3000 on, records its start and waits for `gate`."""
    if x >= 3000:
        started.record(x)
        gate.wait(WAIT)
    return x


def test_leaving_early_cancels_the_queue_of_a_grown_window(backend: str, tmp_path: Path) -> None:
    """The window has grown (tiny items) when the consumer leaves while two gated items
    (from 3000 on) run and up to a window more are queued: no queued one ever starts, on
    processes neither the item each worker process was sent ahead (it is withdrawn)."""
    gate, started = Gate(tmp_path / "gate"), Journal(tmp_path / "started")
    with sp.Pool(2, backend=backend) as pool:
        results = pool.imap(partial(tiny_then_gated, gate=gate, started=started), range(10**6))
        assert [next(results) for _ in range(3000)] == list(range(3000))
        running = started.wait_for(2)  # both workers hold a gated item; the rest waits
        results.close()
        gate.set()
    assert sorted(started.read()) == sorted(running)


def test_a_slow_input_does_not_hold_back_results_whose_turn_has_come(backend: str) -> None:
    """With an input that takes 0.2 s per item and quick tasks, result k is handed out
    before item k + 2 is read (every worker has an item by then), not after the whole
    window was filled from the slow input."""
    journal: list[str] = []

    def slow_input() -> Iterator[int]:
        for i in range(6):
            time.sleep(0.2)
            journal.append(f"read {i}")
            yield i

    with sp.Pool(2, backend=backend) as pool:
        assert list(pool.imap(square, range(4))) == [0, 1, 4, 9]  # workers started
        for i, result in enumerate(pool.imap(square, slow_input())):
            assert result == i * i
            journal.append(f"got {i}")
    for k in range(4):
        assert journal.index(f"got {k}") < journal.index(f"read {k + 2}"), journal


def test_imap_empty_input_yields_nothing(backend: str) -> None:
    """An empty input ends the stream at once."""
    with sp.Pool(2, backend=backend) as pool:
        assert list(pool.imap(square, [])) == []
        assert list(pool.imap_batches(square, [], 3)) == []


def test_imap_batches_yields_lists_and_a_short_last_batch(backend: str) -> None:
    """imap_batches groups results in order; the last batch holds the rest."""
    with sp.Pool(3, backend=backend) as pool:
        batches = list(pool.imap_batches(square, range(10), 4))
    assert batches == [[0, 1, 4, 9], [16, 25, 36, 49], [64, 81]]


def test_imap_batches_keeps_prefetch_plus_one_batches_in_flight(backend: str) -> None:
    """Like the seed's class: (prefetch + 1) * batch_size items read while a batch is out."""
    source = Counting(100)
    with sp.Pool(2, backend=backend) as pool:
        batches = pool.imap_batches(square, source, 4, prefetch=2)
        assert next(batches) == [0, 1, 4, 9]
        assert source.read == 4 + 3 * 4
        batches.close()


# --- errors -----------------------------------------------------------------------------


def test_imap_error_raises_with_position_and_cancels_what_is_queued(
    backend: str, tmp_path: Path
) -> None:
    """on_error='raise': the task's own exception, noted; queued items never run."""
    journal = Journal(tmp_path / "ran")

    def task(x: int) -> int:
        journal.record(x)
        if x == 5:
            raise KeyError(x)
        return x

    with sp.Pool(2, backend=backend) as pool:
        got: list[int] = []
        with pytest.raises(KeyError) as info:
            got.extend(pool.imap(task, range(1000), window=4))
        assert got == [0, 1, 2, 3, 4]
        assert max(journal.read()) <= 5 + 4 + 1  # nothing far behind the failure started
        assert any("input position 5" in n and "worker" in n for n in info.value.__notes__)
        # The pool stays usable after a task error.
        assert list(pool.imap(square, range(5))) == [0, 1, 4, 9, 16]


def test_imap_error_keeps_the_task_traceback(backend: str) -> None:
    """The traceback still shows the line in the task that raised."""

    def task(x: int) -> int:
        raise RuntimeError("deep inside the task")

    with sp.Pool(1, backend=backend) as pool, pytest.raises(RuntimeError) as info:
        next(pool.imap(task, [1]))
    # Threads: in the traceback itself; processes: in the remote traceback (__cause__).
    text = "".join(traceback.format_exception(info.value))
    assert ", in task\n" in text
    assert 'raise RuntimeError("deep inside the task")' in text


def test_imap_on_error_return_yields_the_exception_and_goes_on(backend: str) -> None:
    """on_error='return': the exception takes the result's place; the rest still comes."""
    with sp.Pool(2, backend=backend) as pool:
        out = list(pool.imap(fail_on(3), range(6), on_error="return"))
    assert out[:3] == [0, 1, 2]
    assert out[4:] == [4, 5]
    assert isinstance(out[3], ValueError)
    assert any("input position 3" in note for note in out[3].__notes__)


def test_imap_batches_on_error_return_keeps_batch_shape(backend: str) -> None:
    """A failed item stays in its batch slot as an exception object."""
    with sp.Pool(2, backend=backend) as pool:
        batches = list(pool.imap_batches(fail_on(2), range(5), 2, on_error="return"))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert isinstance(batches[1][0], ValueError)
    assert batches[1][1] == 3


def failing_input(n: int, bad: int) -> Iterator[int]:
    """Yields 0 .. bad-1, then raises (an input that breaks part-way)."""
    for i in range(n):
        if i == bad:
            raise OSError(f"input broke at {i}")
        yield i


@pytest.mark.parametrize("on_error", ["raise", "return"])
def test_imap_input_error_comes_after_every_result_read_before_it(
    backend: str, on_error: Literal["raise", "return"]
) -> None:
    """An input that raises: every item read before it is delivered, in order, then the
    input's own exception, with a note naming the position (like builtin map)."""
    got: list[Any] = []
    with sp.Pool(2, backend=backend) as pool, pytest.raises(OSError, match="broke at 6") as info:
        got.extend(pool.imap(square, failing_input(20, 6), window=4, on_error=on_error))
    assert got == [0, 1, 4, 9, 16, 25]
    assert any("input position 6" in note for note in info.value.__notes__)


@pytest.mark.parametrize("on_error", ["raise", "return"])
def test_imap_batches_input_error_comes_after_the_last_batch(
    backend: str, on_error: Literal["raise", "return"]
) -> None:
    """imap_batches: the full batches and the short one read before the input failed
    are yielded, then the input's exception."""
    got: list[list[Any]] = []
    with sp.Pool(2, backend=backend) as pool, pytest.raises(OSError, match="broke at 5"):
        got.extend(pool.imap_batches(square, failing_input(20, 5), 2, on_error=on_error))
    assert got == [[0, 1], [4, 9], [16]]


class Model:
    """Stands for something big a task uses or returns (weakly referenceable)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def forward(self, x: int) -> int:
        return self.value + x


def collected(ref: weakref.ref[Any]) -> bool:
    """Whether `ref`'s object is gone, allowing a moment for a worker to let go."""
    deadline = time.monotonic() + WAIT
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    return ref() is None


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_does_not_keep_results_it_yielded(backend: str, chunksize: int) -> None:
    """Once map() hands a result out, the pool holds no reference to it (CPython's
    test_free_reference)."""
    with sp.Pool(2, backend=backend) as pool:
        for obj in pool.map(Model, range(10), chunksize=chunksize):
            ref = weakref.ref(obj)
            del obj
            assert collected(ref)


def identity(obj: Any) -> Any:
    return obj


@pytest.mark.parametrize("batched", [False, True])
def test_an_open_stream_keeps_no_reference_to_what_it_handed_out(batched: bool) -> None:
    """While an imap stream (default, adaptive window) or an imap_batches stream is
    still open, the items and results it has handed out are not kept alive by it
    (threads: the result is the item itself, so one weak reference watches both)."""
    made: list[weakref.ref[Any]] = []

    def source() -> Iterator[Model]:
        for i in range(3000):
            model = Model(i)
            made.append(weakref.ref(model))
            yield model

    with sp.Pool(2) as pool:
        results: sp.Stream[Any] = (
            pool.imap_batches(identity, source(), 10) if batched else pool.imap(identity, source())
        )
        for _ in range(250 if batched else 2500):  # imap: past several window resizings
            next(results)
        handed = made[:2500]
        assert all(collected(ref) for ref in handed[-64:])  # the newest ones too
        results.close()


def test_a_finished_task_keeps_no_reference_to_its_function(backend: str) -> None:
    """A bound method's object (a model) is not kept alive by the pool once its task is
    done (CPython's test_no_stale_references)."""
    with sp.Pool(2, backend=backend) as pool:
        model = Model(1)
        ref = weakref.ref(model)
        assert pool.submit(model.forward, 2).result(WAIT) == 3
        assert list(pool.imap(model.forward, range(3))) == [1, 2, 3]
        del model
        assert collected(ref)


class RebuildFails(Exception):
    """Pickles, but cannot be unpickled: its __init__ needs more than its args."""

    def __init__(self, path: str, code: int) -> None:
        super().__init__(path)
        self.code = code


def raise_rebuild_fails(x: int) -> None:
    raise RebuildFails(f"/data/{x}", 2)


def test_an_exception_that_cannot_be_rebuilt_keeps_its_message_and_traceback(
    backend: str,
) -> None:
    """An exception that pickles but cannot be rebuilt arrives as RemoteError (type name,
    message, the worker's traceback), never as an UnpicklingError, and counts as failed."""
    with sp.Pool(1, backend=backend) as pool:
        out = list(pool.imap(raise_rebuild_fails, range(2), on_error="return"))
        assert pool.stats().failed == 2
    for i, error in enumerate(out):
        if backend == "threads":
            assert isinstance(error, RebuildFails)
            continue
        assert isinstance(error, sp.RemoteError), repr(error)
        assert error.type_name.endswith(".RebuildFails")
        assert error.message == f"/data/{i}"
        assert "raise_rebuild_fails" in error.traceback_text
        assert any(f"input position {i}" in note for note in error.__notes__)


def hang_at_1(x: int, gate: Gate) -> int:
    if x == 1:
        gate.wait(WAIT)
    return x


def signal_then_wait(running: Gate, gate: Gate) -> bool:
    running.set()
    return gate.wait(WAIT)


def test_stats_count_timed_out_items_as_done_and_failed(backend: str, tmp_path: Path) -> None:
    """An item failed by task_timeout counts in done and in failed."""
    gate = Gate(tmp_path / "gate")
    with sp.Pool(2, backend=backend, task_timeout=0.5) as pool:
        out = list(pool.imap(partial(hang_at_1, gate=gate), range(4), on_error="return"))
        assert isinstance(out[1], sp.TaskTimeout)
        stats = pool.stats()
        gate.set()  # lets an abandoned thread end
    assert (stats.done, stats.failed, stats.timed_out) == (4, 1, 1)
    assert sum(w.failed for w in stats.workers) == 1


def test_stats_queued_counts_work_only(backend: str, tmp_path: Path) -> None:
    """queued counts items waiting for a worker, never the pool's own stop signals."""
    gate, running = Gate(tmp_path / "gate"), Gate(tmp_path / "running")
    pool = sp.Pool(1, backend=backend)
    try:
        futures = [pool.submit(signal_then_wait, running, gate) for _ in range(4)]
        assert running.wait(WAIT)
        pool.shutdown(wait=False)
        assert pool.stats().queued == 3
    finally:
        gate.set()
    assert [f.result(WAIT) for f in futures] == [True] * 4
    pool.shutdown(wait=True)
    assert pool.stats().queued == 0


def stuck_in_setup(gate: Gate) -> None:
    """Stands for a setup that never returns (a model load waiting on a dead share)."""
    gate.wait(60)


def setup_stuck(gate: Gate, only: int | None = None, once: Gate | None = None) -> Any:
    """A setup that hangs (on worker `only`, or on all; with `once`, only the first time)."""

    def setup(worker: sp.Worker) -> None:
        if only is not None and worker.index != only:
            return
        if once is not None:
            if once.is_set():
                return
            once.set()
        stuck_in_setup(gate)

    return setup


@pytest.mark.parametrize("limit", ["stall_timeout", "task_timeout"])
def test_a_setup_that_hangs_breaks_the_pool_naming_its_frame(
    backend: str, limit: str, tmp_path: Path
) -> None:
    """Setup is watched like a task: past task_timeout, or in a stall with
    on_stall='raise', the consumer gets BrokenPool whose cause names setup's frame."""
    gate = Gate(tmp_path / "gate")
    # A Ray actor's setup is timed from the actor's creation: give it time to start.
    seconds = 5.0 if backend == "ray" else 0.5
    options: dict[str, Any] = (
        {"stall_timeout": seconds, "on_stall": "raise"}
        if limit == "stall_timeout"
        else {"task_timeout": 2 * seconds}
    )
    try:
        with sp.Pool(2, backend=backend, setup=setup_stuck(gate), **options) as pool:
            with pytest.raises(sp.BrokenPool, match="setup") as info:
                list(pool.imap(abs, range(4)))
            cause = info.value.__cause__
            assert isinstance(cause, sp.StallError if limit == "stall_timeout" else sp.TaskTimeout)
            text = "".join(traceback.format_exception(cause))
            assert "setup(worker)" in text
            assert "stuck_in_setup" in text
    finally:
        gate.set()


def test_a_worker_stuck_in_setup_is_reported_while_the_others_work(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One of two workers never finishes setup: the pool runs on the other, and the
    stuck setup is reported (its frame named) instead of passing in silence."""
    gate = Gate(tmp_path / "gate")
    try:
        with sp.Pool(
            2, backend=backend, setup=setup_stuck(gate, only=1), stall_timeout=0.5
        ) as pool:
            with caplog.at_level(logging.WARNING, logger="steadypool"):
                assert list(pool.imap(square, range(6))) == [x * x for x in range(6)]
                deadline = time.monotonic() + WAIT
                while "stuck_in_setup" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.05)  # the report comes on the watchdog's own tick
            gate.set()
    finally:
        gate.set()
    assert "worker 1" in caplog.text
    assert "has run setup(worker)" in caplog.text
    assert "stuck_in_setup" in caplog.text


# --- abandoning, shutdown ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["break", "close", "garbage"])
def test_abandoning_imap_cancels_queued_tasks(backend: str, how: str, tmp_path: Path) -> None:
    """break, close() or garbage collection: queued tasks are skipped, not run."""
    journal = Journal(tmp_path / "ran")
    gate = Gate(tmp_path / "gate")

    def task(x: int) -> int:
        gate.wait(WAIT)
        journal.record(x)
        return x

    with sp.Pool(1, backend=backend) as pool:
        results = pool.imap(task, range(10_000), window=20)
        gate.set()
        if how == "break":
            for x in results:
                if x == 3:
                    break
            del results
        else:
            assert next(results) == 0
            if how == "close":
                results.close()
            else:
                del results
                gc.collect()
    # Shutdown ran whatever was still queued: only what was running, nothing skipped.
    assert len(journal.read()) <= 4 + 20 + 1


@pytest.mark.parametrize("kind", ["imap", "map"])
def test_shutdown_cancel_futures_wakes_a_waiting_stream(
    backend: str, kind: str, tmp_path: Path
) -> None:
    """A stream (or a map, as with the stdlib executors) whose queued items are
    cancelled by shutdown raises CancelledError at their turn, after delivering what
    was already running."""
    gate = Gate(tmp_path / "gate")
    pool = sp.Pool(1, backend=backend)

    def task(x: int) -> int:
        return x if x == 0 else gate.wait(WAIT) and x

    results = pool.imap(task, range(10), window=5) if kind == "imap" else pool.map(task, range(10))
    assert next(results) == 0  # now 1 runs (blocked on the gate) and the rest are queued
    got: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            got.extend(results)
        except BaseException as exc:
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert got == [1]
    assert len(errors) == 1
    assert isinstance(errors[0], CancelledError)
    pool.shutdown(wait=True)


def test_stream_on_a_pool_shut_down_under_it_delivers_then_raises(backend: str) -> None:
    """shutdown() without cancel: what is in flight still arrives, then RuntimeError."""
    pool = sp.Pool(1, backend=backend)
    results = pool.imap(square, range(100), window=3)
    assert next(results) == 0
    pool.shutdown(wait=True)
    assert [next(results) for _ in range(3)] == [1, 4, 9]
    with pytest.raises(RuntimeError, match="after shutdown"):
        next(results)


def test_shutdown_cancel_futures_cancels_queued_futures(backend: str, tmp_path: Path) -> None:
    """Queued futures end cancelled, and wait() sees them done."""
    gate, running = Gate(tmp_path / "gate"), Gate(tmp_path / "running")
    pool = sp.Pool(1, backend=backend)

    def first_task() -> bool:
        running.set()
        return gate.wait(WAIT)

    first = pool.submit(first_task)
    assert running.wait(WAIT)
    queued = [pool.submit(square, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert first.result(WAIT) is True
    _done, not_done = wait(queued, timeout=WAIT)
    assert not not_done
    assert all(f.cancelled() for f in queued)
    pool.shutdown()


def test_shutdown_runs_what_is_queued_and_then_refuses_work(backend: str) -> None:
    """shutdown(wait=True) finishes queued work; afterwards nothing can be submitted."""
    pool = sp.Pool(2, backend=backend)
    futures = [pool.submit(square, i) for i in range(100)]
    pool.shutdown()
    assert [f.result(0) for f in futures] == [i * i for i in range(100)]
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.imap(square, [1])
    pool.shutdown()  # idempotent


def test_a_pool_never_shut_down_stops_when_collected(backend: str) -> None:
    """A pool dropped without shutdown() does not leak its threads."""
    pool = sp.Pool(3, backend=backend)
    assert pool.submit(square, 3).result(WAIT) == 9
    del pool
    gc.collect()  # the leak check then waits for the threads to exit


def test_stream_keeps_its_pool_alive(backend: str) -> None:
    """Iterating Pool(...).imap(...) without keeping the pool still runs to the end."""
    assert list(sp.Pool(2, backend=backend).imap(square, range(30))) == [i * i for i in range(30)]
    gc.collect()


# --- workers, setup, devices ------------------------------------------------------------


def test_setup_runs_once_per_worker_and_tasks_see_their_state(backend: str, tmp_path: Path) -> None:
    """setup(worker)'s return value is current_worker().state in that worker's tasks."""
    calls = Journal(tmp_path / "setup")

    def setup(worker: sp.Worker) -> str:
        calls.record(worker.index)
        assert sp.current_worker().index == worker.index
        return f"replica-{worker.index}"

    def task(_: int) -> tuple[int, str]:
        worker = sp.current_worker()
        return worker.index, worker.state

    with sp.Pool(3, setup=setup, backend=backend) as pool:
        seen = set(pool.imap(task, range(60)))
    assert sorted(calls.read()) == [0, 1, 2]
    assert all(state == f"replica-{index}" for index, state in seen)


def test_devices_give_one_worker_per_entry(backend: str) -> None:
    """devices= pins worker i to devices[i]; repeats put several workers on one device."""
    with sp.Pool(devices=["cpu", "CPU:0", "cpu"], backend=backend, setup=lambda w: 0) as pool:
        assert pool.workers == 3
        assert pool.devices == ("cpu", "cpu:0", "cpu")
        seen = set(pool.map(lambda _: sp.current_worker().device, range(30)))
    assert seen <= {"cpu", "cpu:0"}


def test_current_worker_outside_a_task_says_so() -> None:
    """Outside a task there is no current worker, and the message says where to call it."""
    with pytest.raises(RuntimeError, match="outside a steadypool task"):
        sp.current_worker()


def test_failing_setup_breaks_the_pool_with_the_cause(backend: str) -> None:
    """A setup error surfaces as BrokenPool (its cause the setup's error), never a hang."""

    def setup(worker: sp.Worker) -> None:
        raise OSError(f"no such device for worker {worker.index}")

    with sp.Pool(2, setup=setup, backend=backend) as pool:
        with pytest.raises(sp.BrokenPool, match="setup") as info:
            list(pool.imap(square, range(10), on_error="return"))
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(sp.BrokenPool):
            pool.submit(square, 1).result(WAIT)


# --- progress ---------------------------------------------------------------------------


def test_progress_bar_counts_items_with_total(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=True draws a tqdm bar over imap with the input's length as total."""
    with sp.Pool(2, backend=backend, progress=True) as pool:
        assert len(list(pool.imap_batches(square, list(range(12)), 5))) == 3
    err = capsys.readouterr().err
    assert "12/12" in err


def _gated(x: int, gate: Gate | None) -> int:
    if gate is not None:
        assert gate.wait(WAIT)
    return x


def test_results_before_a_long_task_are_not_held_back(backend: str, tmp_path: Path) -> None:
    """Results of short tasks travel in batches (processes, Ray), but none waits for
    the next task to end: with tiny tasks sent to the worker between two long ones, the
    tiny ones' futures complete while the second long one still runs."""
    first, second = Gate(tmp_path / "first"), Gate(tmp_path / "second")
    with sp.Pool(1, backend=backend) as pool:
        assert list(pool.map(_gated, range(500), [None] * 500)) == list(range(500))
        head = pool.submit(_gated, -1, first)  # the child holds it and what follows
        tiny = [pool.submit(_gated, i, None) for i in range(50)]
        tail = pool.submit(_gated, -2, second)
        first.set()
        try:
            assert [f.result(timeout=WAIT) for f in tiny] == list(range(50))
            assert not tail.done()
        finally:
            second.set()
        assert (head.result(timeout=WAIT), tail.result(timeout=WAIT)) == (-1, -2)


def _gated_or_echo(x: Any, gate: Gate | None) -> Any:
    if gate is not None:
        assert gate.wait(WAIT)
    return x


def test_a_delivered_item_keeps_no_reference_to_its_arguments(backend: str, tmp_path: Path) -> None:
    """Items sent to a worker in a batch (processes, Ray): once an item's outcome is
    delivered, the pool lets go of its arguments, though a long item of the same batch
    still runs."""
    gate = Gate(tmp_path / "gate")
    with sp.Pool(1, backend=backend) as pool:
        assert list(pool.map(_gated_or_echo, range(500), [None] * 500)) == list(range(500))
        blocker = pool.submit(_gated_or_echo, 0, None)  # a short one, then the batch:
        args = [Model(i) for i in range(20)]
        refs = [weakref.ref(a) for a in args]
        tiny = [pool.submit(_gated_or_echo, a, None) for a in args]
        tail = pool.submit(_gated_or_echo, -1, gate)
        try:
            assert blocker.result(timeout=WAIT) == 0
            assert [f.result(timeout=WAIT).value for f in tiny] == list(range(20))
            del args, tiny
            assert all(collected(ref) for ref in refs)
            assert not tail.done()
        finally:
            gate.set()
        assert tail.result(timeout=WAIT) == -1
