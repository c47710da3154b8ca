"""The CAM runner's output folders: created and probed before work, removed again
when the run is refused, written only through whole files (temporary name, then
rename), and cleared of temporary files that killed runs left behind."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ._files import layout_of
from ._inputs import CamInputError
from ._recipes import Layout

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "layout_on_disk",
    "make_output_dirs",
    "remove_dirs",
    "remove_stale_temps",
    "write_atomic",
]


def make_output_dirs(folders: Sequence[Path | None]) -> list[Path]:
    """Create the output folders and check that they take files; return the folders
    this call created, parents first (removed again if the run is refused)."""
    created: list[Path] = []
    for directory in folders:
        if directory is None:
            continue
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            created += reversed(missing)
            probe = directory / f".steadypool-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            remove_dirs(created)
            raise CamInputError(f"cannot write to {directory}: {exc}") from exc
    return created


def remove_dirs(created: list[Path]) -> None:
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if still empty


def remove_stale_temps(folders: Sequence[Path | None]) -> None:
    """Remove the temporary files (``.NAME.npy.PID.tmp``, ``.NAME.png.PID.tmp``) that a
    killed run left in any output folder; a live process's files are left alone."""
    for directory in folders:
        if directory is None:
            continue
        for temp in directory.glob(".*.tmp"):
            parts = temp.name.rsplit(".", 3)  # [".NAME", "npy" | "png", PID, "tmp"]
            if len(parts) != 4 or parts[1] not in ("npy", "png") or not parts[2].isdigit():
                continue
            if not _alive(int(parts[2])):
                temp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def write_atomic(path: Path, obj: Any) -> None:
    """np.save to a temporary name, then rename: a kill never leaves a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, obj, allow_pickle=True)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def layout_on_disk(path: Path) -> str | None:
    """The layout of a finished file, None when it is unreadable or lacks its format's
    types (a resumed run redoes it; the run record says which format made it)."""
    import torch

    try:
        loaded = np.load(path, allow_pickle=True).item()
    except Exception:  # not ours, or unreadable: redo it
        return None
    layout = layout_of(loaded)
    if layout is Layout.IRN and not (
        isinstance(loaded["keys"], torch.Tensor) and isinstance(loaded["cam"], torch.Tensor)
    ):
        return None  # irn's next steps need its types
    return layout.value if layout is not None else None
