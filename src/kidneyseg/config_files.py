"""Config files: JSON, YAML or TOML read into the nested dicts `kidneyseg.config` merges.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "my.json"
    >>> _ = path.write_text('{"train": {"lr": 0.0005}}')
    >>> load_config_file(path)
    {'train': {'lr': 0.0005}}
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from kidneyseg.errors import KidneysegError


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON, YAML or TOML config file into nested dicts."""
    p = Path(path)
    if not p.is_file():
        raise KidneysegError("config file not found", path=p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KidneysegError(
            "config file is not text (binary data); give a .json, .yaml or .toml file", path=p
        ) from None
    except OSError as exc:
        raise KidneysegError(f"cannot read config file: {exc.strerror}", path=p) from exc
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise KidneysegError("config file must be .json, .yaml/.yml or .toml", path=p)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise KidneysegError(f"cannot parse config: {exc}", path=p) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("yaml"):
            raise KidneysegError(f"cannot parse config: {exc}", path=p) from exc
        raise
    data = data or {}
    if not isinstance(data, dict):
        raise KidneysegError("config file must hold a mapping of sections", path=p)
    return data
