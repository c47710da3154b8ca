"""Ruff and mypy --strict are clean over src/ and tests/ (run with the test suite)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.timeout(300)
def test_ruff_is_clean() -> None:
    """ruff check and ruff format --check find nothing."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: install the dev extra")
    done = _run(ruff, "check", "src", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout + done.stderr
    done = _run(ruff, "format", "--check", "src", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) passes over src and tests.

    The types are checked against torch, Pillow and Ray as installed by the README's
    test command; with only the base install there is nothing to check those calls
    against, so the check needs them."""
    for module in ("torch", "PIL", "ray"):
        pytest.importorskip(module, reason=f"mypy checks the calls into {module}")
    done = _run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr
