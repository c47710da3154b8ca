"""The CAM computation of every format, one code path driven by a `Recipe`.

CPU part (`prepare`): resize and normalise one image per scale (or, for a recipe that
resizes the normalised tensor, normalise it once).  Device part (`infer`): run the
network on each scale and its flip as one batch of 2, and do the tensor math on the
device (upsampling, flip merge, label weighting, summing, normalising), so only the
final maps leave the device.  What each step does comes from the recipe
(`_recipes.py`); the semantics follow each code base's published code (README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._recipes import IRN, PSA, FlipMerge, Normalisation, Recipe, Resize, Targets

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "AMP_DTYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CamMaps",
    "infer",
    "infer_irn",
    "infer_psa",
    "merges_flip",
    "normalize",
    "predict",
    "prepare",
    "prepare_irn",
    "prepare_psa",
    "scale_order",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ToCo's datasets/transforms.normalize_img: the same constants times 255
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
EPS = 1e-5


def normalize(model: Any, image: np.ndarray, input_scale: int = 1) -> np.ndarray:
    """HWC image -> float32 HWC: `model.normalize` if it has one, else ImageNet mean/std
    on RGB/255 (`input_scale` 1) or on RGB with the constants times 255 (255, ToCo),
    computed in float64 and stored as float32, as the code bases do."""
    custom = getattr(model, "normalize", None)
    if custom is not None:
        return np.asarray(custom(image), dtype=np.float32)
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(3):
        if input_scale == 255:
            out[..., c] = (image[..., c] - IMAGENET_MEAN_255[c]) / IMAGENET_STD_255[c]
        else:
            out[..., c] = (image[..., c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    return out


def _check_size(scale: float, width: int, height: int, new: tuple[int, int]) -> None:
    """Refuse a scale that makes the image empty, naming the scale and the size."""
    if new[0] < 1 or new[1] < 1:
        raise ValueError(
            f"scale {scale} makes the {width}x{height} image {new[0]}x{new[1]} pixels; "
            "the image is too small for this scale (leave the scale out or skip the image)"
        )


def prepare(recipe: Recipe, model: Any, image: Any, scales: Sequence[float]) -> list[np.ndarray]:
    """One CHW float32 array per scale (Pillow recipes), or the normalised full-size
    photo alone (a recipe that resizes the tensor on the device).

    Raises:
        ValueError: A scale makes the image zero pixels wide or high.
    """
    from PIL import Image

    width, height = image.size
    if recipe.resize is Resize.TENSOR_BILINEAR:
        for s in scale_order(recipe, scales):
            _check_size(s, width, height, (int(s * width), int(s * height)))
        array = normalize(model, np.asarray(image), recipe.input_scale)
        return [np.ascontiguousarray(array.transpose(2, 0, 1))]
    chw = []
    array = np.asarray(image)
    for s in scales:
        if recipe.resize is Resize.PIL_ROUND:
            size = (round(width * s), round(height * s))
            _check_size(s, width, height, size)
            scaled = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
        else:  # irn's pil_rescale: an equal size, and scale 1, leave the photo as it is
            hw = (int(np.round(height * s)), int(np.round(width * s)))
            _check_size(s, width, height, hw[::-1])
            scaled = array
            if s != 1 and hw != (height, width):
                scaled = np.asarray(
                    Image.fromarray(array).resize(hw[::-1], Image.Resampling.BICUBIC)
                )
        normed = normalize(model, scaled, recipe.input_scale)
        chw.append(np.ascontiguousarray(normed.transpose(2, 0, 1)))
    return chw


def scale_order(recipe: Recipe, scales: Sequence[float]) -> list[float]:
    """The scales in the order the recipe runs them: ToCo runs 1.0 first and once,
    whatever the list says; the others run the list as given."""
    if recipe.resize is Resize.TENSOR_BILINEAR:
        return [1.0, *(s for s in scales if s != 1.0)]
    return list(scales)


def prepare_psa(model: Any, image: Any, scales: Sequence[float]) -> list[np.ndarray]:
    """psa's inputs (`prepare` with the psa recipe)."""
    return prepare(PSA, model, image, scales)


def prepare_irn(model: Any, image: Any, scales: Sequence[float]) -> list[np.ndarray]:
    """irn's inputs (`prepare` with the irn recipe)."""
    return prepare(IRN, model, image, scales)


def _batch(x: Any, flip: bool) -> Any:
    import torch

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


@dataclass(frozen=True)
class CamMaps:
    """One image's final maps, before they are laid out in a file.

    Attributes:
        keys: The kept classes, 0-based, int64.
        high_res: Their maps at the image's size, float32 (k, H, W).
        strided: Their maps at stride 4 as a float32 CPU tensor (irn's targets), else None.
    """

    keys: np.ndarray
    high_res: np.ndarray
    strided: Any = None


def _inputs(
    recipe: Recipe, scaled: Sequence[np.ndarray], scales: Sequence[float], device: Any
) -> Iterator[Any]:
    """Each scale's input, (1, 3, h, w) on the device, in the recipe's order."""
    import torch
    import torch.nn.functional as F

    if recipe.resize is not Resize.TENSOR_BILINEAR:
        for chw in scaled:
            yield torch.from_numpy(chw).to(device, non_blocking=True)[None]
        return
    full = torch.from_numpy(scaled[0]).to(device, non_blocking=True)[None]
    height, width = full.shape[-2:]
    for s in scale_order(recipe, scales):
        if s == 1.0:
            yield full
        else:
            size = (int(s * height), int(s * width))
            yield F.interpolate(full, size=size, mode="bilinear", align_corners=False)


def infer(
    recipe: Recipe,
    model: Any,
    scaled: Sequence[np.ndarray],
    size: tuple[int, int],
    label: np.ndarray,
    *,
    scales: Sequence[float],
    flip: bool,
    device: Any,
    amp: str | None = None,
) -> CamMaps:
    """One image's CAMs as `recipe` computes them, from `prepare`'s inputs.

    Raises:
        ValueError: The network's CAMs are NaN/infinite, or negative where the recipe
            needs them non-negative (nothing in it clamps them).
    """
    import torch
    import torch.nn.functional as F

    height, width = size
    merged_model = merges_flip(model)
    if recipe.targets is Targets.FULL:
        targets = [(height, width)]
    else:
        targets = [
            ((height - 1) // 4 + 1, (width - 1) // 4 + 1),
            (math.ceil(height / 16) * 16, math.ceil(width / 16) * 16),
        ]
    if recipe.keep_threshold is not None:
        keys = np.flatnonzero(np.asarray(label) > recipe.keep_threshold)
    else:
        keys = np.flatnonzero(np.asarray(label) != 0)
    if not len(keys):  # nothing kept: no map to compute (every step below is per class)
        return CamMaps(
            keys=keys.astype(np.int64),
            high_res=np.zeros((0, height, width), dtype=np.float32),
            strided=torch.zeros((0, *targets[0])) if recipe.targets is Targets.IRN else None,
        )
    with torch.no_grad():
        # Every step after the network is per class map, so only the kept classes are
        # upsampled and summed: the same values as computing all and keeping some, at a
        # fraction of the work (an image has 1-3 of VOC's 20 classes).
        index = torch.from_numpy(keys).to(device)
        # a copy: an argument that came through Ray's object store is read-only
        weights = torch.tensor(np.asarray(label, dtype=np.float32), device=device)
        weights = weights[index].view(-1, 1, 1)
        totals: list[Any] = [None] * len(targets)

        def add(i: int, part: Any) -> None:
            totals[i] = part if totals[i] is None else totals[i] + part

        for x in _inputs(recipe, scaled, scales, device):
            batch = _batch(x, flip)
            if merged_model or recipe.flip_merge is FlipMerge.SUM_BEFORE_UPSAMPLE:
                if merged_model:
                    o = _network(model, batch, merged=True, amp=amp)[index]
                else:
                    cams = _network(model, batch, merged=False, amp=amp)[:, index]
                    if recipe.relu_variants:
                        cams = F.relu(cams)
                    o = cams[0] + cams[1].flip(-1) if flip else cams[0]
                if recipe.targets is Targets.FULL:
                    up = F.interpolate(o[None], targets[0], mode="bilinear", align_corners=False)[0]
                    add(0, up * weights if recipe.weight_by_label else up)
                else:
                    add(
                        0,
                        F.interpolate(o[None], targets[0], mode="bilinear", align_corners=False)[0],
                    )
                    high = F.interpolate(
                        o[:, None], targets[1], mode="bilinear", align_corners=False
                    )
                    add(1, high[:, 0])
                continue
            cams = _network(model, batch, merged=False, amp=amp)[:, index]
            if recipe.relu_variants:
                cams = F.relu(cams)
            up = F.interpolate(cams, targets[0], mode="bilinear", align_corners=False)
            if recipe.flip_merge is FlipMerge.MAX_AFTER_UPSAMPLE:
                merged = torch.max(up[0], up[1].flip(-1)) if flip else up[0]
                add(0, F.relu(merged) if recipe.relu_merged else merged)
            else:  # psa: each variant weighted, flipped back and added in turn
                if recipe.weight_by_label:
                    up = up * weights
                add(0, up[0])
                if flip:
                    add(0, up[1].flip(-1))
        assert all(t is not None for t in totals), "no scales"
        kept = list(totals)
        if recipe.targets is Targets.IRN:
            kept[1] = kept[1][:, :height, :width]
        _check_cams(kept, nonnegative=recipe.needs_nonnegative)
        kept = [_normalise(recipe.normalisation, k) for k in kept]
        high = kept[-1].cpu().numpy()
        strided = kept[0].cpu() if recipe.targets is Targets.IRN else None
    return CamMaps(keys=keys.astype(np.int64), high_res=high, strided=strided)


def _normalise(how: Normalisation, cams: Any) -> Any:
    """Scale each class map (k, h, w) as the recipe says (see `Normalisation`)."""
    import torch
    import torch.nn.functional as F

    if how is Normalisation.MAX:
        return cams / (F.adaptive_max_pool2d(cams, (1, 1)) + EPS)
    if how is Normalisation.MIN_MAX:
        cams = cams + F.adaptive_max_pool2d(-cams, (1, 1))
        return cams / (F.adaptive_max_pool2d(cams, (1, 1)) + EPS)
    # SEAM: clamp, zero what is under min + 1e-5, then (x - min - 1e-5) / (max - min + 1e-5)
    cams = cams.clamp(min=0)
    top = cams.amax(dim=(1, 2), keepdim=True)
    low = cams.amin(dim=(1, 2), keepdim=True)
    cams = torch.where(cams < low + EPS, torch.zeros_like(cams), cams)
    return (cams - low - EPS) / (top - low + EPS)


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
    """psa: (keys, maps) (`infer` with the psa recipe)."""
    maps = infer(PSA, model, scaled, size, label, scales=(), flip=flip, device=device, amp=amp)
    return maps.keys, maps.high_res


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
    """irn: {"keys", "cam", "high_res"} with irn's types (`infer` with the irn recipe)."""
    import torch

    maps = infer(IRN, model, scaled, size, label, scales=(), flip=flip, device=device, amp=amp)
    return {"keys": torch.from_numpy(maps.keys), "cam": maps.strided, "high_res": maps.high_res}


def _check_cams(cams: Sequence[Any], *, nonnegative: bool) -> None:
    """Refuse CAMs that are not finite, or (`nonnegative`) negative: divided by their
    maximum, negative maps would look like valid maps (values above 1), so they fail
    the image with the reason instead."""
    import torch

    flags = torch.stack(
        [f for c in cams for f in (~torch.isfinite(c).all(), (c < 0).any())]
    ).tolist()
    if any(flags[0::2]):
        raise ValueError("the network's CAM has NaN or infinite values for this image")
    if nonnegative and any(flags[1::2]):
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
