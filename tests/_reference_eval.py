"""An independent seed-mIoU computation to check `steadypool eval` against: one pass
per threshold, each file turned into a prediction the way its own code base's
evaluation does it, sharing no code with steadypool._tta.

- psa / SEAM layout: SEAM ``evaluation.py`` (npy branch): a 21-channel tensor of
  zeros, ``tensor[key + 1] = map``, ``tensor[0] = t``, argmax.
- irn / ToCo layout: irn ``step/eval_cam.py``: ``np.pad(high_res, t)``, keys padded.
- PuzzleCAM layout: its ``evaluate.py``: ``np.pad(hr_cam, t)``, ``keys[argmax]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def prediction(path: Path, threshold: float, classes: int = 21) -> np.ndarray:
    """One file's prediction at one background threshold."""
    d = np.load(path, allow_pickle=True).item()
    if "hr_cam" in d:
        cams = np.pad(
            d["hr_cam"], ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold
        )
        pred: np.ndarray = np.asarray(d["keys"])[np.argmax(cams, axis=0)]
        return pred
    if "high_res" in d:
        cams = np.pad(
            d["high_res"], ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold
        )
        keys = np.pad(np.asarray(d["keys"]) + 1, (1, 0), mode="constant")
        pred = keys[np.argmax(cams, axis=0)]
        return pred
    h, w = next(iter(d.values())).shape
    tensor = np.zeros((classes, h, w), np.float32)
    for key in d:
        tensor[key + 1] = d[key]
    tensor[0, :, :] = threshold
    pred = np.argmax(tensor, axis=0)
    return pred


def confusion(
    cams: Path, gt: Path, names: Sequence[str], threshold: float, classes: int = 21
) -> np.ndarray:
    """The (C, C) confusion (rows GT, columns prediction) over `names`, GT 255 left out."""
    total = np.zeros((classes, classes), np.int64)
    for name in names:
        pred = prediction(cams / f"{name}.npy", threshold, classes).astype(np.int64)
        label = np.array(Image.open(gt / f"{name}.png")).astype(np.int64)
        keep = label != 255
        total += np.bincount(
            classes * label[keep] + pred[keep], minlength=classes * classes
        ).reshape(classes, classes)
    return total


def miou(conf: np.ndarray, absent: str) -> float:
    """irn: nanmean; seam: TP / (T + P - TP + 1e-10) averaged; toco: GT classes only."""
    conf = conf.astype(np.float64)
    inter = np.diag(conf)
    gtj, resj = conf.sum(axis=1), conf.sum(axis=0)
    if absent == "seam":
        return float(np.mean(inter / (gtj + resj - inter + 1e-10)))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (gtj + resj - inter)
    if absent == "toco":
        return float(np.nanmean(iou[gtj > 0]))
    return float(np.nanmean(iou))
