"""Device names: parsing and checking what `Pool(devices=...)` accepts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
from typing import Any

__all__ = ["activate", "check_available", "child_view", "parse_devices"]

_KINDS = ("cpu", "cuda", "mps", "xpu")
_PATTERN = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<index>\d+))?$")


def _parse_one(device: object) -> str:
    if not isinstance(device, str):
        raise TypeError(
            f"each device must be a string such as 'cuda:0' or 'cpu', got {device!r} "
            f"({type(device).__name__})"
        )
    match = _PATTERN.match(device.strip().lower())
    if match is None or match["kind"] not in _KINDS:
        raise ValueError(
            f"unknown device {device!r}: use one of {', '.join(_KINDS)}, optionally with an "
            "index ('cuda:1', 'cpu:0')"
        )
    kind, index = match["kind"], match["index"]
    if kind == "cuda" and index is None:
        index = "0"
    return kind if index is None else f"{kind}:{int(index)}"


def parse_devices(devices: Sequence[str]) -> tuple[str, ...]:
    """Check and normalise a list of device names; one worker is made per entry.

    A device may repeat (``["cuda:0", "cuda:0"]`` gives two workers on one GPU).

    Raises:
        TypeError: `devices` is a bare string or holds something other than strings.
        ValueError: It is empty or names an unknown device kind.
    """
    if isinstance(devices, str):
        raise TypeError(
            f"devices must be a list of device names, got the string {devices!r}; "
            f"write devices=[{devices!r}]"
        )
    parsed = tuple(_parse_one(d) for d in devices)
    if not parsed:
        raise ValueError("devices must name at least one device, got an empty list")
    return parsed


def check_available(devices: Sequence[str | None]) -> None:
    """Refuse devices this machine does not have, before any worker starts.

    Only imports torch when a ``cuda``/``mps``/``xpu`` device is asked for.

    Raises:
        ValueError: A device is missing, saying which devices there are.
    """
    wanted = sorted({d for d in devices if d is not None and not d.startswith("cpu")})
    if not wanted:
        return
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"devices {wanted} need torch, which is not installed; install the 'torch' "
            "extra, or use 'cpu' devices"
        ) from None
    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        available.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        available += [f"xpu:{i}" for i in range(xpu.device_count())]
    missing = [
        d for d in wanted if d not in available and not (d == "mps:0" and "mps" in available)
    ]
    if missing:
        raise ValueError(
            f"device{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} not available on this machine; "
            f"available: {', '.join(available)}"
        )


def activate(device: str | None) -> None:
    """Make `device` current in the calling thread, with a CUDA stream of its own.

    Called once when a worker thread (or worker process) starts, before `setup`: the
    current CUDA device and the current stream are per thread in CUDA and PyTorch, so
    every later task of the worker runs on its device and stream at no cost per task.
    CPU devices (and no device) need nothing.
    """
    if device is None or not device.startswith("cuda"):
        return
    import torch

    cuda: Any = torch.cuda
    index = int(device.split(":", 1)[1])
    cuda.set_device(index)
    cuda.set_stream(cuda.Stream(index))


def child_view(device: str | None, cpu_share: int = 0) -> tuple[str | None, dict[str, str]]:
    """The device as the child sees it, and the environment that makes it so.

    A worker pinned to the CPU gets `cpu_share` threads for its math libraries (torch,
    numpy's BLAS): the cores divided among the CPU workers, so that N worker processes
    do not each start a thread per core (set before they load, which is why it is an
    environment variable).
    """
    if device is not None and device.startswith("cuda:"):
        return "cuda:0", {"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1]}
    if device is not None and device.startswith("cpu") and cpu_share:
        threads = str(cpu_share)
        return device, {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
        }
    return device, {}
