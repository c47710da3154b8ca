"""Overlay pictures: the photo, then one panel per present class with its CAM as a heat map."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["heat", "save_overlay"]


def heat(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] to RGB uint8 with a blue-cyan-yellow-red ramp (jet-like, no matplotlib)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array(
        [[0, 0, 128], [0, 128, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float32
    )
    position = v[..., 0] * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    rgb: np.ndarray = (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)
    return rgb


def save_overlay(path: Path, image: Any, keys: np.ndarray, maps: np.ndarray) -> None:
    """Write [photo | photo blended with each class's map] as one PNG, labelled."""
    from PIL import Image, ImageDraw

    from ._demo_net import VOC_CLASSES

    photo = np.asarray(image, dtype=np.float32)
    panels = [photo.astype(np.uint8)]
    titles = ["photo"]
    for key, cam in zip(keys, maps, strict=True):
        panels.append((0.5 * photo + 0.5 * heat(cam)).astype(np.uint8))
        titles.append(VOC_CLASSES[key] if len(maps) and 0 <= key < 20 else f"class {key}")
    strip = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(strip)
    width = photo.shape[1]
    for i, title in enumerate(titles):
        draw.rectangle([i * width, 0, i * width + 8 * len(title) + 8, 14], fill=(0, 0, 0))
        draw.text((i * width + 4, 1), title, fill=(255, 255, 255))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    strip.save(tmp, format="PNG")
    os.replace(tmp, path)
