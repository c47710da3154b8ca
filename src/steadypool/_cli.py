"""The ``steadypool`` command line (also ``python -m steadypool``)."""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from typing import TYPE_CHECKING

import numpy as np

import steadypool as sp

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _demo_task(seed: int) -> tuple[int, int, int]:
    """One demo item: denoise a synthetic 256x256 'image' with FFTs (numpy frees the GIL)."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((256, 256))
    spectrum = np.fft.rfft2(image)
    spectrum[16:, :] = 0
    smooth = np.fft.irfft2(spectrum, s=image.shape)
    checksum = zlib.crc32(np.round(smooth, 6).tobytes())
    return seed, checksum, sp.current_worker().index


def _demo(args: argparse.Namespace) -> int:
    """Run the demo work serially, then on the pool, and print both in a table."""
    items = list(range(args.items))
    rows: list[tuple[str, int, float, int]] = []

    serial_sums = []
    start = time.perf_counter()
    with sp.Pool(1, name="demo-serial") as one:
        for _seed, checksum, _worker in one.imap(_demo_task, items, window=1):
            serial_sums.append(checksum)
    rows.append(("1 worker", len(serial_sums), time.perf_counter() - start, _digest(serial_sums)))

    per_worker: dict[int, int] = {}
    checksums: list[int] = []
    with sp.Pool(args.workers, progress=not args.quiet, name="demo") as pool:
        start = time.perf_counter()
        for batch in pool.imap_batches(_demo_task, items, batch_size=args.batch_size):
            for seed, checksum, worker in batch:
                if seed != len(checksums):
                    raise AssertionError(f"result for item {seed} came out of order")
                checksums.append(checksum)
                per_worker[worker] = per_worker.get(worker, 0) + 1
        elapsed = time.perf_counter() - start
    rows.append((f"{args.workers} workers", len(checksums), elapsed, _digest(checksums)))

    print(f"\n{'run':<12} {'items':>6} {'seconds':>8} {'items/s':>8} {'speed-up':>8}  checksum")
    for run, count, seconds, digest in rows:
        speedup = rows[0][2] / seconds
        print(
            f"{run:<12} {count:>6} {seconds:>8.2f} {count / seconds:>8.0f} {speedup:>7.2f}x"
            f"  {digest:08x}"
        )
    print("items per worker: " + ", ".join(f"w{w}={n}" for w, n in sorted(per_worker.items())))
    same = rows[0][3] == rows[1][3]
    print("results identical to the 1-worker run, in order: " + ("yes" if same else "NO"))
    return 0 if same else 1


def _digest(checksums: list[int]) -> int:
    return zlib.crc32(np.asarray(checksums, dtype=np.uint32).tobytes())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = argparse.ArgumentParser(prog="steadypool", description=sp.__doc__)
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="run the pool on bundled synthetic work")
    demo.add_argument("--items", type=int, default=600, help="items to process")
    demo.add_argument("--workers", type=int, default=2, help="worker threads")
    demo.add_argument("--batch-size", type=int, default=16, help="results per batch")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    commands.add_parser("diagnose", help="print versions and machine facts for a bug report")
    args = parser.parse_args(argv)
    if args.command == "diagnose":
        print(sp.diagnose())
        return 0
    if args.command in (None, "demo"):
        if args.command is None:
            args = demo.parse_args([])
        return _demo(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
