"""CAM files: the dict each layout saves, and reading any of them back.

Writing (`content`) builds exactly what each code base hands to ``np.save``, types
included, so its next steps read our files.  Reading (`read_cams`) accepts the files
those code bases write themselves too (psa, irn, SEAM, PuzzleCAM, ToCo), and gives
the same thing for all: the kept classes (0-based) and their full-size maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._recipes import Layout

if TYPE_CHECKING:
    from pathlib import Path

    from ._cam import CamMaps

__all__ = ["CamFile", "CamFileError", "content", "layout_of", "read_cams"]


class CamFileError(ValueError):
    """A file is not a CAM file of a known layout, or not of the one asked for."""


def content(layout: Layout, maps: CamMaps) -> Any:
    """The object `np.save` writes for one image in `layout`."""
    import torch

    if layout is Layout.PSA:
        return {int(k): m for k, m in zip(maps.keys, maps.high_res, strict=True)}
    if layout is Layout.IRN:
        # a copy: maps that came back through Ray's object store are read-only
        keys = torch.tensor(maps.keys, dtype=torch.int64)
        return {"keys": keys, "cam": maps.strided, "high_res": maps.high_res}
    if layout is Layout.PUZZLECAM:
        return {
            "keys": np.pad(maps.keys + 1, (1, 0), mode="constant"),
            "cam": maps.strided,
            "hr_cam": maps.high_res,
        }
    return {"keys": maps.keys, "high_res": maps.high_res}


def layout_of(loaded: Any) -> Layout | None:
    """The layout of a loaded file's object, by its keys (None: none we know).

    psa and SEAM files share a layout (``{class: map}``); so do a ToCo file and an irn
    file without its ``cam`` (``{"keys", "high_res"}``).
    """
    if not isinstance(loaded, dict):
        return None
    if not loaded:
        return Layout.PSA  # psa and SEAM save {} for an image without classes
    keys = set(loaded)
    if keys == {"keys", "cam", "high_res"}:
        return Layout.IRN
    if keys == {"keys", "cam", "hr_cam"}:
        return Layout.PUZZLECAM
    if keys == {"keys", "high_res"}:
        return Layout.TOCO
    if all(isinstance(k, int | np.integer) and not isinstance(k, bool) for k in keys):
        return Layout.PSA
    return None


@dataclass(frozen=True)
class CamFile:
    """One image's maps as evaluation needs them.

    Attributes:
        layout: The file's layout.
        keys: The classes with a map, 0-based, ascending, int64.
        maps: Their maps, one (H, W) array per key, in the file's dtype (float32 for
            all five); a list, so a psa file's maps are not copied into one array.
        shape: (H, W), or None for a psa file with no class at all (``{}``).
    """

    layout: Layout
    keys: np.ndarray
    maps: list[np.ndarray]
    shape: tuple[int, int] | None


def read_cams(path: Path, expected: Layout | None = None) -> CamFile:
    """Load one CAM file (any known layout; `expected`: that one only).

    Raises:
        CamFileError: The file cannot be read, is no CAM file, or has another layout
            than `expected`.
    """
    try:
        loaded = np.load(path, allow_pickle=True)
        obj = loaded.item() if isinstance(loaded, np.ndarray) and loaded.shape == () else loaded
    except Exception as exc:
        raise CamFileError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    layout = layout_of(obj)
    if layout is None:
        raise CamFileError(
            f"{path} is not a CAM file of psa, irn, SEAM, PuzzleCAM or ToCo "
            f"(it holds {_describe(obj)})"
        )
    if expected is not None and layout is not expected:
        raise CamFileError(
            f"{path} is a {_NAMES[layout]} file ({_describe(obj)}), not a "
            f"{_NAMES[expected]} file as --format says"
        )
    if layout is Layout.PSA:
        keys = np.array(sorted(int(k) for k in obj), dtype=np.int64)
        planes = [np.asarray(obj[int(k)]) for k in keys]
        shapes = {p.shape for p in planes}
        if len(shapes) > 1 or any(len(shape) != 2 for shape in shapes):
            raise CamFileError(f"{path}: class maps of shapes {sorted(shapes)} (want one H x W)")
        shape = planes[0].shape if planes else None
    else:
        if layout is Layout.PUZZLECAM:
            keys = _array(obj["keys"]).astype(np.int64)[1:] - 1
            maps = _array(obj["hr_cam"])
        else:
            keys = _array(obj["keys"]).astype(np.int64)
            maps = _array(obj["high_res"])
        if maps.ndim != 3 or maps.shape[0] != len(keys):
            raise CamFileError(
                f"{path}: {len(keys)} classes but maps of shape {maps.shape} (want (k, H, W))"
            )
        planes, shape = list(maps), maps.shape[1:]
    if len(keys) > 1 and np.any(np.diff(keys) <= 0):
        order = np.argsort(keys, kind="stable")
        keys, planes = keys[order], [planes[i] for i in order]
    return CamFile(layout=layout, keys=keys, maps=planes, shape=shape)


_NAMES = {
    Layout.PSA: "psa/SEAM",
    Layout.IRN: "irn",
    Layout.PUZZLECAM: "PuzzleCAM",
    Layout.TOCO: "ToCo",
}


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (irn's keys and cam)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        shown = ", ".join(repr(k) for k in list(obj)[:4])
        return f"a dict with keys {shown}{', ...' if len(obj) > 4 else ''}"
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} array of shape {obj.shape}"
    return type(obj).__name__
