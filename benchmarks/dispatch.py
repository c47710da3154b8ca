"""Dispatch benchmark: steadypool against its peers, side by side, in one run.

Prints a table and writes JSON.  Every row of a workload runs in this process on the
same machine, one after another, best of --repeat; ratios compare rows of the same
run, never figures from another machine.

    python benchmarks/dispatch.py [--quick] [--json PATH]

Workloads (2 workers unless --workers):
  noop    20,000 tasks returning their input: pure dispatch cost
  sleep   tasks sleeping 2 ms (GIL released)
  matmul  256x256 float64 matmul, BLAS threads = 1
          (efficiency = speed-up over a serial loop / workers; 100% is ideal)
  seed    the seed's usage pattern: a new BatchThreader per image, 8 variants,
          batch_size=12, prefetch_size=0, processes=8; the seed's own class (loaded from
          ../shared/seed/ at run time, skipped if absent) against
          steadypool.compat.BatchThreader and a reused ThreadPoolExecutor
  memory  a 10^6-item generator through imap: peak RSS growth, in a fresh process
  latency a slow input (0.3 s per item) and 0.3 s tasks: first result and total time
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads: one BLAS thread per task

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np

import steadypool as sp
from steadypool.compat import BatchThreader, shutdown_shared_pools

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _seed import load_seed_class

HERE = Path(__file__).resolve().parent

Runner = Callable[[Callable[[Any], Any], list[Any], int], list[Any]]


# --- runners: each maps fn over items on `workers` threads and returns the results ------


def stdlib_tpe_map(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def threadpool_imap(chunksize: int) -> Runner:
    def run(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
        with ThreadPool(workers) as pool:
            return list(pool.imap(fn, items, chunksize=chunksize))

    return run


def joblib_threading(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers, backend="threading", return_as="generator")
    return list(parallel(delayed(fn)(x) for x in items))


def mpire_threading(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=workers, start_method="threading") as pool:
        return list(pool.imap(fn, [(x,) for x in items]))


def sp_imap(window: int | None, **options: Any) -> Runner:
    def run(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
        with sp.Pool(workers, **options) as pool:
            return list(pool.imap(fn, items, window=window))

    return run


WATCHED = {"task_timeout": 60.0, "stall_timeout": 30.0}


def sp_imap_batches(batch: int) -> Runner:
    def run(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
        with sp.Pool(workers) as pool:
            return [x for b in pool.imap_batches(fn, items, batch) for x in b]

    return run


def sp_map(chunksize: int) -> Runner:
    def run(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
        with sp.Pool(workers) as pool:
            return list(pool.map(fn, items, chunksize=chunksize))

    return run


RUNNERS: dict[str, Runner] = {
    "stdlib ThreadPoolExecutor.map": stdlib_tpe_map,
    "ThreadPool.imap chunksize=1": threadpool_imap(1),
    "ThreadPool.imap chunksize=64": threadpool_imap(64),
    "joblib threading (generator)": joblib_threading,
    "mpire threading imap": mpire_threading,
    "steadypool imap, defaults": sp_imap(None),
    "steadypool imap window=256": sp_imap(256),
    "  stall_timeout=None (no watchdog)": sp_imap(256, stall_timeout=None),
    "  + task_timeout + stall_timeout": sp_imap(256, **WATCHED),
    "steadypool imap (default) + timeouts": sp_imap(None, **WATCHED),
    "steadypool imap_batches 64": sp_imap_batches(64),
    "steadypool map, defaults": sp_map(1),
    "steadypool map chunksize=64": sp_map(64),
}
REFERENCE = "ThreadPool.imap chunksize=1"


# --- workloads ----------------------------------------------------------------------------


def noop(x: Any) -> Any:
    return x


def sleep_2ms(x: Any) -> Any:
    time.sleep(0.002)
    return x


_MATS = [np.random.default_rng(i).standard_normal((256, 256)) for i in range(4)]


def matmul(x: int) -> float:
    a = _MATS[x % 4]
    return float((a @ a)[0, 0])


def time_once(
    runner: Runner, fn: Callable[[Any], Any], items: list[Any], workers: int, expected: list[Any]
) -> float:
    start = time.perf_counter()
    out = runner(fn, items, workers)
    took = time.perf_counter() - start
    if out != expected:
        raise AssertionError(f"{runner} returned wrong results")
    return took


def bench_workload(
    name: str, fn: Callable[[Any], Any], n: int, workers: int, repeat: int, *, serial: bool
) -> list[dict[str, Any]]:
    """Time every runner on `fn` over `n` items; with `serial`, efficiency is the speed-up
    over a plain loop in this process divided by `workers` (100% = ideal speed-up)."""
    items = list(range(n))
    expected = [fn(x) for x in items]
    ideal = None
    if serial:
        start = time.perf_counter()
        for x in items:
            fn(x)
        ideal = (time.perf_counter() - start) / workers
    # Round-robin over the runners, best of `repeat` each: drift of a shared machine
    # spreads over every row instead of favouring whichever ran in a quiet moment.
    best = dict.fromkeys(RUNNERS, float("inf"))
    for _ in range(repeat):
        for label, runner in RUNNERS.items():
            best[label] = min(best[label], time_once(runner, fn, items, workers, expected))
    rows = [
        {
            "workload": name,
            "runner": label,
            "items": n,
            "workers": workers,
            "seconds": seconds,
            "us_per_item": seconds / n * 1e6,
            "efficiency": None if ideal is None else ideal / seconds,
        }
        for label, seconds in best.items()
    ]
    ref = next(r for r in rows if r["runner"] == REFERENCE)["seconds"]
    tpe = next(r for r in rows if r["runner"] == "stdlib ThreadPoolExecutor.map")["seconds"]
    for row in rows:
        row["x_threadpool_imap"] = row["seconds"] / ref
        row["x_tpe_map"] = row["seconds"] / tpe
    return rows


# --- the seed's usage pattern -------------------------------------------------------------


def _variant(i: int, img: int) -> int:
    return i * 31 + img


@contextlib.contextmanager
def count_thread_starts() -> Iterator[list[int]]:
    """Count threading.Thread.start calls inside the block (in starts[0])."""
    starts = [0]
    original = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        starts[0] += 1
        original(self)

    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        yield starts
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]


def seed_pattern(images: int, repeat: int) -> list[dict[str, Any]]:
    def per_image_threader(cls: Any) -> Callable[[], int]:
        def run() -> int:
            for image in range(images):
                threader = cls(
                    _variant,
                    [(i, image) for i in range(8)],
                    batch_size=12,
                    prefetch_size=0,
                    processes=8,
                )
                if threader.pop_results() != [_variant(i, image) for i in range(8)]:
                    raise AssertionError("wrong results")
            return images

        return run

    def reused_executor() -> int:
        with ThreadPoolExecutor(8) as ex:
            for image in range(images):
                futures = [ex.submit(_variant, i, image) for i in range(8)]
                if [f.result() for f in futures] != [_variant(i, image) for i in range(8)]:
                    raise AssertionError("wrong results")
        return images

    candidates: dict[str, Callable[[], int]] = {}
    seed_class = load_seed_class()
    if seed_class is not None:
        candidates["seed BatchThreader (new ThreadPool per image)"] = per_image_threader(seed_class)
    candidates["reused ThreadPoolExecutor(8), submit per variant"] = reused_executor
    candidates["steadypool.compat.BatchThreader"] = per_image_threader(BatchThreader)
    rows = []
    for label, run in candidates.items():
        best = float("inf")
        growth = started = 0
        for _ in range(repeat):
            before = threading.active_count()
            with count_thread_starts() as starts:
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            growth = max(growth, threading.active_count() - before)
            started = max(started, starts[0])
            shutdown_shared_pools()
        rows.append(
            {
                "workload": "seed",
                "runner": label,
                "items": images,
                "seconds": best,
                "us_per_image": best / images * 1e6,
                "thread_growth": growth,
                "threads_started": started,
            }
        )
    ref = rows[0]["seconds"]
    for row in rows:
        row["x_first_row"] = row["seconds"] / ref
    return rows


# --- memory: a 10^6-item generator, in a fresh process per runner ---------------------------


def _memory_child(which: str, n: int) -> None:
    def gen() -> Iterator[int]:
        yield from range(n)

    def consume(results: Iterable[int]) -> int:
        total = 0
        for x in results:
            total += x
        return total

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if which == "steadypool imap":
        with sp.Pool(2) as pool:
            total = consume(pool.imap(noop, gen()))
    elif which == "ThreadPool.imap chunksize=1":
        with ThreadPool(2) as tp:
            total = consume(tp.imap(noop, gen()))
    else:
        raise SystemExit(f"unknown memory runner {which}")
    took = time.perf_counter() - start
    assert total == n * (n - 1) // 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (peak - base) / 1024, "seconds": took}))


def memory_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for which in ("ThreadPool.imap chunksize=1", "steadypool imap"):
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", which, str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"workload": "memory", "runner": which, "items": n, **got})
    return rows


# --- report -------------------------------------------------------------------------------


def latency_rows(read: float, task: float, n: int, workers: int) -> list[dict[str, Any]]:
    """A slow input (`read` seconds per item) and tasks of `task` seconds: when does the
    first result arrive, and the last?"""

    def slow_input() -> Iterator[int]:
        for i in range(n):
            time.sleep(read)
            yield i

    def slow_task(x: int) -> int:
        time.sleep(task)
        return x

    def threadpool(workers: int) -> Iterator[int]:
        with ThreadPool(workers) as pool:
            yield from pool.imap(slow_task, slow_input())

    def steady(workers: int) -> Iterator[int]:
        with sp.Pool(workers) as pool:
            yield from pool.imap(slow_task, slow_input())

    rows = []
    for label, run in (
        ("ThreadPool.imap chunksize=1", threadpool),
        ("steadypool imap, defaults", steady),
    ):
        start = time.perf_counter()
        first = None
        out = []
        for x in run(workers):
            first = time.perf_counter() - start if first is None else first
            out.append(x)
        if out != list(range(n)):
            raise AssertionError(f"{label} returned wrong results")
        rows.append(
            {
                "workload": "latency",
                "runner": label,
                "items": n,
                "workers": workers,
                "first_result_s": first,
                "seconds": time.perf_counter() - start,
                "read_s": read,
                "task_s": task,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        print(f"\n== {workload} ({group[0]['items']:,} items) ==")
        if workload == "seed":
            print(
                f"{'runner':<50} {'us/image':>9} {'x row 1':>8} {'threads started':>15}"
                f" {'left alive':>10}"
            )
            for r in group:
                print(
                    f"{r['runner']:<50} {r['us_per_image']:>9.1f} {r['x_first_row']:>8.2f}"
                    f" {r['threads_started']:>15} {r['thread_growth']:>10}"
                )
        elif workload == "latency":
            print(
                f"input {group[0]['read_s']}s per item, tasks {group[0]['task_s']}s, "
                f"{group[0]['workers']} workers"
            )
            print(f"{'runner':<50} {'first result s':>14} {'all s':>8}")
            for r in group:
                print(f"{r['runner']:<50} {r['first_result_s']:>14.2f} {r['seconds']:>8.2f}")
        elif workload == "memory":
            print(f"{'runner':<50} {'peak RSS growth MB':>18} {'seconds':>8}")
            for r in group:
                print(f"{r['runner']:<50} {r['growth_mb']:>18.1f} {r['seconds']:>8.1f}")
        else:
            print(
                f"{'runner':<38} {'us/item':>8} {'x TP.imap':>9} {'x TPE.map':>9} "
                f"{'efficiency':>10}"
            )
            for r in group:
                eff = "" if r["efficiency"] is None else f"{r['efficiency'] * 100:.1f}%"
                print(
                    f"{r['runner']:<38} {r['us_per_item']:>8.2f} "
                    f"{r['x_threadpool_imap']:>9.2f} {r['x_tpe_map']:>9.2f} {eff:>10}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "dispatch.json")
    parser.add_argument("--only", nargs="*", help="workloads to run")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    repeat = 1 if args.quick else args.repeat
    scale = 10 if args.quick else 1
    only = set(args.only or ["noop", "sleep", "matmul", "seed", "memory", "latency"])
    rows: list[dict[str, Any]] = []
    if "noop" in only:
        rows += bench_workload("noop", noop, 20_000 // scale, args.workers, repeat, serial=False)
    if "sleep" in only:
        rows += bench_workload("sleep", sleep_2ms, 500 // scale, args.workers, repeat, serial=True)
    if "matmul" in only:
        rows += bench_workload("matmul", matmul, 400 // scale, args.workers, repeat, serial=True)
    if "seed" in only:
        rows += seed_pattern(2000 // scale, repeat)
    if "memory" in only:
        rows += memory_rows(1_000_000 // scale)
    if "latency" in only:
        rows += latency_rows(0.3, 0.3, 10, args.workers)
    print_table(rows)
    meta = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "date": time.strftime("%F %T"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
