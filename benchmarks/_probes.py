"""Measuring instruments for `cam.py`: bytes across the process boundary, GPU utilisation.

`WireCounter` counts, in this (the parent) process, the bytes of every task's pickled
arguments as the process and Ray backends send them (`steadypool._remote.dumps`), and
of every outcome they bring back (`steadypool._remote.loads`): what really crosses,
measured where it is pickled, not estimated.  The threads backend pickles nothing.

`GpuSampler` reads each GPU's utilisation from the driver (NVML, through the
`nvidia-ml-py` package, imported when it starts) in a background thread, every
`interval` seconds; without NVML (no package, no driver: the CPU) it says why in
`unavailable` and samples nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from steadypool import _remote

__all__ = ["GpuSampler", "WireCounter"]


def _size(frames: Any) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class WireCounter:
    """Count the bytes the parent pickles for tasks and unpickles from outcomes.

    Use as a context manager around one run; `sent` and `received` are totals.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()  # guards the totals: several threads pickle
        self._dumps = _remote.dumps
        self._loads = _remote.loads

    def __enter__(self) -> WireCounter:
        dumps, loads = self._dumps, self._loads

        def counting_dumps(obj: Any) -> Any:
            frames = dumps(obj)
            with self._lock:
                self.sent += _size(frames)
            return frames

        def counting_loads(frames: Any) -> Any:
            with self._lock:
                self.received += _size(frames)
            return loads(frames)

        _remote.dumps = counting_dumps
        _remote.loads = counting_loads
        return self

    def __exit__(self, *exc: object) -> None:
        _remote.dumps = self._dumps
        _remote.loads = self._loads


class GpuSampler:
    """Sample every GPU's utilisation (NVML ``utilization.gpu``, percent) in a thread.

    Args:
        interval: Seconds between samples.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.unavailable: str | None = None
        self.samples: list[tuple[float, list[int]]] = []  # (monotonic time, % per GPU)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-not-found, unused-ignore]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except ImportError:
            self.unavailable = "no NVML (nvidia-ml-py is not installed)"
        except Exception as exc:  # pynvml.NVMLError_*: no driver, no GPU
            self.unavailable = f"no NVML ({type(exc).__name__}: {exc})"

    def __enter__(self) -> GpuSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._sample, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rates = [
                    int(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._handles
                ]
            except Exception as exc:  # the driver went away mid-run: say so, stop
                self.unavailable = f"NVML failed mid-run ({type(exc).__name__}: {exc})"
                return
            self.samples.append((time.monotonic(), rates))

    def utilisation(self, gpu: int, *, active: bool = False) -> float | None:
        """Mean utilisation (0-1) of GPU `gpu` over the run's samples, or (`active`)
        over those from its first busy sample to its last: the steady part, without
        the workers' start-up (CUDA context, model load) and the end of the run."""
        rates = [r[gpu] for _, r in self.samples if gpu < len(r)]
        if active:
            busy = [i for i, rate in enumerate(rates) if rate > 0]
            rates = rates[busy[0] : busy[-1] + 1] if busy else []
        return sum(rates) / len(rates) / 100 if rates else None
