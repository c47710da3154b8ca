"""The fault table (issue 17): every way an item can go wrong on its way to a worker,
in it and back, crossed with 1, 2, 5 and 13 workers, on every backend where it applies.

The model is loky's ``crash_cases``/``test_crash_races`` and pebble's pickling,
frozen-exception and deadlock-on-result tests; steadypool's answer differs on purpose:
loky breaks the pool, steadypool fails the one item and goes on.  Every case checks
(a) the faulty item's own error (type, message, a note naming its position), (b) every
other item's result, in order, (c) that the pool still runs work afterwards and (d)
that the ``with`` block exits with nothing left running (the conftest leak check), all
under a hard timeout that reports a hang as a hang.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

import steadypool as sp

from ._faults import (
    CrashAtUnpickle,
    ErrorAtPickle,
    ErrorAtPickleError,
    ErrorAtUnpickle,
    ErrorAtUnpickleError,
    ExitAtPickle,
    ExitAtPickleError,
    ExitAtUnpickle,
    ExitAtUnpickleError,
    Fault,
    FrozenError,
    Gate,
    HoldsLock,
    KillAtPickle,
    Stages,
    UnpicklableError,
    apply,
    exit_now,
    hang,
    kill_self,
    raise_instance,
    raise_system_exit,
    raise_unrebuildable,
    raise_value_error,
    return_instance,
    segfault,
    within,
)
from .conftest import BACKENDS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

ITEMS = 30
AT = 15  # the faulty item's input position
WAIT = 30.0  # seconds for one result
SCENARIO = 45.0  # seconds for a whole case: start, the stream, a round trip, the exit

NOT_PICKLED = "threads pass items, results and exceptions by reference: nothing is pickled"
ENDS_PROCESS = "on threads the task runs in the test's own process, which it would end"


@dataclass(frozen=True)
class Case:
    """One row of the fault table."""

    item: Callable[[Gate], object]  # what sits at position AT instead of AT
    expected: tuple[type[BaseException], ...]  # the types its outcome may have
    text: str = ""  # what its message must contain
    ray_text: str | None = None  # on Ray, if different (Ray does not give exit codes)
    options: dict[str, Any] = field(default_factory=dict)  # the pool's options
    threads: str = ""  # why the case cannot apply to threads ("" if it does)
    noted: bool = True  # whether a note can be added (not to a frozen exception)


def _fault(act: Callable[[], object]) -> Callable[[Gate], object]:
    return lambda gate: Fault(act)


CRASHED = (sp.WorkerCrashed,)
# Ray reports an actor's death without its exit code or signal (README: processes name
# them); the message must still name the item.
NAMED = f"item {AT}"
PICKLING = (pickle.PicklingError,)
# An object that fails while it is rebuilt: its own error, or a RemoteError carrying it.
REBUILDING = (pickle.UnpicklingError, sp.RemoteError)

CASES: dict[str, Case] = {
    # The task itself.
    "raise": Case(_fault(raise_value_error), (ValueError,), "task failed on purpose"),
    "hang": Case(
        lambda gate: Fault(partial(hang, gate)),
        (sp.TaskTimeout,),
        "longer than task_timeout",
        options={"task_timeout": 0.5},
    ),
    # A task's own exception keeps its type, also a BaseException (loky: SystemExit).
    "sys_exit": Case(_fault(raise_system_exit), (SystemExit,)),
    "os_exit": Case(
        _fault(partial(exit_now, 3)), CRASHED, "exit code 3", ray_text=NAMED, threads=ENDS_PROCESS
    ),
    "sigkill": Case(
        _fault(kill_self), CRASHED, "SIGKILL (-9)", ray_text=NAMED, threads=ENDS_PROCESS
    ),
    "segfault": Case(
        _fault(segfault), CRASHED, "SIGSEGV (-11)", ray_text=NAMED, threads=ENDS_PROCESS
    ),
    # The argument, pickled in the parent and rebuilt in the worker.  README: "an
    # argument that cannot be pickled fails its item (naming the argument)".
    "unpicklable_argument": Case(
        lambda gate: HoldsLock(), PICKLING, "argument 0, HoldsLock()", threads=NOT_PICKLED
    ),
    "error_at_pickle_argument": Case(
        lambda gate: ErrorAtPickle(), PICKLING, "argument 0", threads=NOT_PICKLED
    ),
    # SystemExit out of pickle is the pickling's failure, not the caller's exit (loky).
    "exit_at_pickle_argument": Case(
        lambda gate: ExitAtPickle(), PICKLING, "argument 0", threads=NOT_PICKLED
    ),
    "error_at_unpickle_argument": Case(
        lambda gate: ErrorAtUnpickle(), REBUILDING, "ErrorAtUnpickle", threads=NOT_PICKLED
    ),
    # A Python exception while rebuilding must not take the worker down (hole 17).
    "exit_at_unpickle_argument": Case(
        lambda gate: ExitAtUnpickle(), (*REBUILDING, SystemExit), threads=NOT_PICKLED
    ),
    "crash_at_unpickle_argument": Case(
        lambda gate: CrashAtUnpickle(),
        CRASHED,
        "SIGSEGV (-11)",
        ray_text=NAMED,
        threads=NOT_PICKLED,
    ),
    # The result, pickled in the worker and rebuilt in the parent.  README: "so does a
    # result that cannot be pickled back".
    "unpicklable_result": Case(
        _fault(partial(return_instance, HoldsLock)), PICKLING, threads=NOT_PICKLED
    ),
    "error_at_pickle_result": Case(
        _fault(partial(return_instance, ErrorAtPickle)), PICKLING, threads=NOT_PICKLED
    ),
    "exit_at_pickle_result": Case(
        _fault(partial(return_instance, ExitAtPickle)), (*PICKLING, SystemExit), threads=NOT_PICKLED
    ),
    # The worker dies while its finished item's result is on the way (hole 15).
    "kill_at_pickle_result": Case(
        _fault(partial(return_instance, KillAtPickle)),
        CRASHED,
        "SIGKILL (-9)",
        ray_text=NAMED,
        threads=NOT_PICKLED,
    ),
    "error_at_unpickle_result": Case(
        _fault(partial(return_instance, ErrorAtUnpickle)),
        REBUILDING,
        "ErrorAtUnpickle",
        threads=NOT_PICKLED,
    ),
    "exit_at_unpickle_result": Case(
        _fault(partial(return_instance, ExitAtUnpickle)),
        (*REBUILDING, SystemExit),
        threads=NOT_PICKLED,
    ),
    # The exception, pickled in the worker and rebuilt in the parent.  README: "one that
    # cannot be pickled comes back as steadypool.RemoteError".
    "unpicklable_exception": Case(
        _fault(partial(raise_instance, UnpicklableError)),
        (sp.RemoteError,),
        "UnpicklableError: holds a lock",
        threads=NOT_PICKLED,
    ),
    "unrebuildable_exception": Case(
        _fault(raise_unrebuildable),
        (sp.RemoteError,),
        "UnrebuildableError: a (b)",
        threads=NOT_PICKLED,
    ),
    "error_at_pickle_exception": Case(
        _fault(partial(raise_instance, ErrorAtPickleError)),
        (sp.RemoteError,),
        "ErrorAtPickleError",
        threads=NOT_PICKLED,
    ),
    "exit_at_pickle_exception": Case(
        _fault(partial(raise_instance, ExitAtPickleError)),
        (sp.RemoteError,),
        "ExitAtPickleError",
        threads=NOT_PICKLED,
    ),
    "error_at_unpickle_exception": Case(
        _fault(partial(raise_instance, ErrorAtUnpickleError)),
        (sp.RemoteError,),
        "ErrorAtUnpickleError",
        threads=NOT_PICKLED,
    ),
    "exit_at_unpickle_exception": Case(
        _fault(partial(raise_instance, ExitAtUnpickleError)),
        (sp.RemoteError,),
        "ExitAtUnpickleError",
        threads=NOT_PICKLED,
    ),
    # pebble's FrozenError: nothing can be set on it, not even a note or __cause__.
    "frozen_exception": Case(
        _fault(partial(raise_instance, FrozenError)), (FrozenError,), noted=False
    ),
}
PICKLING_CASES = [name for name, case in CASES.items() if case.threads == NOT_PICKLED]


def _combos(counts: dict[str, tuple[list[int], list[int]]]) -> list[Any]:
    """(backend, workers) pairs: the first list runs by default, the second is slow."""
    params: list[Any] = []
    for backend in BACKENDS:
        fast, slow = counts[backend]
        marks = [pytest.mark.ray] if backend == "ray" else []
        params += [pytest.param(backend, n, marks=marks, id=f"{backend}-{n}") for n in fast]
        params += [
            pytest.param(backend, n, marks=[*marks, pytest.mark.slow], id=f"{backend}-{n}")
            for n in slow
        ]
    return params


# Threads are cheap; a process pool of 13 costs seconds to start on a small machine; a
# Ray actor costs about a second each, so Ray runs 2 workers by default.
TABLE = _combos(
    {"threads": ([1, 13], [2, 5]), "processes": ([1, 2], [5, 13]), "ray": ([2], [1, 5, 13])}
)
ONE = _combos({"threads": ([2], []), "processes": ([2], []), "ray": ([2], [])})


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.set()  # releases a hung task (an abandoned thread) before the leak check


def _items(case: Case, gate: Gate) -> list[object]:
    return [case.item(gate) if i == AT else i for i in range(ITEMS)]


def _check_own_error(case: Case, outcome: object, backend: str, *, submitted: bool = False) -> None:
    """(a) the faulty item's outcome: the expected type, message and note (a submitted
    task has no input position: its note and a crash message say "a task")."""
    assert isinstance(outcome, BaseException), f"item {AT} gave {outcome!r}, not an error"
    assert isinstance(outcome, case.expected), f"item {AT}: wrong exception {outcome!r}"
    text = case.ray_text if backend == "ray" and case.ray_text is not None else case.text
    if submitted and text == NAMED:
        text = "a submitted task"
    assert text in str(outcome), f"item {AT}: {text!r} not in {str(outcome)!r}"
    if case.noted:
        where = "raised by a task" if submitted else f"input position {AT}"
        notes = getattr(outcome, "__notes__", [])
        assert any(where in note for note in notes), notes


def _check_others(outcomes: list[object]) -> None:
    """(b) every other item's result, in order."""
    assert len(outcomes) == ITEMS, f"{len(outcomes)} outcomes for {ITEMS} items"
    lost = {i: o for i, o in enumerate(outcomes) if i != AT and o != i}
    assert not lost, f"other items' outcomes wrong or lost: {lost}"


def _usable(pool: sp.Pool, stages: Stages) -> None:
    """(c) the pool runs work after the fault."""
    stages("a submit round trip after the fault")
    assert pool.submit(abs, -5).result(WAIT) == 5


def _pool(backend: str, workers: int, case: Case) -> sp.Pool:
    return sp.Pool(workers, backend=backend, **case.options)


def _skip_threads(backend: str, case: Case) -> None:
    if backend == "threads" and case.threads:
        pytest.skip(case.threads)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(("backend", "workers"), TABLE, indirect=["backend"])
def test_fault_table_imap(backend: str, workers: int, name: str, gate: Gate) -> None:
    """imap(on_error="return") over 30 items with one fault at position 15: the item
    gets its own error, the other 29 their results in order, the pool runs work after,
    and the with block exits with nothing left running."""
    case = CASES[name]
    _skip_threads(backend, case)
    items = _items(case, gate)

    def body(stages: Stages) -> list[object]:
        with stages.open(_pool(backend, workers, case)) as pool:
            stages("imap")
            outcomes = list(pool.imap(apply, items, on_error="return"))
            _usable(pool, stages)
            stages("the with block's exit")
        return outcomes

    outcomes = within(SCENARIO, body)
    _check_others(outcomes)
    _check_own_error(case, outcomes[AT], backend)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(("backend", "workers"), ONE, indirect=["backend"])
def test_fault_table_submit(backend: str, workers: int, name: str, gate: Gate) -> None:
    """The same table through submit: every future resolves (none stays pending or
    running), the faulty one with its own error, and a fault never escapes submit()."""
    case = CASES[name]
    _skip_threads(backend, case)
    items = _items(case, gate)

    def body(stages: Stages) -> list[object]:
        with stages.open(_pool(backend, workers, case)) as pool:
            stages("submit")
            futures = [pool.submit(apply, item) for item in items]
            outcomes: list[object] = []
            for i, future in enumerate(futures):
                stages(f"the result of future {i}")
                error = future.exception(WAIT)
                outcomes.append(error if error is not None else future.result(0))
            _usable(pool, stages)
            stages("the with block's exit")
        return outcomes

    outcomes = within(SCENARIO, body)
    _check_others(outcomes)
    _check_own_error(case, outcomes[AT], backend, submitted=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["raise", *PICKLING_CASES])
@pytest.mark.parametrize(
    ("backend", "workers"), [p for p in ONE if p.values[0] != "threads"], indirect=["backend"]
)
def test_fault_table_map_chunks(backend: str, workers: int, name: str, gate: Gate) -> None:
    """map(chunksize=10) with a pickling fault at position 15 (hole 7; "raise" is the
    control that works today): the results
    before it, the chunk's earlier ones included, are all delivered, then its own error
    naming position 15; the pool runs work after."""
    case = CASES[name]
    items = _items(case, gate)

    def body(stages: Stages) -> tuple[list[object], BaseException | None]:
        got: list[object] = []
        error: BaseException | None = None
        with stages.open(_pool(backend, workers, case)) as pool:
            stages("map")
            try:
                got.extend(pool.map(apply, items, timeout=WAIT, chunksize=10))  # keeps a prefix
            except Exception as exc:
                error = exc
            _usable(pool, stages)
            stages("the with block's exit")
        return got, error

    got, error = within(SCENARIO, body)
    assert got == list(range(AT)), f"results before the fault lost: {got}"
    _check_own_error(case, error, backend)
