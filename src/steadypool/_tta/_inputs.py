"""Inputs of `steadypool cam`: image names, labels, images, and the model.

Everything that can be wrong with the run as a whole (no images, a model without
``forward_cam``, weights that do not fit) raises `CamInputError` before work starts;
what is wrong with one image (missing, corrupt, no label) raises for that image only.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._cam import merges_flip

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "CamInputError",
    "check_label_lengths",
    "check_unambiguous",
    "class_count",
    "find_image",
    "index_images",
    "label_for",
    "load_labels",
    "load_model",
    "read_names",
    "require_cam_extra",
]

# Names for the networks steadypool ships (`--model demo`).
BUILTIN_MODELS = {"demo": "steadypool._tta._demo_net:TinyCAMNet"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CamInputError(ValueError):
    """The run cannot start: bad arguments, model, weights, list or output directory."""


def require_cam_extra() -> None:
    """Refuse the run, naming what to install, when torch or Pillow is missing."""
    for module in ("torch", "PIL"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CamInputError(
                f"the CAM runner needs {module}, which cannot be imported ({exc}): "
                "pip install 'steadypool[cam]' (torch and Pillow)"
            ) from exc


def index_images(images: Path) -> dict[str, list[Path]]:
    """Every image in the folder by name (stem), its suffix in any case (``a.Jpg``)."""
    index: dict[str, list[Path]] = {}
    for path in sorted(images.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(path.stem, []).append(path)
    return index


def check_unambiguous(index: Mapping[str, Sequence[Path]], names: Sequence[str]) -> None:
    """Refuse names that stand for two files (``dup.jpg`` and ``dup.png``): one of them
    would never be processed, and nothing would say so."""
    ambiguous = [name for name in names if len(index.get(name, ())) > 1]
    if ambiguous:
        shown = "; ".join(
            f"{name}: {', '.join(p.name for p in index[name])}" for name in ambiguous[:5]
        )
        more = f" (and {len(ambiguous) - 5} more)" if len(ambiguous) > 5 else ""
        raise CamInputError(
            f"{len(ambiguous)} image name{'s' * (len(ambiguous) > 1)} stand for two or more "
            f"files in the images folder, so the run cannot tell which to use: {shown}{more}; "
            "move or rename the extra files"
        )


def read_names(images: Path, list_file: Path | None) -> list[str]:
    """Image names from `list_file` (bare names or psa lines), else every image in the
    directory, sorted."""
    if not images.is_dir():
        raise CamInputError(f"--images {images} is not a directory")
    if list_file is not None:
        try:
            lines = list_file.read_text().splitlines()
        except OSError as exc:
            raise CamInputError(f"cannot read the image list {list_file}: {exc}") from exc
        names = [_list_name(line) for line in lines if line.strip()]
    else:
        names = sorted(index_images(images))
    if not names:
        raise CamInputError(
            f"no images to process: {list_file or images} lists none"
            + ("" if list_file else f" (looked for {', '.join(IMAGE_SUFFIXES)})")
        )
    return list(dict.fromkeys(names))


def _list_name(line: str) -> str:
    """The image name a `--list` line stands for.

    A psa line, ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``,
    names its first file; a file name or path with an image suffix is that file without
    folder and suffix; anything else is the name as written, spaces and dots included
    (``with space``, ``two.dots.v2``).
    """
    text = line.strip()
    fields = text.split()
    if len(fields) > 1 and all(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in fields):
        text = fields[0]
    path = Path(text)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else text


def find_image(images: Path, name: str, index: Mapping[str, Sequence[Path]] | None = None) -> Path:
    """`images/name.<suffix>`, the suffix one of the usual ones in any case (from
    `index` when given, else from the folder)."""
    found = (index if index is not None else index_images(images)).get(name, ())
    if found:
        return found[0]
    raise FileNotFoundError(f"no image named {name!r} in {images} ({', '.join(IMAGE_SUFFIXES)})")


def load_labels(path: Path) -> dict[Any, Any]:
    """A pickled dict ``{name: C floats}`` as ``np.save`` writes it (psa and irn)."""
    try:
        loaded = np.load(path, allow_pickle=True)
    except Exception as exc:
        raise CamInputError(f"cannot read labels from {path}: {exc}") from exc
    labels = loaded.item() if isinstance(loaded, np.ndarray) and loaded.shape == () else loaded
    if not isinstance(labels, dict) or not labels:
        what = (
            f"a {labels.dtype} array of shape {labels.shape}"
            if isinstance(labels, np.ndarray)
            else ("an empty dict" if isinstance(labels, dict) else type(labels).__name__)
        )
        raise CamInputError(
            f"{path} holds {what}, not the {{image name: label vector}} dict psa and irn "
            "save (np.save(path, {'2007_000032': vector, ...}))"
        )
    return labels


def label_for(labels: Mapping[Any, Any], name: str, classes: int) -> np.ndarray:
    """The label vector of `name`: psa keys are names, irn keys are ints (2007000032)."""
    value = _label_value(labels, name)
    if value is None:
        raise KeyError(f"no label for {name!r} in the labels file")
    vector = np.asarray(value, dtype=np.float32).reshape(-1)
    if vector.shape != (classes,):
        raise ValueError(f"the label of {name!r} has {vector.size} values, the model {classes}")
    return vector


def _label_value(labels: Mapping[Any, Any], name: str) -> Any:
    value = labels.get(name)
    if value is None and name.replace("_", "").isdigit():
        value = labels.get(int(name.replace("_", "")))
    return value


def load_model(spec: str, weights: Path | None, model_args: Mapping[str, Any] | None = None) -> Any:
    """Build the model from ``MODULE:ATTR`` (a class or factory) called with
    `model_args` as keywords, and load `weights`."""
    import torch

    spec_given = spec
    spec = BUILTIN_MODELS.get(spec, spec)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CamInputError(
            f"--model must be MODULE:ATTR or one of {sorted(BUILTIN_MODELS)}, got {spec_given!r}"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # ImportError, AttributeError, and whatever the module raises
        raise CamInputError(f"cannot load the model {spec!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(factory):
        raise CamInputError(
            f"--model {spec!r} names a {type(factory).__name__}, not a class or factory "
            "that builds the network"
        )
    try:
        model = factory(**dict(model_args or {}))
    except Exception as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in (model_args or {}).items())
        raise CamInputError(
            f"building the model {spec}({given}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if merges_flip(model) and not callable(model):
        raise CamInputError(
            f"the model from {spec!r} ({type(model).__name__}) has no forward_cam(x) method "
            "and cannot be called; it must map (N, 3, h, w) to non-negative CAMs "
            "(N, C, h', w') with forward_cam, or, like irn's CAM, take [img, flip(img)] "
            "in forward and return the merged CAM (C, h', w')"
        )
    if weights is not None:
        try:
            state = _state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            model.load_state_dict(state)
        except Exception as exc:
            raise CamInputError(
                f"the weights {weights} do not fit the model {spec!r}: {exc}"
            ) from exc
    # Not `return model.eval()`: psa's Net overrides train() and returns None from it.
    model.eval()
    return model


def _state_dict(checkpoint: Any) -> Any:
    """The state dict in a checkpoint as people save them: the dict itself, or under
    "state_dict" or "model" (with an epoch, an optimizer...), with DataParallel's
    "module." prefixes removed."""
    import torch

    state = checkpoint
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    return state


# Probe sizes for `class_count`: the smallest input the network accepts is found by
# trying these in turn (a deep network with many poolings rejects 32 x 32).
PROBE_SIZES = (32, 64, 128, 256, 512)


def class_count(model: Any) -> int:
    """How many classes the model's CAMs have, from one forward pass on the CPU of the
    pair [img, flip(img)], as the run will call it; the output's shape is checked."""
    import torch

    failure: Exception | None = None
    for size in PROBE_SIZES:
        pair = torch.zeros(2, 3, size, size)
        try:
            with torch.no_grad():
                probe = model(pair) if merges_flip(model) else model.forward_cam(pair)
        except Exception as exc:  # too small for the network, or a bug in it
            failure = exc
            continue
        return _classes_of(model, probe)
    assert failure is not None
    call = "forward([img, flip(img)])" if merges_flip(model) else "forward_cam(x)"
    raise CamInputError(
        f"{type(model).__name__}.{call} fails on zero images of "
        f"{', '.join(f'{s}x{s}' for s in PROBE_SIZES)}: {type(failure).__name__}: {failure}"
    ) from failure


def _classes_of(model: Any, probe: Any) -> int:
    shape = tuple(getattr(probe, "shape", ()))
    name = type(model).__name__
    if merges_flip(model):
        if len(shape) != 3:
            raise CamInputError(
                f"{name} has no forward_cam, so its forward must take the pair "
                "[img, flip(img)] and return one merged CAM (C, h, w), as irn's CAM does; "
                f"it returned shape {shape}"
            )
        return int(shape[0])
    if len(shape) != 4 or shape[0] != 2:
        raise CamInputError(
            f"{name}.forward_cam must map images (N, 3, h, w) to CAMs (N, C, h', w'); "
            f"for N = 2 it returned shape {shape}"
        )
    return int(shape[1])


def check_label_lengths(labels: Mapping[Any, Any], names: Sequence[str], classes: int) -> None:
    """Refuse the run when the labels of the listed images do not have one value per
    class of the model (every image would fail the same way)."""
    wrong = []
    for name in names:
        try:
            label_for(labels, name, classes)
        except KeyError:
            continue  # that image alone fails; the run goes on
        except ValueError:
            wrong.append(name)
    if wrong:
        found = np.asarray(_label_value(labels, wrong[0])).size
        raise CamInputError(
            f"the labels of {len(wrong)} of {len(names)} images (first: {wrong[0]!r}, "
            f"{found} values) do not have one value per class of the model ({classes}); "
            "is it the labels file for this model (psa and irn: 20 VOC classes, no "
            "background)?"
        )
