"""Options that hold for every subcommand, and the Python versions pyproject.toml claims."""

from __future__ import annotations

import ast
import re
import sys
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
    """``requires-python`` names the oldest Python whose grammar every module must parse in."""
    for path in sorted((ROOT / "src" / "kidneyseg").rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=_floor())


def _floor() -> tuple[int, int]:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^requires-python = ">=3\.(\d+)"', pyproject, re.M)
    assert found, "requires-python must read >=3.N"
    return 3, int(found.group(1))


def test_requires_python_is_what_is_tested_and_no_tomli() -> None:
    """The floor is no newer than the Python running the tests (CI: Debian's 3.11), and the
    code needs nothing below it: ``tomllib`` is used directly, no ``tomli`` backport, and the
    tools check against the same version."""
    floor = _floor()
    assert floor <= sys.version_info[:2], (
        f"requires-python >={floor} but tests run on {sys.version}"
    )
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "tomli" not in pyproject
    assert f'python_version = "{floor[0]}.{floor[1]}"' in pyproject  # mypy
    assert f'target-version = "py{floor[0]}{floor[1]}"' in pyproject  # ruff
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            imported = {
                a.name.split(".")[0]
                for n in ast.walk(tree)
                if isinstance(n, ast.Import)
                for a in n.names
            }
            imported |= {
                (n.module or "").split(".")[0]
                for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom)
            }
            assert "tomli" not in imported, f"{path} imports tomli"
    config = (ROOT / "src" / "kidneyseg" / "config_files.py").read_text(encoding="utf-8")
    assert "\nimport tomllib\n" in config and "version_info" not in config
