"""Seed-mIoU benchmark: SEAM's and irn's evaluation patterns and `steadypool eval`, side
by side on the same generated VOC-sized files.

    python benchmarks/eval.py [--images 200] [--thresholds 0:0.6:0.01] [--baseline-thresholds 6]

  SEAM pattern  SEAM evaluation.py --curve: for each threshold, 8 processes over a
                strided split of the list, each loading the psa-layout .npy, building a
                21-channel tensor with the threshold as channel 0, argmax, reading the GT
                PNG and adding 63 sums into 32-bit shared integers under their locks.
  irn pattern   irn step/eval_cam.py, run once per threshold (it takes one): one process
                reads every {"keys", "high_res"} .npy (ToCo's layout, irn's without "cam"),
                pads the threshold, argmax, and a chainercv-style confusion matrix over
                the list; nanmean.
  read once     the floor: reading every .npy and GT PNG once, one thread.
  steadypool    `steadypool.cam.evaluate` on the psa and the irn files: every threshold
                in one pass per image, on a pool of every CPU.

The two patterns cost one full pass per threshold by construction, so they are timed
on `--baseline-thresholds` thresholds spread over the grid and scaled to the whole grid
(the table says so); their mIoU at those thresholds is checked against steadypool's.
Independent re-implementations of the published loops, not their code.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from steadypool.cam import evaluate

HERE = Path(__file__).resolve().parent
LAYOUT_NAMES = {"psa": "psa/SEAM", "irn": "irn/ToCo"}  # the irn files lack irn's "cam"
SIZES = ((500, 375), (375, 500), (500, 333), (500, 281), (353, 500), (480, 360))


def generate(folder: Path, count: int, seed: int = 0) -> list[str]:
    """VOC-sized data: per image 1-3 classes with smooth maps in [0, 1), GT PNGs (palette)
    with objects, 255 borders; the same maps in psa layout and in irn layout."""
    rng = np.random.default_rng(seed)
    for sub in ("psa", "irn", "gt"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    names = []
    palette = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)]
    for i in range(count):
        name = f"2007_{i:06d}"
        width, height = SIZES[i % len(SIZES)]
        keys = np.sort(rng.choice(20, size=int(rng.integers(1, 4)), replace=False))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        gt = np.zeros((height, width), np.uint8)
        maps = np.empty((len(keys), height, width), np.float32)
        for j, k in enumerate(keys):
            cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
            sy, sx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
            blob = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
            noise = rng.random((height // 25 + 1, width // 25 + 1)).astype(np.float32)
            noise = np.kron(noise, np.ones((25, 25), np.float32))[:height, :width]
            maps[j] = (0.8 * blob + 0.2 * noise) / 1.00001
            inside = blob > 0.35
            gt[inside] = k + 1
            edge = inside & ~np.roll(inside, 3, axis=0)
            gt[edge] = 255
        gt[:2], gt[-2:] = 255, 255
        image = Image.fromarray(gt).convert("P")
        image.putpalette(palette)
        image.save(folder / "gt" / f"{name}.png")
        psa: Any = {int(k): m for k, m in zip(keys, maps, strict=True)}
        irn: Any = {"keys": keys.astype(np.int64), "high_res": maps}
        np.save(folder / "psa" / f"{name}.npy", psa)
        np.save(folder / "irn" / f"{name}.npy", irn)
        names.append(name)
    return names


# --- SEAM evaluation.py pattern -------------------------------------------------------


def _seam_compare(
    start: int, step: int, tp: Any, p: Any, t: Any, names: list[str], cams: str, gt: str, thr: float
) -> None:
    for idx in range(start, len(names), step):
        name = names[idx]
        predict_dict = np.load(os.path.join(cams, f"{name}.npy"), allow_pickle=True).item()
        h, w = next(iter(predict_dict.values())).shape
        tensor = np.zeros((21, h, w), np.float32)
        for key in predict_dict:
            tensor[key + 1] = predict_dict[key]
        tensor[0, :, :] = thr
        predict = np.argmax(tensor, axis=0).astype(np.uint8)
        label = np.array(Image.open(os.path.join(gt, f"{name}.png")))
        cal = label < 255
        mask = (predict == label) * cal
        for i in range(21):
            with p[i].get_lock():
                p[i].value += int(np.sum((predict == i) * cal))
            with t[i].get_lock():
                t[i].value += int(np.sum((label == i) * cal))
            with tp[i].get_lock():
                tp[i].value += int(np.sum((label == i) * mask))


def seam_pattern(cams: Path, gt: Path, names: list[str], thr: float) -> float:
    """One threshold of SEAM's curve: 8 processes, shared 32-bit counters."""
    context = multiprocessing.get_context("fork")
    tp = [context.Value("i", 0, lock=True) for _ in range(21)]
    p = [context.Value("i", 0, lock=True) for _ in range(21)]
    t = [context.Value("i", 0, lock=True) for _ in range(21)]
    procs = [
        context.Process(target=_seam_compare, args=(i, 8, tp, p, t, names, str(cams), str(gt), thr))
        for i in range(8)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    iou = [tp[i].value / (t[i].value + p[i].value - tp[i].value + 1e-10) for i in range(21)]
    return float(np.mean(iou))


# --- irn eval_cam.py pattern ----------------------------------------------------------


def irn_pattern(cams: Path, gt: Path, names: list[str], thr: float) -> float:
    """One run of irn's eval_cam.py at one threshold (chainercv's confusion, nanmean)."""
    labels = []
    for name in names:
        label = np.array(Image.open(gt / f"{name}.png")).astype(np.int32)
        label[label == 255] = -1  # chainercv's VOC dataset
        labels.append(label)
    preds = []
    for name in names:
        cam_dict = np.load(cams / f"{name}.npy", allow_pickle=True).item()
        c = np.pad(
            cam_dict["high_res"], ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=thr
        )
        keys = np.pad(cam_dict["keys"] + 1, (1, 0), mode="constant")
        preds.append(keys[np.argmax(c, axis=0)].copy())
    n_class = 0
    confusion = np.zeros((n_class, n_class), dtype=np.int64)
    for pred, label in zip(preds, labels, strict=True):  # calc_semantic_segmentation_confusion
        pred, label = pred.flatten(), label.flatten()
        lb_max = int(np.max((pred, label)))
        if lb_max >= n_class:
            expanded = np.zeros((lb_max + 1, lb_max + 1), dtype=np.int64)
            expanded[0:n_class, 0:n_class] = confusion
            n_class, confusion = lb_max + 1, expanded
        mask = label >= 0
        confusion += np.bincount(
            n_class * label[mask].astype(int) + pred[mask], minlength=n_class**2
        ).reshape((n_class, n_class))
    gtj, resj, gtjresj = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = gtjresj / (gtj + resj - gtjresj)
    return float(np.nanmean(iou))


def read_once(folder: Path, names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        np.load(folder / "irn" / f"{name}.npy", allow_pickle=True).item()
        np.asarray(Image.open(folder / "gt" / f"{name}.png"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--thresholds", default="0:0.6:0.01")
    parser.add_argument("--baseline-thresholds", type=int, default=6)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "eval.json")
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="steadypool-eval-bench-"))
    try:
        t0 = time.perf_counter()
        names = sorted(p.stem for p in (folder / "gt").glob("*.png")) if args.keep else []
        if len(names) != args.images:
            names = generate(folder, args.images)
        print(f"{len(names)} VOC-sized images in {folder} ({time.perf_counter() - t0:.1f}s)")
        rows: list[dict[str, Any]] = []

        floor = read_once(folder, names)
        rows.append({"runner": "read once (every .npy and GT, one thread)", "seconds": floor})

        results = {}
        for layout, backend in (("psa", "threads"), ("irn", "threads"), ("irn", "processes")):
            start = time.perf_counter()
            result = evaluate(
                folder / layout, folder / "gt", thresholds=args.thresholds, backend=backend
            )
            seconds = time.perf_counter() - start
            results[layout] = result
            rows.append(
                {
                    "runner": f"steadypool eval, {LAYOUT_NAMES[layout]} files, {backend}",
                    "seconds": seconds,
                    "thresholds": len(result.thresholds),
                    "best_threshold": result.best_threshold,
                    "best_miou": result.best_miou,
                }
            )
        grid = results["irn"].thresholds
        picks = np.linspace(0, len(grid) - 1, args.baseline_thresholds).round().astype(int)
        for label, pattern, layout, rule in (
            ("SEAM evaluation.py pattern (8 processes per threshold)", seam_pattern, "psa", "seam"),
            ("irn eval_cam.py pattern (one run per threshold)", irn_pattern, "irn", "irn"),
        ):
            ours = results[layout]
            check = ours if rule == "irn" else _with_rule(ours, rule)
            start = time.perf_counter()
            worst = 0.0
            for i in picks:
                value = pattern(folder / layout, folder / "gt", names, grid[i])
                worst = max(worst, abs(value - check.miou[i]))
            measured = time.perf_counter() - start
            rows.append(
                {
                    "runner": label,
                    "seconds": measured * len(grid) / len(picks),
                    "measured_seconds": measured,
                    "measured_thresholds": len(picks),
                    "thresholds": len(grid),
                    "max_miou_difference_vs_steadypool": worst,
                }
            )

        base = next(r["seconds"] for r in rows if r["runner"].startswith("SEAM"))
        print(
            f"\n{len(names)} images, {len(grid)} thresholds ({args.thresholds}), "
            f"{os.cpu_count()} CPUs"
        )
        print(f"{'runner':<58} {'seconds':>9} {'x SEAM':>7} {'x read once':>11}")
        for row in rows:
            note = " (scaled)" if "measured_seconds" in row else ""
            print(
                f"{row['runner']:<58} {row['seconds']:>9.2f} {base / row['seconds']:>6.1f}x "
                f"{row['seconds'] / floor:>10.2f}{note}"
            )
        for row in rows:
            if "max_miou_difference_vs_steadypool" in row:
                print(
                    f"  {row['runner'].split(' (')[0]}: timed on {row['measured_thresholds']} "
                    f"thresholds ({row['measured_seconds']:.1f}s), scaled to {row['thresholds']}; "
                    "mIoU equal to steadypool's within "
                    f"{row['max_miou_difference_vs_steadypool']:.1e}"
                )
        meta = {
            "images": len(names),
            "thresholds": args.thresholds,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "machine": platform.platform(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _with_rule(result: Any, rule: str) -> Any:
    import dataclasses

    return dataclasses.replace(result, absent=rule)


if __name__ == "__main__":
    main()
