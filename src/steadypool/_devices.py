"""Device names: parsing and checking what `Pool(devices=...)` accepts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["parse_devices"]

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
