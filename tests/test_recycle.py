"""Worker recycling (issue 20, goal 2): `max_tasks_per_worker` and `max_worker_memory`
replace a worker after the item that crossed the line, with its successor started
before it leaves; no item is lost, failed or run twice; threads refuse both."""

from __future__ import annotations

import os
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

import steadypool as sp
from steadypool._checks import check_size
from steadypool.cam import CamInputError
from steadypool.cam import run as run_cam

from ._recycle_jobs import die_once, leak, pid_of, waits_for_successor
from .conftest import BACKENDS, cam_config
from .test_cam import assert_match_reference

if TYPE_CHECKING:
    from pathlib import Path

WAIT = 60.0  # seconds for a whole job

REMOTE = [
    pytest.param(b, marks=[pytest.mark.ray] if b == "ray" else [], id=b)
    for b in BACKENDS
    if b in ("processes", "ray")
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_max_tasks_per_worker_gives_each_worker_at_most_n_items(backend: str) -> None:
    """Every item once, in order, none failed; no worker ran more than 3; the workers
    were recycled (stats().recycled), none counted as replaced."""
    with sp.Pool(2, backend=backend, max_tasks_per_worker=3) as pool:
        out = list(pool.imap(pid_of, range(40)))
        stats = pool.stats()
    assert [x for x, _ in out] == list(range(40))
    per_pid = Counter(pid for _, pid in out)
    assert max(per_pid.values()) <= 3
    # Every worker that ran items was recycled but at most the last one of each index
    # (a worker leaves early, before its 3rd item, once its successor is ready).
    assert len(per_pid) - 2 <= stats.recycled <= len(per_pid)
    assert stats.recycled >= 12
    assert sum(w.recycled for w in stats.workers) == stats.recycled
    assert stats.replaced == 0
    assert (stats.done, stats.failed) == (40, 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_max_worker_memory_recycles_a_leaking_worker(backend: str, workers: int) -> None:
    """A function that keeps 16 MiB per item: its worker is recycled once its resident
    memory passes the line, and the job finishes with every item once, none failed."""
    with sp.Pool(workers, backend=backend, max_worker_memory="160MiB") as pool:
        out = list(pool.imap(leak, range(30)))
        stats = pool.stats()
    assert [x for x, _ in out] == list(range(30))
    assert stats.recycled >= 1
    assert len({pid for _, pid in out}) >= 2
    assert stats.replaced == 0
    assert (stats.done, stats.failed) == (30, 0)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux procfs")
def test_the_successor_starts_before_the_recycled_worker_finishes() -> None:
    """With max_tasks_per_worker=1 each worker's one item waits (bounded) until a newer
    worker process of the pool exists: the successor is spawned while the old worker
    still runs its last item, not after it left."""
    with sp.Pool(1, backend="processes", max_tasks_per_worker=1, stall_timeout=None) as pool:
        out = list(pool.imap(waits_for_successor, range(4)))
    assert [x for x, _, _ in out] == list(range(4))
    assert len({pid for _, pid, _ in out}) == 4
    assert [saw for _, _, saw in out] == [True] * 4


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_both_lines_together_on_one_worker(backend: str) -> None:
    """max_tasks_per_worker and max_worker_memory at once, one worker: whichever comes
    first recycles it; every item once, in order, none failed, nothing left waiting."""
    with sp.Pool(1, backend=backend, max_tasks_per_worker=4, max_worker_memory="160MiB") as pool:
        out = list(pool.imap(leak, range(20)))
        stats = pool.stats()
    assert [x for x, _ in out] == list(range(20))
    assert max(Counter(pid for _, pid in out).values()) <= 4
    assert (stats.done, stats.failed, stats.replaced) == (20, 0, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_submit_and_map_are_recycled_too(backend: str) -> None:
    with sp.Pool(2, backend=backend, max_tasks_per_worker=2) as pool:
        futures = [pool.submit(pid_of, i) for i in range(6)]
        mapped = list(pool.map(pid_of, range(6, 12)))
        results = [f.result(WAIT) for f in futures] + mapped
    assert [x for x, _ in results] == list(range(12))
    assert max(Counter(pid for _, pid in results).values()) <= 2


@pytest.mark.parametrize(
    ("option", "value"), [("max_tasks_per_worker", 10), ("max_worker_memory", "4GiB")]
)
def test_threads_refuse_recycling_and_say_why(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match="threads share this process") as info:
        sp.Pool(2, **{option: value})
    assert "backend='processes' or 'ray'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 << 30),
        ("512 MiB", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("2GB", 2 * 10**9),
        ("100kb", 100_000),
        ("1024", 1024),
        (4096, 4096),
    ],
)
def test_sizes_are_read_in_both_units(text: str | int, size: int) -> None:
    assert check_size("max_worker_memory", text) == size


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("4 gigs", ValueError),
        ("", ValueError),
        (0, ValueError),
        (-5, ValueError),
        (True, TypeError),
        (1.5, TypeError),
        ("0MiB", ValueError),
    ],
)
def test_a_bad_size_is_refused_with_the_forms_it_takes(value: object, error: type) -> None:
    with pytest.raises(error, match="'4GiB'"):
        sp.Pool(1, backend="processes", max_worker_memory=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_a_bad_task_count_is_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="max_tasks_per_worker"):
        sp.Pool(1, backend="processes", max_tasks_per_worker=value)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_a_recycled_worker_that_dies_on_its_last_item_loses_nothing(
    backend: str, tmp_path: Path
) -> None:
    """Item 3 runs on a worker being recycled (max_tasks_per_worker=2) and kills it: the
    item is retried on another worker; nothing hangs, is lost or runs on a worker past
    its 2 items."""
    marker = str(tmp_path / "died")
    with sp.Pool(1, backend=backend, max_tasks_per_worker=2, retries=1) as pool:
        out = list(pool.imap(partial(die_once, marker=marker), range(8)))
        stats = pool.stats()
    assert os.path.exists(marker)
    assert [x for x, _ in out] == list(range(8))
    assert max(Counter(pid for _, pid in out).values()) <= 2
    assert stats.failed == 0


# --- steadypool cam --max-worker-memory (issue 20, goal 4) ----------------------------------


@pytest.mark.timeout(180)
def test_cam_recycles_device_workers_past_max_worker_memory(
    labels_file: Path, tmp_path: Path
) -> None:
    """A line below what a worker holds once its network is loaded recycles each device
    worker after its image: the run still does every image, equal to the reference,
    and the summary counts the recycled workers."""
    out = tmp_path / "out"
    summary = run_cam(
        cam_config(labels_file, out, format="psa", backend="processes", max_worker_memory="1MiB")
    )
    assert (summary.failures, summary.done) == ([], 4)
    assert summary.recycled >= 3
    assert "recycled (--max-worker-memory): " in str(summary)
    assert_match_reference("psa", out, labels_file)


def test_cam_refuses_max_worker_memory_on_threads_and_bad_sizes(
    labels_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(CamInputError, match="--backend processes or ray"):
        cam_config(labels_file, tmp_path, max_worker_memory="4GiB")
    with pytest.raises(CamInputError, match="--max-worker-memory must be"):
        cam_config(labels_file, tmp_path, backend="processes", max_worker_memory="lots")
