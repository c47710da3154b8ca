"""The transport's ceiling, for `cam.py --transport N`: how many images per second can
reach one worker process at all, each way the runner can send them, with no device and
no resizing in the way (one 500x375 image's inputs, prepared once, sent N times).

  scaled arrays, pickled   the ~17 MB of float32 inputs through the process backend
                           (how the processes path worked before issue 19)
  shared memory            the parent writes them into /dev/shm (`Segments.put`), the
                           worker maps them (`SharedInputs.open`); the parent unlinks
  photo                    the decoded photo (~0.5 MB); the worker's resize is left out

The worker touches every array (a sum over one row), so each is really received.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import steadypool as sp
from steadypool._tta._shared import Segments, SharedInputs, shm_dir

__all__ = ["ceiling"]


def _touch(item: Any) -> float:
    arrays = item.open() if isinstance(item, SharedInputs) else item
    if not isinstance(arrays, list):  # the photo
        return float(np.asarray(arrays)[0].sum())
    return float(sum(a[0, 0].sum() for a in arrays))


def ceiling(photo: Any, arrays: list[np.ndarray], count: int) -> dict[str, float]:
    """Images/s that reach one worker process, per way of sending them."""
    rates: dict[str, float] = {}
    with sp.Pool(devices=["cpu"], backend="processes", name="transport") as pool:
        pool.submit(_touch, arrays).result(120)  # started, and the function cached
        start = time.perf_counter()
        for _ in pool.imap(_touch, (arrays for _ in range(count)), window=4):
            pass
        rates["scaled arrays, pickled"] = count / (time.perf_counter() - start)
        folder = shm_dir()
        if folder is not None:
            segments = Segments(folder)
            try:
                # written, sent and mapped in a stream; each released once it came back
                start = time.perf_counter()
                sent: list[SharedInputs] = []

                def stream() -> Any:
                    for _ in range(count):
                        ref = segments.put(arrays)
                        sent.append(ref)
                        yield ref

                for i, _ in enumerate(pool.imap(_touch, stream(), window=4)):
                    segments.release(sent[i])
                rates["shared memory"] = count / (time.perf_counter() - start)
            finally:
                segments.close()
        image = np.asarray(photo)
        start = time.perf_counter()
        for _ in pool.imap(_touch, (image for _ in range(count)), window=4):
            pass
        rates["photo (its resize left out)"] = count / (time.perf_counter() - start)
    return rates
