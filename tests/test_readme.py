"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

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
