"""The seed mIoU of a folder of CAM files, for one background threshold or a sweep.

What every WSSS code base computes after its CAM step: a constant background plane
``t`` in front of the class maps, argmax (background wins ties, the lower class wins
foreground ties), one confusion matrix over the image list ignoring GT 255, IoU per
class, their mean.  They differ only in ``t`` and in how a class absent from the list
counts (`ABSENT_CLASSES`).

One pass per image serves every threshold: a pixel's prediction is its best class
``c`` (max ``m`` over the maps) while ``t < m``, and background from there on, so the
pixel adds 1 to a histogram over (GT, ``c``, number of thresholds below ``m``); the
confusion matrix of every threshold follows from cumulative sums at the end.  The
comparison is made in the maps' own dtype (float32: ``float32(t) >= m`` is
background), as ``np.pad(maps, constant_values=t)`` then ``argmax`` does.

Data flow: the caller's thread lists the files and checks that they exist; a
`steadypool.Pool` (threads by default: decoding and numpy release the GIL) reads
chunks of images and returns each chunk's histogram, which the caller adds up in
64-bit integers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import steadypool as sp

from ._files import CamFileError, read_cams
from ._inputs import _list_name
from ._recipes import RECIPES, Layout

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ABSENT_CLASSES",
    "VOC_CLASSES",
    "EvalError",
    "EvalResult",
    "evaluate",
    "parse_thresholds",
]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

ABSENT_CLASSES = {
    "irn": "irn's nanmean: a class neither in the GT nor predicted is left out "
    "(irn step/eval_cam.py)",
    "seam": "plain mean over every class, a class neither in the GT nor predicted "
    "counting 0 (SEAM and PuzzleCAM evaluation.py, IoU = TP / (T + P - TP + 1e-10))",
    "toco": "mean over the classes present in the GT (ToCo utils/evaluate.py)",
}
DEFAULT_THRESHOLDS = "0:0.6:0.01"  # SEAM's curve: t = 0.00 ... 0.59


class EvalError(ValueError):
    """The evaluation cannot be done: a bad threshold grid, missing or mismatched files."""


def parse_thresholds(spec: str | float | Sequence[float]) -> tuple[float, ...]:
    """Thresholds from ``0.15``, ``0.1,0.2`` or ``START:STOP:STEP`` (stop excluded, so
    SEAM's 0.00-0.59 is ``0:0.6:0.01``); ascending, without repeats.

    Raises:
        EvalError: Not numbers, a step that is not positive, an empty grid, or a
            threshold that is negative or not finite.
    """
    if isinstance(spec, int | float):
        values = [float(spec)]
    elif isinstance(spec, str):
        text = spec.strip()
        try:
            if ":" in text:
                parts = [float(p) for p in text.split(":")]
                if len(parts) != 3:
                    raise EvalError(f"--thresholds {spec!r}: START:STOP:STEP has three numbers")
                start, stop, step = parts
                if not step > 0:
                    raise EvalError(f"--thresholds {spec!r}: the step must be positive")
                count = max(0, math.ceil((stop - start) / step - 1e-9))
                # round: i * 0.01 is then the same double as SEAM's i / 100.0
                values = [round(start + i * step, 10) for i in range(count)]
            else:
                values = [float(p) for p in text.split(",") if p.strip()]
        except ValueError as exc:
            if isinstance(exc, EvalError):
                raise
            raise EvalError(
                f"--thresholds {spec!r} is not a number, a list or START:STOP:STEP"
            ) from None
    else:
        values = [float(v) for v in spec]
    if not values:
        raise EvalError(f"--thresholds {spec!r} gives no threshold (the grid is empty)")
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise EvalError(f"--thresholds must be finite and >= 0 (a background score), got {bad[0]}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class EvalResult:
    """The seed mIoU of one folder at each threshold.

    Attributes:
        thresholds: The background thresholds, ascending.
        confusions: (T, C, C) int64; ``[i, g, p]`` counts pixels of GT class ``g``
            predicted ``p`` at ``thresholds[i]`` (GT 255 left out).
        class_names: One name per class (VOC's with 21 classes).
        absent: How a class absent from the list counts (`ABSENT_CLASSES`).
        images: How many images were evaluated.
        layout: The files' layout (psa, irn, puzzlecam or toco).
    """

    thresholds: tuple[float, ...]
    confusions: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    absent: str
    images: int
    layout: str

    def iou(self, index: int | None = None) -> np.ndarray:
        """Per-class IoU at ``thresholds[index]`` (default: the best); NaN for a class
        the absent-class policy leaves out."""
        conf = self.confusions[self.best_index if index is None else index].astype(np.float64)
        inter = np.diag(conf)
        gt, pred = conf.sum(axis=1), conf.sum(axis=0)
        union = gt + pred - inter
        iou: np.ndarray
        if self.absent == "seam":
            iou = inter / (union + 1e-10)
            return iou
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
        if self.absent == "toco":
            iou[gt == 0] = np.nan
        return iou

    @property
    def miou(self) -> tuple[float, ...]:
        """The mean IoU at each threshold (a fraction, 0-1)."""
        out = []
        for i in range(len(self.thresholds)):
            iou = self.iou(i)
            out.append(float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"))
        return tuple(out)

    @property
    def best_index(self) -> int:
        """The index of the best threshold (the first, on a tie)."""
        return int(np.argmax(np.nan_to_num(np.array(self.miou), nan=-1.0)))

    @property
    def best_threshold(self) -> float:
        """The threshold with the highest mIoU."""
        return self.thresholds[self.best_index]

    @property
    def best_miou(self) -> float:
        """The highest mIoU (a fraction, 0-1)."""
        return self.miou[self.best_index]

    def foreground(self) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) of foreground-vs-background at each threshold: a pixel is
        foreground when its GT (or prediction) is a class other than 0."""
        conf = self.confusions.astype(np.float64)
        both = conf[:, 1:, 1:].sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = both / conf[:, :, 1:].sum(axis=(1, 2))
            recall = both / conf[:, 1:, :].sum(axis=(1, 2))
        return precision, recall

    def plot(self, path: Path | str) -> None:
        """Draw mIoU (and foreground precision / recall) against the threshold as a
        PNG (matplotlib, Agg backend).

        Raises:
            EvalError: matplotlib is not installed.
        """
        plot(self, path)

    def to_json(self) -> dict[str, Any]:
        """Everything in plain JSON types (NaN as null)."""
        precision, recall = self.foreground()
        best = self.best_index
        return {
            "images": self.images,
            "layout": self.layout,
            "absent_classes": self.absent,
            "absent_classes_rule": ABSENT_CLASSES[self.absent],
            "thresholds": list(self.thresholds),
            "miou": [_num(v) for v in self.miou],
            "foreground_precision": [_num(v) for v in precision],
            "foreground_recall": [_num(v) for v in recall],
            "best": {
                "threshold": self.thresholds[best],
                "miou": _num(self.miou[best]),
                "iou": {n: _num(v) for n, v in zip(self.class_names, self.iou(best), strict=True)},
                "confusion": self.confusions[best].tolist(),
            },
        }

    def __str__(self) -> str:
        precision, recall = self.foreground()
        miou = self.miou
        lines = [
            f"seed mIoU of {self.images} images ({self.layout} files, "
            f"{len(self.class_names)} classes, GT 255 ignored)",
            f"absent classes: {self.absent} = {ABSENT_CLASSES[self.absent]}",
        ]
        if len(self.thresholds) > 1:
            lines.append(f"{'threshold':>9}  {'mIoU %':>7}  {'fg prec %':>9}  {'fg rec %':>8}")
            for t, m, p, r in zip(self.thresholds, miou, precision, recall, strict=True):
                lines.append(f"{t:>9.3f}  {m * 100:>7.2f}  {p * 100:>9.2f}  {r * 100:>8.2f}")
        best = self.best_index
        lines.append(
            f"best threshold {self.thresholds[best]:g}: mIoU {miou[best] * 100:.2f}%"
            if len(self.thresholds) > 1
            else f"threshold {self.thresholds[0]:g}: mIoU {miou[0] * 100:.2f}%"
        )
        lines.append(f"{'class':<14} {'IoU %':>7}")
        for name, value in zip(self.class_names, self.iou(best), strict=True):
            shown = f"{value * 100:>7.2f}" if math.isfinite(value) else f"{'absent':>7}"
            lines.append(f"{name:<14} {shown}")
        return "\n".join(lines)


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def read_gt(path: Path) -> np.ndarray:
    """A GT PNG as class indices: palette indices (VOC ``SegmentationClass``) or grey
    values (``SegmentationClassAug``).

    Raises:
        EvalError: It cannot be read, or is a colour picture.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                raise EvalError(
                    f"the GT {path} is a {image.mode} picture; expected class indices as "
                    "palette indices (VOC SegmentationClass) or grey values "
                    "(SegmentationClassAug)"
                )
            return np.asarray(image)
    except OSError as exc:
        raise EvalError(f"cannot read the GT {path}: {exc}") from exc


def image_histogram(
    cams_path: Path,
    gt_path: Path,
    thresholds: Sequence[float],
    classes: int,
    layout: Layout | None,
) -> np.ndarray:
    """One image's counts over (GT class, best class, thresholds below its score),
    flattened, int64 (see the module's docstring)."""
    cams = read_cams(cams_path, layout)
    gt = read_gt(gt_path)
    if cams.shape is not None and cams.shape != gt.shape:
        raise EvalError(
            f"{cams_path.name}: the maps are {cams.shape[1]}x{cams.shape[0]}, "
            f"the GT {gt_path.name} {gt.shape[1]}x{gt.shape[0]} (width x height)"
        )
    if len(cams.keys) and (cams.keys.min() < 0 or cams.keys.max() >= classes - 1):
        raise EvalError(f"{cams_path.name}: class {cams.keys.max()} beyond the {classes} classes")
    top = int(gt.max()) if gt.size else 0
    if top >= classes and (top != 255 or int(gt.min()) < 0 or _beyond(gt, classes)):
        wrong = gt[(gt != 255) & ((gt >= classes) | (gt < 0))]
        raise EvalError(
            f"the GT {gt_path} has the value {wrong[0]}, not a class of {classes} nor 255"
        )
    steps = len(thresholds) + 1
    # code = (gt * C + best class) * steps + thresholds below the score, built in place
    code = gt.astype(np.intp).ravel()
    code *= classes
    if len(cams.keys):
        score, best = _best_class(cams.maps, cams.keys)
        code += best.ravel() if isinstance(best, np.ndarray) else best
        code *= steps
        ts = np.asarray(thresholds, dtype=cams.maps[0].dtype)
        code += np.searchsorted(ts, score.ravel(), side="left")
    else:  # no class: every pixel is background at every threshold
        code *= steps
    if top == 255:
        code = code[gt.ravel() != 255]
    counts: np.ndarray = np.bincount(code, minlength=classes * classes * steps)
    return counts.astype(np.int64, copy=False)


def _beyond(gt: np.ndarray, classes: int) -> bool:
    return bool(np.count_nonzero((gt >= classes) & (gt != 255)))


def _best_class(
    maps: Sequence[np.ndarray], keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray | int]:
    """Per pixel the highest map's value and its class (key + 1), the lower class
    winning a tie: ``argmax`` over the maps, computed map by map (argmax along the
    first axis of a (k, H, W) array is several times slower)."""
    if len(keys) == 1:
        return maps[0], int(keys[0]) + 1
    score = maps[0].copy()
    best = np.full(score.shape, keys[0] + 1, np.uint8)
    for key, plane in zip(keys[1:], maps[1:], strict=True):
        better = plane > score  # strict: on a tie the earlier (lower) class stays
        best[better] = key + 1
        np.maximum(score, plane, out=score)
    return score, best


def confusions_of(histogram: np.ndarray, thresholds: int, classes: int) -> np.ndarray:
    """The (T, C, C) confusion matrices from the summed histogram."""
    counts = histogram.reshape(classes, classes, thresholds + 1)
    at_or_below = np.cumsum(counts, axis=2)[:, :, :thresholds]  # background at threshold i
    total = counts.sum(axis=2)
    background = np.moveaxis(at_or_below, 2, 0)  # (T, C, C): predicted 0, not class c
    out: np.ndarray = total[None] - background
    out[:, :, 0] += background.sum(axis=2)
    return out


def list_names(cams: Path, list_file: Path | None) -> list[str]:
    """The names to evaluate: from `list_file` (bare names or psa lines), else every
    ``.npy`` in `cams`."""
    if not cams.is_dir():
        raise EvalError(f"--cams {cams} is not a directory")
    if list_file is not None:
        try:
            lines = list_file.read_text().splitlines()
        except OSError as exc:
            raise EvalError(f"cannot read the list {list_file}: {exc}") from exc
        names = list(dict.fromkeys(_list_name(line) for line in lines if line.strip()))
    else:
        names = sorted(p.stem for p in cams.glob("*.npy") if not p.name.startswith("."))
    if not names:
        raise EvalError(f"nothing to evaluate: {list_file or cams} lists no images")
    return names


def _missing(folder: Path, names: Sequence[str], suffix: str) -> list[str]:
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return [n for n in names if f"{n}{suffix}" not in present]


def evaluate(
    cams: Path | str,
    gt: Path | str,
    *,
    list_file: Path | str | None = None,
    format: str | None = None,
    thresholds: str | float | Sequence[float] = DEFAULT_THRESHOLDS,
    absent: str = "irn",
    classes: int = 21,
    workers: int | None = None,
    backend: str = "threads",
    names: Sequence[str] | None = None,
) -> EvalResult:
    """The seed mIoU of the CAM files in `cams` against the GT PNGs in `gt`.

    Args:
        cams: Folder of ``NAME.npy`` CAM files (psa, irn, SEAM, PuzzleCAM or ToCo layout).
        gt: Folder of ``NAME.png`` GT (palette indices or grey values; 255 ignored).
        list_file: The names to evaluate (default: every ``.npy`` in `cams`).
        format: The format the files must have (default: the first file's; all must agree).
        thresholds: One threshold, a list, or ``START:STOP:STEP`` (stop excluded).
        absent: How a class absent from the list counts: ``irn`` (default), ``seam``
            or ``toco`` (`ABSENT_CLASSES`).
        classes: Classes including background (21 for VOC).
        workers: Pool workers (default: every CPU).
        backend: The pool's backend (``threads`` or ``processes``).
        names: The names to evaluate, instead of `list_file`.

    Returns:
        The confusion matrices and mIoU at every threshold.

    Raises:
        EvalError: Before any work: an unknown format or absent-class rule, an empty or
            negative threshold grid, a missing folder, cam file or GT of the list.
            During the pass: a file of another layout than the format's, maps and GT of
            different sizes, a GT value that is no class.
    """
    cams, gt = Path(cams), Path(gt)
    grid = parse_thresholds(thresholds)
    if absent not in ABSENT_CLASSES:
        raise EvalError(
            f"--absent-classes must be one of {', '.join(ABSENT_CLASSES)}, got {absent!r}"
        )
    if format is not None and format not in RECIPES:
        raise EvalError(f"--format must be one of {', '.join(RECIPES)}, got {format!r}")
    if classes < 2:
        raise EvalError(f"--classes must be at least 2, got {classes}")
    if names is None:
        names = list_names(cams, Path(list_file) if list_file is not None else None)
    elif not names:
        raise EvalError("nothing to evaluate: no image has a CAM file")
    names = list(names)
    if not gt.is_dir():
        raise EvalError(f"--gt {gt} is not a directory")
    for folder, suffix, what in ((cams, ".npy", "CAM files"), (gt, ".png", "GT PNGs")):
        missing = _missing(folder, names, suffix)
        if missing:
            raise EvalError(
                f"{folder} lacks the {what} of {len(missing)} of the {len(names)} listed "
                f"images (first: {missing[0]}{suffix})"
            )
    layout = RECIPES[format].layout if format is not None else None
    if layout is None:
        try:
            layout = read_cams(cams / f"{names[0]}.npy").layout
        except CamFileError as exc:
            raise EvalError(str(exc)) from None
    size = len(grid) + 1
    total = np.zeros(classes * classes * size, np.int64)
    workers = workers or os.cpu_count() or 1
    per_task = max(1, min(16, len(names) // (workers * 4) or 1))
    chunks = [names[i : i + per_task] for i in range(0, len(names), per_task)]

    def chunk(part: list[str]) -> np.ndarray:
        out = np.zeros(classes * classes * size, np.int64)
        for name in part:
            out += image_histogram(cams / f"{name}.npy", gt / f"{name}.png", grid, classes, layout)
        return out

    with sp.Pool(workers, backend=backend, name="eval") as pool:
        try:
            for part in pool.imap(chunk, chunks):
                total += part
        except (CamFileError, EvalError) as exc:
            raise EvalError(str(exc).splitlines()[0]) from None
    names_ = VOC_CLASSES if classes == 21 else tuple(f"class {i}" for i in range(classes))
    return EvalResult(
        thresholds=grid,
        confusions=confusions_of(total, len(grid), classes),
        class_names=names_,
        absent=absent,
        images=len(names),
        layout=layout.value,
    )


def plot(result: EvalResult, path: Path | str) -> None:
    """Draw mIoU (and foreground precision / recall) against the threshold as a PNG,
    with matplotlib's Agg backend.

    Raises:
        EvalError: matplotlib is not installed (``pip install 'steadypool[cam]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EvalError(f"--plot needs matplotlib ({exc}): pip install 'steadypool[cam]'") from exc
    ts = np.array(result.thresholds)
    miou = np.array(result.miou) * 100
    precision, recall = result.foreground()
    figure = Figure(figsize=(5.0, 3.4), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    marker = "o" if len(ts) <= 15 else None
    axes.plot(ts, miou, color="C0", lw=2, marker=marker, label="mIoU")
    axes.plot(ts, precision * 100, color="C1", lw=1, ls="--", label="foreground precision")
    axes.plot(ts, recall * 100, color="C2", lw=1, ls=":", label="foreground recall")
    best = result.best_index
    axes.axvline(ts[best], color="0.6", lw=0.8)
    axes.annotate(
        f"{miou[best]:.1f}% at t={ts[best]:g}",
        (ts[best], miou[best]),
        textcoords="offset points",
        xytext=(6, -14),
        fontsize=8,
    )
    axes.set_xlabel("background threshold t")
    axes.set_ylabel("%")
    axes.set_ylim(0, 101)
    axes.set_title(f"seed mIoU, {result.images} images", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    figure.savefig(str(path), format="png")
