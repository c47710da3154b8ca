"""The CAM computation of psa and irn, split into a CPU part and a device part.

CPU part (`prepare_psa`, `prepare_irn`): resize and normalise one image per scale.
Device part (`infer_psa`, `infer_irn`): run the network on each scale and its flip as
one batch of 2, and do the tensor math on the device (upsampling, label weighting,
summing, normalising), so only the final maps leave the device.  The semantics follow
psa's ``infer_cls.py`` and irn's ``make_cam.py`` exactly (see the README).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "AMP_DTYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "infer_irn",
    "infer_psa",
    "merges_flip",
    "normalize",
    "predict",
    "prepare_irn",
    "prepare_psa",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPS = 1e-5


def normalize(model: Any, image: np.ndarray) -> np.ndarray:
    """HWC image -> float32 HWC: `model.normalize` if it has one, else ImageNet mean/std
    on RGB/255 (computed in float64, stored as float32, as psa and irn do)."""
    custom = getattr(model, "normalize", None)
    if custom is not None:
        return np.asarray(custom(image), dtype=np.float32)
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(3):
        out[..., c] = (image[..., c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    return out


def prepare_psa(model: Any, image: Any, scales: Sequence[float]) -> list[np.ndarray]:
    """psa: per scale, PIL bicubic resize to (round(W*s), round(H*s)), normalise, CHW."""
    from PIL import Image

    width, height = image.size
    out = []
    for s in scales:
        resized = image.resize((round(width * s), round(height * s)), Image.Resampling.BICUBIC)
        out.append(np.ascontiguousarray(normalize(model, np.asarray(resized)).transpose(2, 0, 1)))
    return out


def prepare_irn(model: Any, image: Any, scales: Sequence[float]) -> list[np.ndarray]:
    """irn (HEAD a2ece00, ``misc/imutils.pil_rescale``): per scale other than 1, PIL
    bicubic on the uint8 image to ``(int(np.round(H*s)), int(np.round(W*s)))`` (an equal
    size is left untouched); then normalise, CHW."""
    from PIL import Image

    array = np.asarray(image)
    height, width = array.shape[:2]
    out = []
    for s in scales:
        size = (int(np.round(height * s)), int(np.round(width * s)))
        scaled = array
        if s != 1 and size != (height, width):
            scaled = np.asarray(Image.fromarray(array).resize(size[::-1], Image.Resampling.BICUBIC))
        out.append(np.ascontiguousarray(normalize(model, scaled).transpose(2, 0, 1)))
    return out


def _batch(chw: np.ndarray, device: Any, flip: bool) -> Any:
    import torch

    x = torch.from_numpy(chw).to(device, non_blocking=True)[None]
    return torch.cat([x, x.flip(-1)]) if flip else x


def merges_flip(model: Any) -> bool:
    """Whether the model is of irn's kind: no ``forward_cam``; its ``forward`` takes the
    pair ``[img, flip(img)]`` and returns the merged ``cam[0] + cam[1].flip(-1)``."""
    return not callable(getattr(model, "forward_cam", None))


AMP_DTYPES = ("bf16", "fp16")


def _network(model: Any, batch: Any, *, merged: bool, amp: str | None) -> Any:
    """The network on `batch`: ``forward_cam``, or the forward of a model that merges
    the flip pair itself; under autocast to bf16/fp16 with `amp` (the maps come back as
    float32, and all the math after the network stays in float32)."""
    import torch

    call = model if merged else model.forward_cam
    if amp is None:
        return call(batch)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with torch.autocast(batch.device.type, dtype=dtype):
        out = call(batch)
    return out.float()


def _merged(model: Any, chw: np.ndarray, device: Any, flip: bool, amp: str | None) -> Any:
    """One scale's CAM with its flip merged in, ``cam[0] + cam[1].flip(-1)`` (C, h, w):
    from ``forward_cam``, or from the forward of a model that merges the pair itself
    (irn's CAM; `_inputs.merges_flip`)."""
    batch = _batch(chw, device, flip)
    if merges_flip(model):
        return _network(model, batch, merged=True, amp=amp)
    cams = _network(model, batch, merged=False, amp=amp)
    return cams[0] + cams[1].flip(-1) if flip else cams[0]


def infer_psa(
    model: Any,
    scaled: Sequence[np.ndarray],
    size: tuple[int, int],
    label: np.ndarray,
    *,
    flip: bool,
    device: Any,
    amp: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """psa: (keys, maps).  Variants [s1, flip(s1), s2, ...]: forward_cam, bilinear
    upsample to (H, W), times the label vector, odd variants flipped back; summed in
    that order (float32); each class map divided by its max + 1e-5; classes with
    label > 1e-5 kept."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        weights = torch.from_numpy(np.asarray(label, dtype=np.float32)).to(device).view(-1, 1, 1)
        total = None
        for chw in scaled:
            if merges_flip(model):
                o = _merged(model, chw, device, flip, amp)[None]
                variant = F.interpolate(o, size, mode="bilinear", align_corners=False)[0] * weights
                total = variant if total is None else total + variant
                continue
            cams = _network(model, _batch(chw, device, flip), merged=False, amp=amp)
            cams = F.interpolate(cams, size, mode="bilinear", align_corners=False) * weights
            variants = [cams[0], cams[1].flip(-1)] if flip else [cams[0]]
            for variant in variants:
                total = variant if total is None else total + variant
        assert total is not None, "no scales"
        keys = np.flatnonzero(np.asarray(label) > EPS)
        kept = total[torch.from_numpy(keys).to(device)]
        _check_cams(kept)
        peak = kept.flatten(1).max(1).values.view(-1, 1, 1) if len(keys) else kept
        maps = (kept / (peak + EPS)).cpu().numpy()
    return keys.astype(np.int64), maps


def infer_irn(
    model: Any,
    scaled: Sequence[np.ndarray],
    size: tuple[int, int],
    label: np.ndarray,
    *,
    flip: bool,
    device: Any,
    amp: str | None = None,
) -> dict[str, Any]:
    """irn: {"keys", "cam", "high_res"}.  Per scale, [img, flip(img)] as one batch,
    o = cam[0] + cam[1].flip(-1); strided = sum of bilinear(o, ceil(H/4) x ceil(W/4));
    high_res = sum of bilinear(o, ceil(H/16)*16 x ceil(W/16)*16) cropped to H x W;
    rows with label != 0 kept, each divided by its max + 1e-5.  Saved with irn's types,
    so irn's next steps read them: keys a torch int64 tensor, cam a float32 CPU
    tensor, high_res a float32 numpy array."""
    import torch
    import torch.nn.functional as F

    height, width = size
    strided_size = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
    up_size = (math.ceil(height / 16) * 16, math.ceil(width / 16) * 16)
    with torch.no_grad():
        strided = high = None
        for chw in scaled:
            o = _merged(model, chw, device, flip, amp)
            s = F.interpolate(o[None], strided_size, mode="bilinear", align_corners=False)[0]
            h = F.interpolate(o[:, None], up_size, mode="bilinear", align_corners=False)[:, 0]
            strided = s if strided is None else strided + s
            high = h if high is None else high + h
        assert strided is not None, "no scales"
        assert high is not None, "no scales"
        keys = np.flatnonzero(np.asarray(label) != 0)
        index = torch.from_numpy(keys).to(device)
        strided = strided[index]
        high = high[index][:, :height, :width]
        _check_cams(strided, high)
        if len(keys):
            strided = strided / (F.adaptive_max_pool2d(strided, (1, 1)) + EPS)
            high = high / (F.adaptive_max_pool2d(high, (1, 1)) + EPS)
        return {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "cam": strided.cpu(),
            "high_res": high.cpu().numpy(),
        }


def _check_cams(*cams: Any) -> None:
    """Refuse CAMs that are not finite and non-negative (psa's and irn's networks end in
    a ReLU): divided by their maximum they would look like valid maps (a negative map
    becomes values above 1), so they fail the image with the reason instead."""
    import torch

    flags = torch.stack(
        [f for c in cams for f in (~torch.isfinite(c).all(), (c < 0).any())]
    ).tolist()
    if any(flags[0::2]):
        raise ValueError("the network's CAM has NaN or infinite values for this image")
    if any(flags[1::2]):
        low = min(float(c.min()) for c in cams)
        raise ValueError(
            f"the network's CAM has negative values for this image (down to {low:.3g}); "
            "CAMs must be non-negative, as after the ReLU of psa's and irn's networks"
        )


def predict(keys: Any, maps: np.ndarray, size: tuple[int, int], bg: float) -> np.ndarray:
    """psa's prediction: argmax over [a bg plane, the maps]; 0 = background, k+1 = class k.
    `keys` may be a numpy array or (irn) a torch tensor."""
    keys = np.asarray(keys)
    planes = np.concatenate([np.full((1, *size), bg, dtype=np.float32), maps.reshape(-1, *size)])
    winner = np.argmax(planes, axis=0)
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    pred: np.ndarray = lookup[winner].astype(np.uint8)
    return pred
