"""A simulated device for `cam.py --simulate`: a CAM network whose forward sleeps.

`SimulatedDevice.forward_cam` sleeps a fixed time per megapixel of its batch (the GIL
released, as while a GPU kernel runs) and returns maps of the right shape cheaply
(stride 8, every class a copy of one input channel's samples, non-negative).  Each
replica keeps its own clock, the device's: the seconds it spent inside the sleep, the
start of its first forward and the end of its last, written to a small JSON file in
`clock_dir` after every forward, so the benchmark reads the clocks of replicas in
worker processes and Ray actors as well as in threads.  The clock is `time.monotonic`
(one system-wide clock on Linux, comparable across processes).

What it proves: whether the pipeline keeps a device fed (its inputs ready when it is
free, its results taken away), on every backend.  What it cannot: no PCIe copy, no
CUDA launch or synchronisation cost, no GPU memory; the math after the network runs
on the CPU here (on a GPU it is device time).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import steadypool as sp

__all__ = ["SimulatedDevice", "read_clocks"]


class SimulatedDevice(nn.Module):
    """A CAM network that costs `seconds_per_megapixel` of device time and no CPU.

    Args:
        seconds_per_megapixel: Sleep per million input pixels (batch included).
        clock_dir: Where each replica that ran a forward writes its clock; "" for none.
        classes: Channels of the maps it returns.
        forwards_per_image: Forwards of one image (its scales), to split the idle time
            between the forwards into "between images" (waiting for the next image:
            the pipeline's part) and "within an image" (the math after the network,
            on the CPU here: device time on a GPU).
    """

    def __init__(
        self,
        seconds_per_megapixel: float = 0.3,
        clock_dir: str = "",
        classes: int = 20,
        forwards_per_image: int = 4,
    ) -> None:
        super().__init__()
        self.seconds_per_megapixel = seconds_per_megapixel
        self.clock_dir = clock_dir
        self.classes = classes
        self.forwards_per_image = forwards_per_image
        try:
            self.worker: int | None = sp.current_worker().index
        except Exception:  # built outside a worker (the runner's own copy)
            self.worker = None
        self._lock = threading.Lock()  # guards the clock: one replica, one device
        self._busy = 0.0
        self._first: float | None = None
        self._last = 0.0
        self._forwards = 0
        self._idle_between = 0.0  # idle before an image's first forward
        self._idle_within = 0.0  # idle before its other forwards

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        """Sleep for the batch's megapixels; return (N, classes, ceil(h/8), ceil(w/8))."""
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
        with self._lock:  # a device runs one kernel at a time
            start = time.monotonic()
            time.sleep(self.seconds_per_megapixel * pixels / 1e6)
            end = time.monotonic()
            self._busy += end - start
            if self._first is None:
                self._first = start
            elif self._forwards % self.forwards_per_image == 0:
                self._idle_between += start - self._last
            else:
                self._idle_within += start - self._last
            self._last = end
            self._forwards += 1
            self._write_clock()
        return x[:, :1, ::8, ::8].abs().repeat(1, self.classes, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_cam(x)

    def _write_clock(self) -> None:
        if not self.clock_dir:
            return
        name = f"{os.getpid()}-{id(self)}"
        tmp = Path(self.clock_dir) / f".{name}.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "worker": self.worker,
                    "busy": self._busy,
                    "first": self._first,
                    "last": self._last,
                    "forwards": self._forwards,
                    "idle_between_images": self._idle_between,
                    "idle_within_images": self._idle_within,
                }
            )
        )
        os.replace(tmp, Path(self.clock_dir) / f"{name}.json")


def read_clocks(clock_dir: Path) -> list[dict[str, Any]]:
    """The clocks of the device workers' replicas that ran, by worker index (not the
    runner's own copy, which runs one probe forward outside any worker)."""
    clocks = [json.loads(p.read_text()) for p in clock_dir.glob("*.json")]
    return sorted((c for c in clocks if c["worker"] is not None), key=lambda c: c["worker"])
