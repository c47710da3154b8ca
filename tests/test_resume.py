"""Resumable streams: the pure bookkeeping (`_resume`), and `state_dict`, `resume=` and
`checkpoint=` on every backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, overload

import pytest
from hypothesis import given
from hypothesis import strategies as st

import steadypool as sp
from steadypool._resume import (
    Consumed,
    load_state,
    make_state,
    parse_state,
    save_state,
    skip_consumed,
)

from ._faults import Journal

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


# --- the pure layer -------------------------------------------------------------------


@given(st.lists(st.integers(0, 200), unique=True))
def test_consumed_positions_round_trip_as_ranges(positions: list[int]) -> None:
    """Positions added in any order are exactly those the ranges cover, the ranges are
    sorted, disjoint and maximal, and rebuilding from them gives the same set."""
    consumed = Consumed()
    for position in positions:
        consumed.add(position)
    ranges = consumed.ranges()
    covered = [p for start, stop in ranges for p in range(start, stop)]
    assert covered == sorted(positions)
    assert all(a[1] < b[0] for a, b in pairwise(ranges))
    assert len(consumed) == len(positions)
    again = Consumed(ranges)
    assert again.ranges() == ranges
    assert all(p in again for p in positions)
    assert all(p not in again for p in range(202) if p not in positions)


def test_a_state_is_json_and_refused_for_another_mode_or_length() -> None:
    """A state survives JSON; one of the other mode, of another input length, or that is
    not a state at all is refused with a message saying which."""
    ordered = json.loads(json.dumps(make_state(ordered=True, length=10, consumed=4)))
    assert parse_state(ordered, ordered=True, length=10) == 4
    assert parse_state(ordered, ordered=True, length=None) == 4  # a generator this time
    consumed = Consumed([(0, 3), (5, 6)])
    unordered = json.loads(json.dumps(make_state(ordered=False, length=None, consumed=consumed)))
    parsed = parse_state(unordered, ordered=False, length=10)
    assert isinstance(parsed, Consumed)
    assert parsed.ranges() == [[0, 3], [5, 6]]
    with pytest.raises(ValueError, match="saved by an ordered stream and this one is unordered"):
        parse_state(ordered, ordered=False, length=10)
    with pytest.raises(ValueError, match="input of 10 items and this input has 11"):
        parse_state(ordered, ordered=True, length=11)
    with pytest.raises(ValueError, match="not a steadypool stream state"):
        parse_state({"consumed": 3}, ordered=True, length=None)
    with pytest.raises(ValueError, match="malformed"):
        parse_state({**ordered, "consumed": [1]}, ordered=True, length=None)
    with pytest.raises(ValueError, match="up to position 7 of an input of 6"):
        parse_state({**unordered, "consumed": [[0, 7]]}, ordered=False, length=6)


class Guarded(Sequence[int]):
    """A sequence that fails the test if a consumed position is indexed."""

    def __init__(self, length: int, forbidden: set[int]) -> None:
        self.length, self.forbidden = length, forbidden

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        assert isinstance(index, int)
        assert index not in self.forbidden, f"consumed position {index} was read"
        if index >= self.length:
            raise IndexError(index)
        return index

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("a sequence is indexed, not iterated from the start")


def test_skipping_indexes_a_sequence_and_discards_from_an_iterator() -> None:
    """Ordered: items from the consumed count on; unordered: (position, item) of the
    positions not consumed.  A Sequence never has a consumed position read."""
    source, keyed = skip_consumed(Guarded(8, {0, 1, 2}), 3)
    assert (list(source), keyed) == ([3, 4, 5, 6, 7], False)
    consumed = Consumed([(0, 2), (4, 6)])
    source, keyed = skip_consumed(Guarded(8, {0, 1, 4, 5}), consumed)
    assert (list(source), keyed) == ([(2, 2), (3, 3), (6, 6), (7, 7)], True)
    source, _ = skip_consumed(iter("abcdefgh"), 3)
    assert list(source) == list("defgh")
    source, _ = skip_consumed(iter("abcdefgh"), consumed)
    assert list(source) == [(2, "c"), (3, "d"), (6, "g"), (7, "h")]


def test_a_state_file_is_replaced_whole(tmp_path: Path) -> None:
    """save_state leaves the new state and no temp file; load_state reads it back, says
    None for no file, and refuses a file that is not a state."""
    path = tmp_path / "job.json"
    assert load_state(path) is None
    save_state(path, make_state(ordered=True, length=None, consumed=1))
    save_state(path, make_state(ordered=True, length=None, consumed=2))
    assert load_state(path) == make_state(ordered=True, length=None, consumed=2)
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]
    path.write_text("garbage")
    with pytest.raises(ValueError, match="not a stream state"):
        load_state(path)


# --- on every backend -------------------------------------------------------------------


def record(x: int, journal: Journal) -> int:
    journal.record(x)
    return x * x


def test_a_resumed_stream_runs_only_what_was_not_consumed(backend: str, tmp_path: Path) -> None:
    """An item is consumed when the next one is asked for; a stream resumed from the
    state skips the consumed items without running them and yields the rest in order."""
    first, second = Journal(tmp_path / "first"), Journal(tmp_path / "second")
    with sp.Pool(2, backend=backend) as pool:
        stream = pool.imap(partial(record, journal=first), range(40), window=4)
        assert stream.state_dict()["count"] == 0
        got = [next(stream) for _ in range(10)]
        state = stream.state_dict()  # item 9 is handed out, not consumed
        stream.close()
        assert state["count"] == 9
        assert json.loads(json.dumps(state)) == state
        rest = list(pool.imap(partial(record, journal=second), range(40), window=4, resume=state))
    assert got + rest[1:] == [x * x for x in range(40)]
    assert rest[0] == 81  # item 9 again: it was not consumed
    assert min(second.read()) == 9  # nothing consumed ran again
    assert sorted(second.read()) == list(range(9, 40))


def test_an_unordered_stream_resumes_from_its_consumed_positions(
    backend: str, tmp_path: Path
) -> None:
    """ordered=False saves the consumed positions themselves; the resumed stream runs and
    yields exactly the others, each once."""
    first, second = Journal(tmp_path / "first"), Journal(tmp_path / "second")
    with sp.Pool(3, backend=backend) as pool:
        stream = pool.imap(partial(record, journal=first), iter(range(60)), ordered=False)
        got = [next(stream) for _ in range(25)]
        state = stream.state_dict()
        stream.close()
        assert state["mode"] == "unordered"
        consumed = [p for start, stop in state["consumed"] for p in range(start, stop)]
        assert sorted(x * x for x in consumed) == sorted(got[:-1])
        rest = list(
            pool.imap(partial(record, journal=second), iter(range(60)), ordered=False, resume=state)
        )
    assert sorted(got[:-1] + rest) == [x * x for x in range(60)]
    assert not set(second.read()) & set(consumed)


def test_batches_resume_at_a_batch_boundary(backend: str) -> None:
    """imap_batches: a batch is consumed when the next one is asked for; the resumed
    stream's batches continue where they stopped."""
    with sp.Pool(2, backend=backend) as pool:
        stream = pool.imap_batches(abs, range(-20, 0), 6)
        assert next(stream) == [20, 19, 18, 17, 16, 15]
        assert next(stream) == [14, 13, 12, 11, 10, 9]
        state = stream.state_dict()
        stream.close()
        rest = list(pool.imap_batches(abs, range(-20, 0), 6, resume=state))
    assert state["count"] == 6
    assert rest == [[14, 13, 12, 11, 10, 9], [8, 7, 6, 5, 4, 3], [2, 1]]


def test_a_state_of_another_input_or_mode_is_refused_before_work_starts() -> None:
    """resume= with a state of another length or mode raises at the call; resume= and
    checkpoint= together are refused."""
    with sp.Pool(1) as pool:
        stream = pool.imap(abs, range(10))
        next(stream)
        next(stream)
        state = stream.state_dict()
        stream.close()
        with pytest.raises(ValueError, match="input of 10 items and this input has 11"):
            pool.imap(abs, range(11), resume=state)
        with pytest.raises(ValueError, match="this one is unordered"):
            pool.imap(abs, range(10), ordered=False, resume=state)
        with pytest.raises(ValueError, match="not both"):
            pool.imap(abs, range(10), resume=state, checkpoint="x.json")
        with pytest.raises(ValueError, match="checkpoint_every"):
            pool.imap(abs, range(10), checkpoint="x.json", checkpoint_every=-1)


def test_checkpoint_saves_by_itself_and_a_rerun_resumes(backend: str, tmp_path: Path) -> None:
    """checkpoint=PATH: the state is saved when the stream ends (here: closed early) and
    while it runs (checkpoint_every=0: before each item); a rerun with the same path
    runs only what was not consumed, and a finished job's rerun yields nothing."""
    path, journal = tmp_path / "job.json", Journal(tmp_path / "ran")
    fn = partial(record, journal=journal)
    with sp.Pool(2, backend=backend) as pool:
        stream = pool.imap(fn, range(30), window=3, checkpoint=path, checkpoint_every=0)
        assert [next(stream) for _ in range(5)] == [0, 1, 4, 9, 16]
        assert json.loads(path.read_text())["count"] == 4  # saved before item 4 was handed
        del stream  # garbage collected: cancelled, and the state saved a last time
        assert json.loads(path.read_text())["count"] == 4
        before = len(journal.read())
        rest = list(pool.imap(fn, range(30), window=3, checkpoint=path))
        assert rest == [x * x for x in range(4, 30)]
        assert json.loads(path.read_text())["count"] == 30
        assert list(pool.imap(fn, range(30), checkpoint=path)) == []
    assert sorted(journal.read()[before:]) == list(range(4, 30))


def test_a_stream_is_an_iterator_that_ends_once(backend: str) -> None:
    """After it is exhausted, failed or closed, next() raises StopIteration, as a
    generator does; state_dict still answers."""
    with sp.Pool(2, backend=backend) as pool:
        stream = pool.imap(abs, [1, -2])
        assert iter(stream) is stream
        assert list(stream) == [1, 2]
        with pytest.raises(StopIteration):
            next(stream)
        assert stream.state_dict()["count"] == 2
        failing = pool.imap(partial(divmod, 1), [1, 0, 2])
        assert next(failing) == (1, 0)
        with pytest.raises(ZeroDivisionError):
            next(failing)
        with pytest.raises(StopIteration):
            next(failing)
        assert failing.state_dict()["count"] == 1  # the failed item is not consumed


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_resumes_past_what_was_consumed(backend: str, tmp_path: Path, chunksize: int) -> None:
    """map: the same state_dict and resume= (ordered); a resumed map submits only the
    items not consumed, and an error names its original input position."""
    first, second = Journal(tmp_path / "first"), Journal(tmp_path / "second")
    with sp.Pool(2, backend=backend) as pool:
        results = pool.map(partial(record, journal=first), range(20), chunksize=chunksize)
        assert [next(results) for _ in range(7)] == [x * x for x in range(7)]
        state = results.state_dict()
        results.close()
        assert state["count"] == 6
        rest = pool.map(partial(record, journal=second), range(20), resume=state)
        assert list(rest) == [x * x for x in range(6, 20)]
        assert rest.state_dict()["count"] == 20
        divisors = [1] * 8 + [0] + [1] * 11
        failing = pool.map(divmod, [1] * 20, divisors, resume=state, chunksize=chunksize)
        assert [next(failing), next(failing)] == [(1, 0), (1, 0)]  # positions 6 and 7
        with pytest.raises(ZeroDivisionError) as info:
            next(failing)
    assert sorted(second.read()) == list(range(6, 20))
    assert "input position 8" in "".join(info.value.__notes__)


def test_a_stream_cancelled_by_the_exit_hook_still_saves_its_checkpoint(tmp_path: Path) -> None:
    """At interpreter exit the hook cancels open streams first (`owner.cancelled`); the
    stream's own end (close, collection) still saves its state."""
    path = tmp_path / "job.json"
    with sp.Pool(1) as pool:
        stream = pool.imap(abs, range(10), checkpoint=path, checkpoint_every=100)
        assert [next(stream), next(stream)] == [0, 1]
        stream._owner.cancelled = True  # what _exit.finish_at_exit does
        stream.close()
    assert json.loads(path.read_text())["count"] == 1
