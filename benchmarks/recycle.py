"""Recycling benchmark: workers replaced every 25 items on `spawn`, side by side, in one run.

Prints a table and writes JSON.  Rows run one after another, interleaved, best of
--repeat; ratios compare rows of the same run.

    python benchmarks/recycle.py [--quick] [--json PATH]

Each row streams --items items through 2 worker processes started with `spawn`; an
item is --work seconds of pure-Python CPU work ("cpu": then a new worker's start-up
competes for the CPUs) or of waiting, the CPU free ("wait": a GPU, a disk).  Rows:
  steadypool                     Pool(2, backend="processes"), imap
  steadypool recycle 25          the same with max_tasks_per_worker=25
  ProcessPoolExecutor            ProcessPoolExecutor(2, spawn), submit, 4 items in flight
  ProcessPoolExecutor recycle 25 the same with max_tasks_per_child=25 (its `map` hangs
                                 with max_tasks_per_child: checked and reported apart)
each without and with a per-worker setup of --setup seconds (steadypool `setup=`,
ProcessPoolExecutor `initializer=`), the cost of loading a model: a recycled worker
pays it again, and whether it is paid off the critical path shows here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import steadypool as sp

HERE = Path(__file__).resolve().parent
EVERY = 25


def work(seconds: float) -> int:
    """Pure-Python CPU work for `seconds` (a decoder, a CPU model)."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        count += 1
    return os.getpid()


def wait_for(seconds: float) -> int:
    """An item that waits `seconds` (on a GPU, a disk, a service), the CPU free."""
    time.sleep(seconds)
    return os.getpid()


KINDS = {"cpu": work, "wait": wait_for}


def load(seconds: float) -> None:
    time.sleep(seconds)  # a model's load: I/O bound, then resident


def setup_for(seconds: float) -> Any:
    return None if not seconds else _Setup(seconds)


class _Setup:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, _worker: sp.Worker) -> None:
        load(self.seconds)


def steadypool_row(
    fn: Any, items: int, work_s: float, setup_s: float, every: int | None
) -> dict[str, Any]:
    begun = time.perf_counter()
    with sp.Pool(
        2,
        backend="processes",
        setup=setup_for(setup_s),
        max_tasks_per_worker=every,
        stall_timeout=None,
    ) as pool:
        pids = list(pool.imap(fn, [work_s] * items))
        recycled = pool.stats().recycled
    took = time.perf_counter() - begun
    return {"seconds": took, "processes": len(set(pids)), "recycled": recycled}


def executor_row(
    fn: Any, items: int, work_s: float, setup_s: float, every: int | None
) -> dict[str, Any]:
    """ProcessPoolExecutor with at most 2 items per worker in flight: its `map` hangs
    with max_tasks_per_child (see `executor_map_hangs`), submits bounded like this run."""
    begun = time.perf_counter()
    pids = []
    with ProcessPoolExecutor(
        2,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=load if setup_s else None,
        initargs=(setup_s,) if setup_s else (),
        max_tasks_per_child=every,
    ) as pool:
        pending: set[Future[int]] = set()
        for _ in range(items):
            pending.add(pool.submit(fn, work_s))
            if len(pending) >= 4:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                pids += [f.result() for f in done]
        pids += [f.result() for f in pending]
    took = time.perf_counter() - begun
    return {"seconds": took, "processes": len(set(pids)), "recycled": None}


_MAP = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
if __name__ == "__main__":
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=%d) as pool:
        print(len(list(pool.map(abs, range(%d)))))
"""


def executor_map_hangs(items: int, every: int, timeout: float) -> bool:
    """Whether ProcessPoolExecutor(max_tasks_per_child=every).map over `items` items
    fails to finish within `timeout` (CPython 3.11 to 3.13 here: it hangs once the first
    worker exits, with items queued for it), in a child process that is then killed."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "ppe_map.py"
        script.write_text(_MAP % (every, items))
        try:
            subprocess.run(
                [sys.executable, str(script)], capture_output=True, timeout=timeout, check=True
            )
        except subprocess.TimeoutExpired:
            return True
    return False


ROWS = {
    "steadypool": (steadypool_row, None),
    f"steadypool recycle {EVERY}": (steadypool_row, EVERY),
    "ProcessPoolExecutor": (executor_row, None),
    f"ProcessPoolExecutor recycle {EVERY}": (executor_row, EVERY),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--work", type=float, default=0.04, help="seconds per item")
    parser.add_argument("--setup", type=float, default=0.5, help="seconds per worker setup")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "recycle.json")
    args = parser.parse_args()
    items = 100 if args.quick else args.items
    repeat = 1 if args.quick else args.repeat
    rows: list[dict[str, Any]] = []
    for kind, setup_s in [(k, s) for k in KINDS for s in (0.0, args.setup)]:
        best: dict[str, dict[str, Any]] = {}
        for _ in range(repeat):  # interleaved: drifts of the machine hit every row
            for name, (row, every) in ROWS.items():
                got = row(KINDS[kind], items, args.work, setup_s, every)
                if name not in best or got["seconds"] < best[name]["seconds"]:
                    best[name] = got
        ideal = items * args.work / 2  # 2 workers doing nothing but the items
        for name, got in best.items():
            plain = best["steadypool" if name.startswith("steadypool") else "ProcessPoolExecutor"]
            rows.append(
                {
                    "kind": kind,
                    "setup_s": setup_s,
                    "row": name,
                    "seconds": got["seconds"],
                    "items_per_s": items / got["seconds"],
                    "x_ideal": got["seconds"] / ideal,
                    "x_no_recycling": got["seconds"] / plain["seconds"],
                    "processes": got["processes"],
                    "recycled": got["recycled"],
                }
            )
        pair = {r["row"]: r for r in rows if (r["kind"], r["setup_s"]) == (kind, setup_s)}
        ours, theirs = (
            pair[f"steadypool recycle {EVERY}"],
            pair[f"ProcessPoolExecutor recycle {EVERY}"],
        )
        rows.append(
            {
                "kind": kind,
                "setup_s": setup_s,
                "row": f"ProcessPoolExecutor / steadypool, recycle {EVERY}",
                "seconds": None,
                "items_per_s": None,
                "x_ideal": None,
                "x_no_recycling": theirs["seconds"] / ours["seconds"],
                "processes": None,
                "recycled": None,
            }
        )
    hangs = executor_map_hangs(items, EVERY, timeout=60.0)
    print(
        f"{items} items of {args.work * 1e3:.0f} ms (cpu: work; wait: sleep), 2 spawn "
        f"workers, best of {repeat}; "
        f"ideal (2 workers, no overhead) {items * args.work / 2:.2f} s"
    )
    print("| item | setup | row | s | items/s | x ideal | x no recycling | processes |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["seconds"] is None:
            print(
                f"| {r['kind']} | {r['setup_s']:.2f} s | **{r['row']}** | | | "
                f"| **{r['x_no_recycling']:.2f}** | |"
            )
            continue
        print(
            f"| {r['kind']} | {r['setup_s']:.2f} s | {r['row']} | {r['seconds']:.2f} "
            f"| {r['items_per_s']:.0f} "
            f"| {r['x_ideal']:.2f} | {r['x_no_recycling']:.2f} | {r['processes']} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "items": items,
        "work_s": args.work,
        "repeat": repeat,
        "executor_map_with_max_tasks_per_child_hangs": hangs,
    }
    print(
        f"ProcessPoolExecutor(max_tasks_per_child={EVERY}).map over {items} items: "
        + ("HUNG (no result in 60 s; killed)" if hangs else "finished")
    )
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
