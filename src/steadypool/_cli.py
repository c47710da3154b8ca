"""The ``steadypool`` command line (also ``python -m steadypool``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import steadypool as sp

from .cam import ABSENT_CLASSES, DEFAULT_THRESHOLDS, FORMATS, CamInputError, EvalError

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


def _scales(parts: Sequence[str]) -> tuple[float, ...]:
    scales = []
    for text in (x.strip() for part in parts for x in part.split(",")):
        if not text:
            continue
        try:
            scales.append(float(text))
        except ValueError:
            raise CamInputError(f"--scales: {text!r} is not a number") from None
    return tuple(scales)


def _model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; a VALUE that is a Python literal (``21``, ``0.5``, ``True``,
    ``(1, 2)``, ``'x'``) is that value, anything else is the string as written."""
    import ast

    args: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise CamInputError(f"--model-arg must be NAME=VALUE, got {pair!r}")
        try:
            args[name.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            args[name.strip()] = text
    return args


def _cam(args: argparse.Namespace) -> int:
    from .cam import CamConfig, run

    config = CamConfig(
        images=args.images,
        labels=args.labels,
        model=args.model,
        model_args=_model_args(args.model_arg),
        out=args.out,
        list_file=args.list,
        weights=args.weights,
        scales=_scales(args.scales),
        flip=not args.no_flip,
        format=args.format,
        devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()),
        backend=args.backend,
        address=args.address,
        max_worker_memory=args.max_worker_memory,
        pred_dir=args.pred_dir,
        bg=args.bg,
        overlay_dir=args.overlay_dir,
        resume=not args.no_resume,
        cpu_workers=args.cpu_workers,
        amp=args.amp,
        progress=not args.quiet,
        eval_gt=args.eval_gt,
        eval_thresholds=args.eval_thresholds,
        eval_absent=args.absent_classes,
    )
    summary = run(config)
    print(summary)
    return 1 if summary.failures else 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from .cam import evaluate

    if args.workers is not None and args.workers < 1:
        raise EvalError(f"--workers must be at least 1, got {args.workers}")
    result = evaluate(
        args.cams,
        args.gt,
        list_file=args.list,
        format=args.format,
        thresholds=args.thresholds,
        absent=args.absent_classes,
        classes=args.classes,
        workers=args.workers,
    )
    print(result)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        except OSError as exc:
            raise EvalError(f"cannot write {args.json}: {exc}") from exc
        print(f"json: {args.json}")
    if args.plot is not None:
        try:
            result.plot(args.plot)
        except OSError as exc:
            raise EvalError(f"cannot write {args.plot}: {exc}") from exc
        print(f"plot: {args.plot}")
    return 0


def _cam_demo(args: argparse.Namespace) -> int:
    from .cam import demo

    out = args.out.resolve()
    summary = demo(out, workers=args.workers, progress=not args.quiet)
    print(summary)
    print(f"outputs: {out / 'cams'} (psa .npy), {out / 'pred'} (PNG), {out / 'overlay'} (PNG)")
    return 1 if summary.failures else 0


def _diagnose(args: argparse.Namespace) -> int:
    report = None
    if args.report is not None:
        try:
            report = sys.stdin.read() if args.report == "-" else Path(args.report).read_text()
        except OSError as exc:
            print(f"steadypool diagnose: error: cannot read {args.report}: {exc}", file=sys.stderr)
            return 2
    print(sp.diagnose(report.rstrip() if report is not None else None))
    return 0


def _absent_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--absent-classes",
        choices=tuple(ABSENT_CLASSES),
        default="irn",
        help="a class absent from the list: irn = left out of the mean when neither in "
        "the GT nor predicted (nanmean, default); seam = counted as 0 (SEAM, PuzzleCAM); "
        "toco = only classes in the GT count",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    # `--model mynet:Net` finds mynet.py in the current folder, as with `python -m
    # steadypool` (an installed console script does not put the folder on sys.path).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # say what there is; run nothing
        parser.print_help()
        return 2
    if args.command == "diagnose":
        return _diagnose(args)
    if args.command == "pool-demo":
        return _demo(args)
    try:
        if args.command == "eval":
            return _eval(args)
        return _cam(args) if args.command == "cam" else _cam_demo(args)
    except (CamInputError, EvalError) as exc:
        print(f"steadypool {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steadypool", description=sp.__doc__)
    parser.add_argument("--version", action="version", version=f"steadypool {sp.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the CAM runner on bundled photos with a built-in network (CPU)",
        description="CAMs of the bundled photos with the built-in network (--model demo), "
        "on CPU device workers: psa .npy files in OUT/cams, prediction PNGs in OUT/pred, "
        "photo + heat-map PNGs in OUT/overlay.  Needs the cam extra.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("steadypool-demo"),
        help="output folder (default: ./steadypool-demo)",
    )
    demo.add_argument("--workers", type=int, default=2, help="CPU device workers (default 2)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    cam = commands.add_parser(
        "cam",
        help="multi-scale x flip CAM inference (psa, irn, SEAM, PuzzleCAM, ToCo files)",
        description="Multi-scale x flip CAM inference over a folder of images on N devices, "
        "writing the .npy files of psa, irn, SEAM, PuzzleCAM or ToCo.  Resumable: a rerun "
        "with the same parameters does what is not finished.  "
        "Exit code 0: all done; 1: some images failed (listed); 2: the run was refused "
        "before any work.",
    )
    cam.add_argument("--images", type=Path, required=True, help="folder of images")
    cam.add_argument(
        "--list",
        type=Path,
        help="image names, one per line (psa's train.txt lines work); default: every "
        "image in --images",
    )
    cam.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="np.save'd {name: C floats} (psa's cls_labels.npy; irn's integer keys work)",
    )
    cam.add_argument(
        "--model",
        required=True,
        help="MODULE:ATTR, a class or factory of the network (found from the current "
        "folder), or 'demo' for the built-in network",
    )
    cam.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a keyword argument for the model's constructor; repeat for more (VALUE is a "
        "Python literal or a string)",
    )
    cam.add_argument(
        "--weights",
        type=Path,
        help="checkpoint: a state dict, or one under 'state_dict' / 'model'; DataParallel's "
        "'module.' prefixes are removed",
    )
    cam.add_argument(
        "--scales",
        nargs="+",
        default=["1.0,0.5,1.5,2.0"],
        help="scales, space or comma separated (default 1.0,0.5,1.5,2.0)",
    )
    cam.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    cam.add_argument(
        "--amp",
        choices=("bf16", "fp16"),
        help="run the network under autocast to bf16 or fp16 (default: exact float32; "
        "the math after the network stays float32)",
    )
    cam.add_argument(
        "--format",
        choices=FORMATS,
        default="psa",
        help="whose CAM step to reproduce, files included: psa {class: HxW} (infer_cls.py); "
        "irn {'keys', 'cam', 'high_res'} (make_cam.py); seam: psa's file, SEAM's min-max "
        "(infer_SEAM.py); puzzlecam {'keys' (background 0), 'cam', 'hr_cam'} "
        "(inference_classification.py); toco {'keys', 'high_res'} (multi_scale_cam2) "
        "(default psa)",
    )
    cam.add_argument(
        "--devices",
        default="cpu",
        help="one device worker per entry, comma separated, e.g. cuda:0,cuda:1 or cpu,cpu "
        "(default cpu)",
    )
    cam.add_argument(
        "--backend",
        choices=("threads", "processes", "ray"),
        default="threads",
        help="where device workers run (default threads)",
    )
    cam.add_argument(
        "--address", help="Ray cluster address, e.g. auto (--backend ray; default: local)"
    )
    cam.add_argument(
        "--max-worker-memory",
        metavar="SIZE",
        help="recycle a device worker whose resident memory passes SIZE (e.g. 6GiB; "
        "--backend processes or ray): a fresh one, loading the network again, takes its "
        "place instead of the OOM killer ending it mid-run",
    )
    cam.add_argument(
        "--cpu-workers",
        type=int,
        help="threads that decode, resize and save (default: CPUs, between 2 and 8)",
    )
    cam.add_argument("--out", type=Path, required=True, help="output folder for .npy files")
    cam.add_argument("--pred-dir", type=Path, help="also write psa-style prediction PNGs")
    cam.add_argument(
        "--bg", type=float, default=0.2, help="background score for --pred-dir (default 0.2)"
    )
    cam.add_argument("--overlay-dir", type=Path, help="also write photo + heat-map PNGs")
    cam.add_argument(
        "--no-resume",
        action="store_true",
        help="redo images already done (default: skip them; a folder made with other "
        "parameters is refused)",
    )
    cam.add_argument(
        "--eval-gt",
        type=Path,
        metavar="DIR",
        help="after the run, the seed mIoU against these GT PNGs (as steadypool eval)",
    )
    cam.add_argument(
        "--eval-thresholds",
        default=DEFAULT_THRESHOLDS,
        metavar="T",
        help=f"background thresholds for --eval-gt (default {DEFAULT_THRESHOLDS})",
    )
    _absent_option(cam)
    cam.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = commands.add_parser(
        "eval",
        help="seed mIoU of a folder of CAM files against GT PNGs (threshold or sweep)",
        description="The seed mIoU every WSSS code base computes after its CAM step: a "
        "background plane t in front of the maps, argmax (background wins ties), one "
        "confusion matrix over the list ignoring GT 255, IoU per class.  One pass per "
        "image for every threshold, in parallel.  Reads psa, irn, SEAM, PuzzleCAM and "
        "ToCo files.  Exit code 0: done; 2: refused (one error line).",
    )
    ev.add_argument("--cams", type=Path, required=True, help="folder of NAME.npy CAM files")
    ev.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="folder of NAME.png ground truth: palette indices (SegmentationClass) or grey "
        "values (SegmentationClassAug); 255 is ignored",
    )
    ev.add_argument(
        "--list", type=Path, help="names to evaluate, one per line (default: every .npy)"
    )
    ev.add_argument(
        "--format",
        choices=FORMATS,
        help="the format the files must have (default: the first file's; all must agree)",
    )
    ev.add_argument(
        "--thresholds",
        default=DEFAULT_THRESHOLDS,
        metavar="T",
        help="one threshold (0.15), a list (0.1,0.2) or START:STOP:STEP, stop excluded "
        f"(default {DEFAULT_THRESHOLDS}: SEAM's 0.00-0.59)",
    )
    _absent_option(ev)
    ev.add_argument(
        "--classes", type=int, default=21, help="classes with background (default 21, VOC)"
    )
    ev.add_argument("--workers", type=int, help="parallel readers (default: every CPU)")
    ev.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")
    ev.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also draw mIoU against the threshold"
    )

    pool_demo = commands.add_parser(
        "pool-demo",
        help="the pool alone on synthetic work",
        description="Synthetic FFT work on 1 worker, then on N, with checksums compared.",
    )
    pool_demo.add_argument("--items", type=int, default=600, help="items to process")
    pool_demo.add_argument("--workers", type=int, default=2, help="worker threads")
    pool_demo.add_argument("--batch-size", type=int, default=16, help="results per batch")
    pool_demo.add_argument("--quiet", action="store_true", help="no progress bar")

    diagnose = commands.add_parser(
        "diagnose",
        help="print versions and machine facts for a bug report, with a stall report",
        description="Print what a bug report needs: versions, machine, steadypool threads; "
        "with REPORT, the stall report or error text (as logged) after them.",
    )
    diagnose.add_argument(
        "report",
        nargs="?",
        metavar="REPORT",
        help="a file holding a stall report (e.g. the logged WARNING), or - for stdin",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
