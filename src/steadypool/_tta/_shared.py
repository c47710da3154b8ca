"""Scaled inputs in shared memory, written by the parent, mapped by a device worker.

Data flow::

    CPU worker (parent thread) --Segments.put(arrays)--> /dev/shm/steadypool-cam-PID-N
        --SharedInputs (name, shapes: ~200 bytes pickled)--> device worker process/actor
        --SharedInputs.open()--> the arrays, mapped copy-on-write (no copy, no pickle)
    runner (parent) --Segments.release(ref)--> unlinked, once the item's outcome is in
    run's end (normal, error, Ctrl-C) --Segments.close()--> every file left unlinked

Why: an image's scaled float32 inputs at 4 scales are ~17 MB for a VOC photo; pickled
through a socket they cost the parent and the worker a copy each and keep the device
waiting (issue 19).  Here the parent's CPU workers resize ahead of the device as on
threads, and the worker maps what they wrote.

Who owns what: the parent's `Segments` owns every file from `put` to `release` or
`close`; a worker only maps.  A worker that crashes holding a mapping leaks nothing:
the parent unlinks the file when the item's outcome (the crash) comes in, and the
kernel frees the pages with the last mapping.  A parent killed outright (SIGKILL)
leaves its files behind; the next run removes the files of processes that are gone
(`remove_stale`).  Space is reserved when the file is made (``posix_fallocate``), so a
full /dev/shm is a clean `OSError` for that image (the runner then ships the photo),
never a SIGBUS while writing.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "INPUTS",
    "IN_PROCESS",
    "PHOTO",
    "PREFIX",
    "SHARED",
    "Segments",
    "SharedInputs",
    "choose_inputs",
    "remove_stale",
    "shm_dir",
]

PREFIX = "steadypool-cam-"

IN_PROCESS, SHARED, PHOTO = "in-process", "shared memory", "photo, resized by the worker"
INPUTS = (IN_PROCESS, SHARED, PHOTO)


def choose_inputs(backend: str) -> str:
    """How the scaled images reach a device worker of `backend` (one of `INPUTS`): as
    they are on threads; through shared memory to worker processes, and to Ray actors
    when Ray's cluster is this machine alone; else as the photo, resized by the worker
    (a cluster, or no /dev/shm).  For Ray, call it once Ray is started."""
    if backend == "threads":
        return IN_PROCESS
    if shm_dir() is None:
        return PHOTO
    if backend == "ray":
        import ray

        api: Any = ray  # untyped
        if sum(bool(node.get("Alive")) for node in api.nodes()) != 1:
            return PHOTO
    return SHARED


def shm_dir() -> Path | None:
    """The shared-memory folder (Linux's ``/dev/shm``), or None where there is none."""
    path = Path("/dev/shm")
    return path if path.is_dir() and os.access(path, os.W_OK) else None


@dataclass(frozen=True)
class SharedInputs:
    """Where one image's scaled inputs are: what crosses to the worker instead of them.

    Attributes:
        path: The file in shared memory.
        shapes: Each array's shape (float32, C order, one after the other).
    """

    path: str
    shapes: tuple[tuple[int, ...], ...]

    def open(self) -> list[np.ndarray]:
        """The arrays, mapped copy-on-write (writable, and writes stay private).

        The mapping lives as long as the arrays; the file may be unlinked meanwhile.

        Raises:
            FileNotFoundError: The file is gone (the run ended, or the worker is on
                another machine).
        """
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        with open(self.path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 4 * sum(sizes), access=mmap.ACCESS_COPY)
        arrays, offset = [], 0
        for shape, size in zip(self.shapes, sizes, strict=True):
            arrays.append(np.frombuffer(mapped, np.float32, size, offset).reshape(shape))
            offset += 4 * size
        return arrays


class Segments:
    """The parent's shared-memory files of one run (module docstring).

    Args:
        directory: Where the files go (`shm_dir`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # guards _live and _closed; CPU workers put at once
        self._live: set[str] = set()  # invariant: every file made and not yet unlinked
        self._closed = False  # set once by close(); put() after it unlinks its own file
        self._numbers = itertools.count()

    def put(self, arrays: Sequence[np.ndarray]) -> SharedInputs:
        """Write `arrays` (float32) into a new file; the caller ships the result.

        Raises:
            OSError: No room in shared memory (ENOSPC), or it cannot be written.
            RuntimeError: The run is over (`close` was called).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the run is over: no more shared inputs")
            path = str(self.directory / f"{PREFIX}{os.getpid()}-{next(self._numbers)}")
            self._live.add(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                total = sum(4 * a.size for a in arrays)
                os.posix_fallocate(fd, 0, max(total, 1))  # ENOSPC now, not SIGBUS later
                offset = 0
                for array in arrays:
                    data = np.ascontiguousarray(array, dtype=np.float32).data.cast("B")
                    while data:
                        written = os.pwrite(fd, data, offset)
                        data, offset = data[written:], offset + written
            finally:
                os.close(fd)
        except BaseException:
            self.release_path(path)
            raise
        with self._lock:
            closed = self._closed
        if closed:  # close() ran while this was written: it may have missed the file
            self.release_path(path)
            raise RuntimeError("the run is over: no more shared inputs")
        return SharedInputs(path, tuple(a.shape for a in arrays))

    def release(self, inputs: object) -> None:
        """Unlink `inputs`' file if it is one of ours (anything else: nothing to do)."""
        if isinstance(inputs, SharedInputs):
            self.release_path(inputs.path)

    def release_path(self, path: str) -> None:
        with self._lock:
            self._live.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def close(self) -> None:
        """Unlink every file still here; later `put` calls fail."""
        with self._lock:
            self._closed = True
            left, self._live = self._live, set()
        for path in left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    @property
    def live(self) -> int:
        """How many files are made and not yet unlinked."""
        with self._lock:
            return len(self._live)


def remove_stale(directory: Path) -> int:
    """Unlink the files of runs whose process is gone (killed before its cleanup);
    return how many.  A live process's files are left alone."""
    removed = 0
    for path in directory.glob(f"{PREFIX}*"):
        pid_text = path.name[len(PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
