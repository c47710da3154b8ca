"""The Ray instance under the Ray backend's pools: connected on first use, started here
when none is (sized to the machine), and shut down by the last pool that used one it
started -- steadypool never leaves behind a Ray instance of its own.

`_ray_lock` guards `_ray_users` and `_ray_started_here`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

__all__ = ["connect", "disconnect", "first_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# The Ray instance steadypool started (if any) and how many pools use it.
_ray_lock = threading.Lock()
_ray_users = 0
_ray_started_here = False


def connect(address: str | None) -> Any:
    global _ray_users, _ray_started_here
    import ray

    with _ray_lock:
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
                except ConnectionError as exc:
                    raise ConnectionError(
                        f"no Ray cluster at address {address!r}: {exc} (start one with "
                        "`ray start --head`, or give no address for a local Ray instance)"
                    ) from exc
            else:
                ray.init(
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
                _ray_started_here = True
        _ray_users += 1
    return ray


def disconnect() -> None:
    global _ray_users, _ray_started_here
    import ray

    with _ray_lock:
        _ray_users -= 1
        if _ray_users == 0 and _ray_started_here:
            if ray.is_initialized():
                ray.shutdown()
            _ray_started_here = False


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, without Ray's terminal colours."""
    text = _ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
