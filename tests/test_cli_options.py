"""Options that hold for every subcommand, and the Python versions pyproject.toml claims."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kidneyseg.cli import SUBCOMMANDS, build_parser, main
from kidneyseg.errors import KidneysegError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("before", [True, False])
def test_debug_before_or_after_the_subcommand(before: bool, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.nii.gz")
    argv = ["--debug", "info", missing] if before else ["info", missing, "--debug"]
    with pytest.raises(KidneysegError, match="missing.nii.gz"):
        main(argv)
    assert main(["info", missing]) == 2  # without it: one line, status 2


def test_every_subcommand_takes_debug() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None and sorted(commands) == sorted(SUBCOMMANDS)
    for name, command in commands.items():  # type: ignore[union-attr]
        assert any(a.dest == "debug" for a in command._actions), name
    assert parser.parse_args(["stats", "x.nii.gz"]).debug is False
    assert parser.parse_args(["stats", "--debug", "x.nii.gz"]).debug is True


def test_sources_parse_as_the_oldest_supported_python() -> None:
    """``requires-python`` names the oldest Python whose grammar every module must parse in,
    and a stdlib module newer than it needs its PyPI fallback declared."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^requires-python = ">=3\.(\d+)"', pyproject, re.M)
    assert found, "requires-python must read >=3.N"
    minor = int(found.group(1))
    for path in sorted((ROOT / "src" / "kidneyseg").rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, minor))
    if minor < 11:
        config = (ROOT / "src" / "kidneyseg" / "config_files.py").read_text(encoding="utf-8")
        assert "import tomli as tomllib" in config
        assert "\"tomli>=1.1; python_version < '3.11'\"" in pyproject
