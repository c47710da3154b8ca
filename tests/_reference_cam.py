"""An independent, straightforward CAM implementation to check the runner against.

Written the way psa's infer_cls.py (HEAD 9493e59) and irn's make_cam.py with its
VOC12ClassificationDatasetMSF (HEAD a2ece00: Pillow resizing) do it (one variant at a
time, numpy sums), sharing no code with steadypool._tta.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _norm(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, np.float32)
    for c in range(3):
        out[..., c] = (array[..., c] / 255.0 - MEAN[c]) / STD[c]
    return out.transpose(2, 0, 1)


def psa(
    model: Any, path: str, label: np.ndarray, scales: list[float], flip: bool
) -> dict[int, np.ndarray]:
    img = Image.open(path).convert("RGB")
    width, height = img.size
    variants = []
    for s in scales:
        chw = _norm(
            np.asarray(img.resize((round(width * s), round(height * s)), Image.Resampling.BICUBIC))
        )
        variants.append(chw)
        if flip:
            variants.append(np.flip(chw, -1).copy())
    cam_list = []
    for i, v in enumerate(variants):
        with torch.no_grad():
            cam = model.forward_cam(torch.from_numpy(np.ascontiguousarray(v))[None])
            cam = F.interpolate(cam, (height, width), mode="bilinear", align_corners=False)[0]
        cam = cam.numpy() * label.reshape(-1, 1, 1)
        if flip and i % 2 == 1:
            cam = np.flip(cam, -1)
        cam_list.append(cam)
    sum_cam = np.sum(cam_list, axis=0)
    norm_cam = sum_cam / (np.max(sum_cam, (1, 2), keepdims=True) + 1e-5)
    return {i: norm_cam[i] for i in range(len(label)) if label[i] > 1e-5}


def _pil_rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """irn HEAD's misc/imutils.pil_rescale(img, scale, order=3), written out again."""
    height, width = img.shape[:2]
    target = (int(np.round(height * scale)), int(np.round(width * scale)))
    if target[0] == height and target[1] == width:
        return img
    return np.asarray(Image.fromarray(img).resize(target[::-1], Image.Resampling.BICUBIC))


def irn(model: Any, path: str, label: np.ndarray, scales: list[float]) -> dict[str, Any]:
    """irn HEAD (a2ece00): VOC12ClassificationDatasetMSF + step/make_cam.py, one image."""
    img = np.asarray(Image.open(path).convert("RGB"))
    height, width = img.shape[:2]
    outputs = []
    for s in scales:
        s_img = img if s == 1 else _pil_rescale(img, s)
        chw = _norm(s_img)
        pack = torch.from_numpy(np.stack([chw, np.flip(chw, -1)]).copy())
        with torch.no_grad():
            x = model.forward_cam(pack)
        outputs.append(x[0] + x[1].flip(-1))
    strided_size = (math.ceil(height / 4), math.ceil(width / 4))
    up_size = (math.ceil(height / 16) * 16, math.ceil(width / 16) * 16)
    with torch.no_grad():
        strided = torch.sum(
            torch.stack(
                [
                    F.interpolate(o[None], strided_size, mode="bilinear", align_corners=False)[0]
                    for o in outputs
                ]
            ),
            0,
        )
        highs = [
            F.interpolate(o[:, None], up_size, mode="bilinear", align_corners=False)
            for o in outputs
        ]
        high = torch.sum(torch.stack(highs, 0), 0)[:, 0, :height, :width]
        valid = torch.nonzero(torch.from_numpy(label))[:, 0]
        strided = strided[valid]
        strided /= F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5
        high = high[valid]
        high /= F.adaptive_max_pool2d(high, (1, 1)) + 1e-5
    return {"keys": valid, "cam": strided.cpu(), "high_res": high.cpu().numpy()}
