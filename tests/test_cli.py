"""The command line: `steadypool demo` / `python -m steadypool`."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from steadypool._cli import main

if TYPE_CHECKING:
    from pathlib import Path


def test_demo_prints_a_table_and_matching_checksums(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo runs serially and on the pool, and both give identical results."""
    assert main(["pool-demo", "--items", "40", "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 workers" in out
    assert "results identical to the 1-worker run, in order: yes" in out


def test_python_dash_m_runs_the_demo() -> None:
    """`python -m steadypool pool-demo` works as a program."""
    done = subprocess.run(
        [sys.executable, "-m", "steadypool", "pool-demo", "--items", "20", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "items per worker" in done.stdout


def test_diagnose_command_prints_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    """`steadypool diagnose` prints versions for a bug report."""
    assert main(["diagnose"]) == 0
    assert "steadypool diagnosis" in capsys.readouterr().out


def test_no_subcommand_prints_help_and_runs_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`steadypool` alone prints the commands (exit 2) instead of running the demo into
    the current folder."""
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out
    assert "cam" in out
    assert list(tmp_path.iterdir()) == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`steadypool --version` prints the version."""
    import steadypool

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"steadypool {steadypool.__version__}"


@pytest.mark.parametrize("command", ["cam", "eval"])
def test_help_lists_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`steadypool cam --help` and `steadypool eval --help` name every option they take."""
    from steadypool._cli import _parser

    commands = next(a for a in _parser()._actions if a.dest == "command")
    assert commands.choices is not None
    sub = dict(commands.choices)[command]
    options = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert options, command
    for option in options:
        assert option in text, option
