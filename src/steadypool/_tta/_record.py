"""The run record: what made the maps in an output folder, so a rerun with other
parameters is refused instead of "resuming" into a folder of mixed maps.

The record is ``OUT/.steadypool-cam.json``: the format, scales, flip, model and its
arguments, a SHA-256 of the weights and of the labels file, and amp.  A resumed run
compares its own with the one on disk and refuses, naming each difference, unless
``--no-resume`` is given (then the new record replaces the old one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from ._inputs import CamInputError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

__all__ = ["RECORD_NAME", "check_record", "record_of", "write_record"]

RECORD_NAME = ".steadypool-cam.json"

# field -> the option a user changes to change it
_OPTIONS = {
    "format": "--format",
    "scales": "--scales",
    "flip": "--no-flip",
    "model": "--model",
    "model_args": "--model-arg",
    "weights_sha256": "--weights",
    "labels_sha256": "--labels",
    "amp": "--amp",
}


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_of(
    *,
    format: str,
    scales: Sequence[float],
    flip: bool,
    model: str,
    model_args: Mapping[str, Any],
    weights: Path | None,
    labels: Path,
    amp: str | None,
) -> dict[str, Any]:
    """What makes the maps of a run (JSON-ready): the run's options, the weights and
    labels files by their SHA-256."""
    try:
        weights_sha = _sha256(weights)
        labels_sha = _sha256(labels)
    except OSError as exc:
        raise CamInputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return {
        "format": format,
        "scales": [float(s) for s in scales],
        "flip": flip,
        "model": model,
        "model_args": {k: repr(v) for k, v in sorted(model_args.items())},
        "weights_sha256": weights_sha,
        "labels_sha256": labels_sha,
        "amp": amp,
    }


def check_record(out: Path, record: dict[str, Any]) -> None:
    """Refuse to resume into `out` when its record says its maps were made otherwise.

    Raises:
        CamInputError: The record differs, naming what changed and the way out.
    """
    path = out / RECORD_NAME
    try:
        old = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise CamInputError(
            f"cannot read the run record {path} ({exc}); remove it, or rerun with --no-resume"
        ) from exc
    changed = [
        f"{_OPTIONS[key]} ({_show(old.get(key))} -> {_show(value)})"
        for key, value in record.items()
        if old.get(key) != value
    ]
    if changed:
        raise CamInputError(
            f"{out} holds maps made with other parameters: {'; '.join(changed)}; resuming "
            "would mix them. Use another --out, or --no-resume to redo every image"
        )


def write_record(out: Path, record: dict[str, Any]) -> None:
    """Write the record atomically (temporary name, then rename)."""
    tmp = out / f".{RECORD_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out / RECORD_NAME)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a hash
        return value[:8]
    if isinstance(value, list):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)
