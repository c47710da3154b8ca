"""Resume benchmark: what `checkpoint=` costs a no-op `imap`, side by side, in one run.

Prints a table and writes JSON.  Rows run in this process one after another,
interleaved, best of --repeat; ratios compare rows of the same run.

    python benchmarks/resume.py [--quick] [--json PATH] [--base-src DIR]

Rows (2 thread workers, 100,000 no-op items, window=256 and the adaptive default):
  plain              imap without checkpoint
  checkpoint         imap(checkpoint=PATH): saved every 5 s (the default) and at the end
  checkpoint 0.1 s   imap(checkpoint=PATH, checkpoint_every=0.1)
  state_dict/item    imap, the consumer calling stream.state_dict() after every item
  base (generator)   --base-src: the same plain row run on another source tree (the
                     commit before streams became `Stream` objects), in a subprocess
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import steadypool as sp

HERE = Path(__file__).resolve().parent


def noop(x: Any) -> Any:
    return x


def run(items: int, window: int | None, **options: Any) -> float:
    """Seconds to stream `items` no-op items through a 2-thread pool."""
    with sp.Pool(2) as pool:
        begun = time.perf_counter()
        stream = pool.imap(noop, range(items), window=window, **options)
        count = 0
        for _ in stream:
            count += 1
        took = time.perf_counter() - begun
    assert count == items
    return took


def run_with_state_dict(items: int, window: int | None) -> float:
    with sp.Pool(2) as pool:
        begun = time.perf_counter()
        stream = pool.imap(noop, range(items), window=window)
        for _ in stream:
            stream.state_dict()
        return time.perf_counter() - begun


def base_row(src: Path, items: int, window: int | None, repeat: int) -> float:
    """Best seconds of the plain row on another source tree, in a fresh process."""
    code = (
        "import sys, time, steadypool as sp\n"
        f"best = 1e9\nfor _ in range({repeat}):\n"
        "    with sp.Pool(2) as pool:\n"
        "        t = time.perf_counter()\n"
        f"        for _ in pool.imap(lambda x: x, range({items}), window={window!r}): pass\n"
        "        best = min(best, time.perf_counter() - t)\n"
        "print(best)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "resume.json")
    parser.add_argument("--base-src", type=Path, help="another src/ tree for a base row")
    args = parser.parse_args()
    items = 20_000 if args.quick else 100_000
    repeat = 3 if args.quick else args.repeat
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.json"
        for window in (256, None):
            rows_of: dict[str, list[float]] = {}

            def plain(window: int | None = window) -> float:
                return run(items, window)

            def checkpoint(window: int | None = window) -> float:
                path.unlink(missing_ok=True)
                return run(items, window, checkpoint=path)

            def frequent(window: int | None = window) -> float:
                path.unlink(missing_ok=True)
                return run(items, window, checkpoint=path, checkpoint_every=0.1)

            def state_dict(window: int | None = window) -> float:
                return run_with_state_dict(items, window)

            cases = {
                "plain": plain,
                "checkpoint (every 5 s)": checkpoint,
                "checkpoint_every=0.1": frequent,
                "state_dict() per item": state_dict,
            }
            for _ in range(repeat):  # interleaved: drifts of the machine hit every row
                for name, case in cases.items():
                    rows_of.setdefault(name, []).append(case())
            if args.base_src is not None:
                rows_of["base (generator)"] = [base_row(args.base_src, items, window, repeat)]
            base = min(rows_of["plain"])
            for name, times in rows_of.items():
                best = min(times)
                rows.append(
                    {
                        "window": "adaptive" if window is None else window,
                        "row": name,
                        "us_per_item": best / items * 1e6,
                        "x_plain": best / base,
                    }
                )
    print(f"no-op imap, 2 threads, {items} items, best of {repeat}")
    print("| window | row | us/item | x plain |\n|---|---|---:|---:|")
    for row in rows:
        print(
            f"| {row['window']} | {row['row']} | {row['us_per_item']:.2f} | {row['x_plain']:.3f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "items": items}
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
