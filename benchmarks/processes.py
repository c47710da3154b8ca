"""Process-pool benchmark: steadypool against its peers, side by side, in one run.

Prints a table and writes JSON (benchmarks/results/processes.json).  Rows of one
workload run round-robin in this process, best of --repeat; compare ratios.

    python benchmarks/processes.py [--quick]

Workloads (2 workers, start method spawn everywhere):
  startup   create a pool, run one no-op per worker, shut down
  noop      tasks returning their input: per-item overhead, unchunked and chunked
  numpy     tasks returning a small numpy array (64x64 float32)
  transfer  echo a 15 MB and a 120 MB float32 array (out and back): MB/s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import steadypool as sp

HERE = Path(__file__).resolve().parent
SPAWN = multiprocessing.get_context("spawn")


def noop(x: Any) -> Any:
    return x


def small_array(x: int) -> np.ndarray:
    return np.full((64, 64), x, dtype=np.float32)


def echo(x: Any) -> Any:
    return x


# --- runners: each opens a pool and yields a function map(fn, items) -> list -------------

MapFn = Callable[[Callable[[Any], Any], list[Any]], list[Any]]
Runner = Callable[[int], "contextlib.AbstractContextManager[MapFn]"]


def ppe(chunksize: int) -> Runner:
    @contextlib.contextmanager
    def pool(workers: int) -> Iterator[MapFn]:
        with ProcessPoolExecutor(workers, mp_context=SPAWN) as ex:
            yield lambda fn, items: list(ex.map(fn, items, chunksize=chunksize))

    return pool


def loky(chunksize: int) -> Runner:
    @contextlib.contextmanager
    def pool(workers: int) -> Iterator[MapFn]:
        from loky import get_reusable_executor

        ex = get_reusable_executor(max_workers=workers, reuse=False)
        try:
            yield lambda fn, items: list(ex.map(fn, items, chunksize=chunksize))
        finally:
            ex.shutdown(wait=True)

    return pool


def pebble(chunksize: int) -> Runner:
    @contextlib.contextmanager
    def pool(workers: int) -> Iterator[MapFn]:
        from pebble import ProcessPool

        with ProcessPool(max_workers=workers, context=SPAWN) as p:
            yield lambda fn, items: list(p.map(fn, items, chunksize=chunksize).result())

    return pool


def mpire(chunk_size: int | None) -> Runner:
    @contextlib.contextmanager
    def pool(workers: int) -> Iterator[MapFn]:
        from mpire import WorkerPool

        with WorkerPool(n_jobs=workers, start_method="spawn", keep_alive=True) as p:
            yield lambda fn, items: list(p.imap(fn, [(x,) for x in items], chunk_size=chunk_size))

    return pool


def steady(kind: str, size: int | None = None, backend: str = "processes") -> Runner:
    @contextlib.contextmanager
    def pool(workers: int) -> Iterator[MapFn]:
        with sp.Pool(workers, backend=backend) as p:
            if kind == "imap":
                yield lambda fn, items: list(p.imap(fn, items, window=size))
            elif kind == "map":
                yield lambda fn, items: list(p.map(fn, items, chunksize=size or 1))
            else:
                yield lambda fn, items: [
                    x for b in p.imap_batches(fn, items, size or 64) for x in b
                ]

    return pool


UNCHUNKED: dict[str, Runner] = {
    "ProcessPoolExecutor.map": ppe(1),
    "loky reusable executor map": loky(1),
    "pebble ProcessPool.map": pebble(1),
    "mpire imap chunk_size=1": mpire(1),
    "steadypool imap, defaults": steady("imap"),
    "steadypool map, defaults": steady("map"),
    "steadypool imap window=64": steady("imap", 64),
}
try:  # Ray rows where the ray extra is installed (Ray started once, in main())
    import ray
except ImportError:
    ray = None
else:
    UNCHUNKED["steadypool backend=ray imap, defaults"] = steady("imap", None, "ray")
    UNCHUNKED["steadypool backend=ray imap window=64"] = steady("imap", 64, "ray")
CHUNKED: dict[str, Runner] = {
    "ProcessPoolExecutor.map chunksize=64": ppe(64),
    "loky map chunksize=64": loky(64),
    "pebble map chunksize=64": pebble(64),
    "mpire imap (auto chunks)": mpire(None),
    "steadypool map chunksize=64": steady("map", 64),
    "steadypool imap_batches 64": steady("batches", 64),
    # With no chunk size at all, beside the auto-chunking peer:
    "steadypool map, defaults": steady("map"),
    "steadypool imap, defaults": steady("imap"),
}
if ray is not None:
    CHUNKED["steadypool backend=ray imap, defaults"] = steady("imap", None, "ray")


def round_robin(
    runners: dict[str, Runner],
    fn: Callable[[Any], Any],
    items: list[Any],
    workers: int,
    repeat: int,
    check: Callable[[list[Any]], bool],
) -> dict[str, float]:
    """Best time of `repeat` rounds per runner; pools are opened and warmed untimed."""
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeat):
        for label, runner in runners.items():
            with runner(workers) as run:
                run(noop, list(range(4 * workers)))  # every worker started and warm
                start = time.perf_counter()
                out = run(fn, items)
                took = time.perf_counter() - start
            if not check(out):
                raise AssertionError(f"{label} returned wrong results")
            best[label] = min(best[label], took)
    return best


def startup(runners: dict[str, Runner], workers: int, repeat: int) -> dict[str, float]:
    """Open a pool, run one no-op per worker, shut it down: the whole life of a pool."""
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeat):
        for label, runner in runners.items():
            start = time.perf_counter()
            with runner(workers) as run:
                run(noop, list(range(workers)))
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def rows_for(
    workload: str, best: dict[str, float], n: int, unit: str, ref: str
) -> list[dict[str, Any]]:
    base = best[ref]
    return [
        {
            "workload": workload,
            "runner": label,
            "items": n,
            "seconds": s,
            unit: s / n * 1e6,
            "x_ref": s / base,
            "ref": ref,
        }
        for label, s in best.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "processes.json")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    if ray is not None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    w = args.workers
    rows: list[dict[str, Any]] = []

    # start-up: a pool, one no-op per worker, shutdown (the whole life of a pool)
    best = startup(UNCHUNKED, w, repeat)
    rows += rows_for("startup", best, 1, "us_per_pool", "ProcessPoolExecutor.map")

    n = 500 if args.quick else 3000
    items = list(range(n))
    best = round_robin(UNCHUNKED, noop, items, w, repeat, lambda out: out == items)
    rows += rows_for("noop unchunked", best, n, "us_per_item", "pebble ProcessPool.map")
    n2 = 2000 if args.quick else 20000
    items2 = list(range(n2))
    best = round_robin(CHUNKED, noop, items2, w, repeat, lambda out: out == items2)
    rows += rows_for("noop chunked", best, n2, "us_per_item", "mpire imap (auto chunks)")
    best = round_robin(
        UNCHUNKED,
        small_array,
        items,
        w,
        repeat,
        lambda out: len(out) == n and float(out[-1][0, 0]) == n - 1,
    )
    rows += rows_for("numpy 64x64", best, n, "us_per_item", "pebble ProcessPool.map")

    transfer: dict[str, Runner] = {
        "ProcessPoolExecutor.map": ppe(1),
        "loky reusable executor map": loky(1),
        "pebble ProcessPool.map": pebble(1),
        "mpire imap chunk_size=1": mpire(1),
        "steadypool imap": steady("imap"),
    }
    for mb, count in ((15, 4 if args.quick else 12), (120, 2 if args.quick else 6)):
        array = np.ones(mb * 2**20 // 4, dtype=np.float32)
        arrays = [array] * count
        best = round_robin(
            transfer,
            echo,
            arrays,
            w,
            repeat,
            lambda out, c=count, a=array: len(out) == c and out[-1].nbytes == a.nbytes,
        )
        for row in rows_for(
            f"transfer {mb} MB", best, count, "us_per_item", "ProcessPoolExecutor.map"
        ):
            row["mb_per_s"] = 2 * mb * count / row["seconds"]  # out and back
            rows.append(row)

    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        ref = group[0]["ref"]
        print(f"\n== {workload} ({group[0]['items']:,} items; ratio to {ref}) ==")
        for r in group:
            figure = (
                f"{r['seconds'] * 1000:9.0f} ms/pool"
                if workload == "startup"
                else f"{r['mb_per_s']:9.0f} MB/s"
                if workload.startswith("transfer")
                else f"{r['us_per_item']:9.1f} us/item"
            )
            print(f"{r['runner']:<40} {figure}   x{r['x_ref']:.2f}")
    meta = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%F %T"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
