"""The README's two commands are the contract: CI must run exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in bash_blocks() if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_main_command_runs_the_default_preset():
    main_command = bash_blocks()[0]
    assert "msw run --preset tiny" in main_command and "pip install" in main_command


def test_readme_names_every_cli_subcommand():
    from medsafetyworld.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    readme = (ROOT / "README.md").read_text()
    for name in sub.choices:
        assert f"msw {name}" in readme or f"] {name}" in readme, name
