"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line[:1] != "#"]


def test_readme_opens_with_the_two_commands() -> None:
    """Command 1 runs the demo, command 2 runs the tests."""
    main_job, tests = _commands()
    assert "steadypool demo" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command, character for character."""
    _, tests = _commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_intro_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """The first Python block of the README runs on a CPU machine and prints what its
    comments say."""
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["(8, 10)"] * 100 + ["8", "8", "4"]


def test_every_cam_option_is_in_the_readme_table() -> None:
    """The options table of `steadypool cam` names every option the command has."""
    from steadypool._cli import _parser

    text = (ROOT / "README.md").read_text()
    rows = {m.group(1) for m in re.finditer(r"^\| `(--[a-z-]+)", text, flags=re.M)}
    commands = next(a for a in _parser()._actions if a.dest == "command")
    assert commands.choices is not None
    cam = dict(commands.choices)["cam"]
    options = {s for a in cam._actions for s in a.option_strings if s.startswith("--")}
    assert options - {"--help"} == rows
