"""`diagnose()`: the text a user pastes into a bug report."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._exceptions import StallError, TaskTimeout

if TYPE_CHECKING:
    from ._records import StallReport

__all__ = ["diagnose"]


def _version(package: str) -> str:
    from importlib import metadata  # imported here: 30 ms every worker process would pay

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _torch_line() -> str:
    version = _version("torch")
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return f"torch {version} (not imported by this process)"
    cuda = torch.cuda
    if not cuda.is_available():
        return f"torch {version}, CUDA not available"
    names = [cuda.get_device_name(i) for i in range(cuda.device_count())]
    return f"torch {version}, CUDA {torch.version.cuda}, {len(names)} devices: " + ", ".join(names)


def diagnose(report: StallReport | BaseException | str | None = None) -> str:
    """Return the text to paste into a bug report: versions, machine, and the report.

    Args:
        report: A `StallReport` (from ``on_stall=callable`` or `StallError.report`), a
            `StallError` or `TaskTimeout` (its report or stack is included), a report
            as text (as logged; ``steadypool diagnose FILE``), or None for the
            environment alone.

    Never imports torch: CUDA devices are listed only if torch is already imported.
    """
    import platform

    from . import __version__

    threads = [t.name for t in threading.enumerate() if t.name.startswith("steadypool-")]
    lines = [
        "steadypool diagnosis",
        f"steadypool {__version__}",
        f"Python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.platform()}, {os.cpu_count()} CPUs",
        ", ".join(f"{p} {_version(p)}" for p in ("numpy", "cloudpickle", "tqdm")),
        _torch_line(),
        f"steadypool threads alive: {len(threads)}"
        + (
            f" ({', '.join(sorted(threads)[:12])}{', ...' if len(threads) > 12 else ''})"
            if threads
            else ""
        ),
    ]
    if isinstance(report, StallError) and report.report is not None:
        lines += ["", f"{type(report).__name__}:", str(report.report)]
    elif isinstance(report, TaskTimeout):
        lines += ["", f"TaskTimeout: {report}"]
        if report.stack:
            lines += ["stack at the timeout:", report.stack.rstrip()]
    elif isinstance(report, BaseException):
        lines += ["", f"{type(report).__name__}: {report}"]
    elif report is not None:
        lines += ["", str(report)]
    return "\n".join(lines)
