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


def seam(
    net: Any, path: str, label: np.ndarray, scales: list[float], flip: bool
) -> dict[int, np.ndarray]:
    """SEAM HEAD (3212261) infer_SEAM.py with VOC12ClsDatasetMSF, one image: psa's
    variants, ``_, cam = net(img)``, background channel dropped, SEAM's min-max."""
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
            _, cam = net(torch.from_numpy(np.ascontiguousarray(v))[None])
            cam = F.interpolate(cam[:, 1:], (height, width), mode="bilinear", align_corners=False)[
                0
            ]
        cam = cam.numpy() * label.reshape(20, 1, 1)
        if flip and i % 2 == 1:
            cam = np.flip(cam, axis=-1)
        cam_list.append(cam)
    sum_cam = np.sum(cam_list, axis=0)
    sum_cam[sum_cam < 0] = 0
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    norm_cam = (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)
    return {i: norm_cam[i] for i in range(20) if label[i] > 1e-5}


def puzzlecam(net: Any, path: str, label: np.ndarray, scales: list[float]) -> dict[str, Any]:
    """PuzzleCAM HEAD (659b4c1) inference_classification.py, one image."""
    ori_image = Image.open(path).convert("RGB")
    ori_w, ori_h = ori_image.size

    def get_cam(scale: float) -> torch.Tensor:
        image = ori_image.resize(
            (round(ori_w * scale), round(ori_h * scale)), Image.Resampling.BICUBIC
        )
        chw = torch.from_numpy(np.ascontiguousarray(_norm(np.asarray(image))))
        _, features = net(torch.stack([chw, chw.flip(-1)]), with_cam=True)
        cams = F.relu(features)
        return cams[0] + cams[1].flip(-1)

    with torch.no_grad():
        strided_size = ((ori_h - 1) // 4 + 1, (ori_w - 1) // 4 + 1)
        up_size = (((ori_h - 1) // 16 + 1) * 16, ((ori_w - 1) // 16 + 1) * 16)
        cams_list = [get_cam(scale) for scale in scales]
        strided = torch.sum(
            torch.stack(
                [
                    F.interpolate(c[None], strided_size, mode="bilinear", align_corners=False)[0]
                    for c in cams_list
                ]
            ),
            dim=0,
        )
        hr = torch.sum(
            torch.stack(
                [
                    F.interpolate(c[None], up_size, mode="bilinear", align_corners=False)[0]
                    for c in cams_list
                ]
            ),
            dim=0,
        )[:, :ori_h, :ori_w]
        keys = torch.nonzero(torch.from_numpy(label))[:, 0]
        strided = strided[keys]
        strided /= F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5
        hr = hr[keys]
        hr /= F.adaptive_max_pool2d(hr, (1, 1)) + 1e-5
        padded = np.pad(keys + 1, (1, 0), mode="constant")
    return {"keys": padded, "cam": strided.cpu(), "hr_cam": hr.cpu().numpy()}


def _toco_normalize(img: np.ndarray) -> np.ndarray:
    """ToCo's datasets/transforms.normalize_img, written out again."""
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    out = np.empty(img.shape, np.float32)
    for c in range(3):
        out[..., c] = (img[..., c] - mean[c]) / std[c]
    return out


def toco(net: Any, path: str, label: np.ndarray, scales: list[float]) -> dict[str, Any]:
    """ToCo HEAD (e13514d): utils/camutils.multi_scale_cam2 on the normalised photo,
    then the file of tools/infer_seg_as_cam.py (label-weighted maps, valid rows)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    inputs = torch.from_numpy(np.transpose(_toco_normalize(image), (2, 0, 1)).copy())[None]
    b, _, h, w = inputs.shape

    def one_scale(x: torch.Tensor) -> torch.Tensor:
        _cam_aux, _cam = net(torch.cat([x, x.flip(-1)], dim=0), cam_only=True)
        _cam = F.interpolate(_cam, size=(h, w), mode="bilinear", align_corners=False)
        return F.relu(torch.max(_cam[:b, ...], _cam[b:, ...].flip(-1)))

    with torch.no_grad():
        cam_list = [one_scale(inputs)]
        for s in scales:
            if s != 1.0:
                size = (int(s * h), int(s * w))
                cam_list.append(
                    one_scale(
                        F.interpolate(inputs, size=size, mode="bilinear", align_corners=False)
                    )
                )
        cam = torch.sum(torch.stack(cam_list, dim=0), dim=0)
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        cam /= F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5
        cls_label = torch.from_numpy(label)[None]
        valid = cls_label[..., None, None] * cam
        resized = F.interpolate(valid, size=(h, w), mode="bilinear", align_corners=False)
        resized = cls_label[..., None, None] * resized
        valid_label = torch.nonzero(cls_label[0])[:, 0]
        high_res = resized[0, valid_label]
    return {"keys": valid_label.cpu().numpy(), "high_res": high_res.cpu().numpy()}
