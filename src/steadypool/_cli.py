"""The ``steadypool`` command line (also ``python -m steadypool``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path
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


def _cam(args: argparse.Namespace) -> int:
    from ._tta._inputs import CamInputError
    from ._tta._runner import CamConfig, run_cam

    scales = tuple(float(x) for part in args.scales for x in part.split(",") if x)
    config = CamConfig(
        images=args.images,
        labels=args.labels,
        model=args.model,
        out=args.out,
        list_file=args.list,
        weights=args.weights,
        scales=scales,
        flip=not args.no_flip,
        format=args.format,
        devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()),
        backend=args.backend,
        address=args.address,
        pred_dir=args.pred_dir,
        bg=args.bg,
        overlay_dir=args.overlay_dir,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    try:
        summary = run_cam(config)
    except (CamInputError, ValueError, TypeError) as exc:
        print(f"steadypool cam: error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 1 if summary.failures else 0


def _cam_demo(args: argparse.Namespace) -> int:
    from ._tta._demo import run_demo

    out = args.out.resolve()
    summary = run_demo(out, workers=args.workers, progress=not args.quiet)
    print(summary)
    print(f"outputs: {out / 'cams'} (psa .npy), {out / 'pred'} (PNG), {out / 'overlay'} (PNG)")
    return 1 if summary.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    # `--model mynet:Net` finds mynet.py in the current folder, as with `python -m
    # steadypool` (an installed console script does not put the folder on sys.path).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog="steadypool", description=sp.__doc__)
    parser.add_argument("--version", action="version", version=f"steadypool {sp.__version__}")
    commands = parser.add_subparsers(dest="command")

    demo = commands.add_parser(
        "demo", help="run the CAM runner on bundled photos with a built-in network (CPU)"
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("steadypool-demo"),
        help="output folder (default: ./steadypool-demo)",
    )
    demo.add_argument("--workers", type=int, default=2, help="CPU device workers")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    cam = commands.add_parser("cam", help="multi-scale x flip CAM inference (psa / irn files)")
    cam.add_argument("--images", type=Path, required=True, help="folder of images")
    cam.add_argument("--list", type=Path, help="image names, one per line (psa lines work)")
    cam.add_argument("--labels", type=Path, required=True, help="np.save'd {name: C floats}")
    cam.add_argument("--model", required=True, help="MODULE:ATTR, a class or factory")
    cam.add_argument("--weights", type=Path, help="a state dict for the model")
    cam.add_argument(
        "--scales",
        nargs="+",
        default=["1.0,0.5,1.5,2.0"],
        help="scales, space or comma separated (default 1.0,0.5,1.5,2.0)",
    )
    cam.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    cam.add_argument("--format", choices=("psa", "irn"), default="psa")
    cam.add_argument("--devices", default="cpu", help="comma separated, e.g. cuda:0,cuda:1")
    cam.add_argument("--backend", choices=("threads", "processes", "ray"), default="threads")
    cam.add_argument("--address", help="Ray cluster address (--backend ray; default: local)")
    cam.add_argument("--out", type=Path, required=True, help="output folder for .npy files")
    cam.add_argument("--pred-dir", type=Path, help="also write psa-style prediction PNGs")
    cam.add_argument("--bg", type=float, default=0.2, help="background score for --pred-dir")
    cam.add_argument("--overlay-dir", type=Path, help="also write photo + heat-map PNGs")
    cam.add_argument("--no-resume", action="store_true", help="redo images already done")
    cam.add_argument("--quiet", action="store_true", help="no progress bar")

    pool_demo = commands.add_parser("pool-demo", help="the pool alone on synthetic work")
    pool_demo.add_argument("--items", type=int, default=600, help="items to process")
    pool_demo.add_argument("--workers", type=int, default=2, help="worker threads")
    pool_demo.add_argument("--batch-size", type=int, default=16, help="results per batch")
    pool_demo.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("diagnose", help="print versions and machine facts for a bug report")
    args = parser.parse_args(argv)
    if args.command == "diagnose":
        print(sp.diagnose())
        return 0
    if args.command == "cam":
        return _cam(args)
    if args.command == "pool-demo":
        return _demo(args)
    if args.command is None:  # say what there is; run nothing
        parser.print_help()
        return 2
    return _cam_demo(args)


if __name__ == "__main__":
    sys.exit(main())
