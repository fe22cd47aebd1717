"""The model card of a ``RUN_DIR`` (``kidneyseg info RUN_DIR``): what a model is and was
trained on.

Read from the files training leaves (`kidneyseg.formats.run_dir`), never from a re-run: each
phase's best-checkpoint header (`kidneyseg.models.read_checkpoint_meta`: config,
normalisation, epoch, losses, package version) and ``config.json`` (the preprocessed folder
used), plus, while that folder still exists, its ``meta.json`` (number of cases, source data)
and ``split.json`` (train / val / test sizes). The model id is
`kidneyseg.formats.run_dir.model_id`; the licence is the config's ``model.licence``.

Example:
    >>> card = model_card("runs/paper")  # doctest: +SKIP
    >>> card["model_id"], card["licence"]  # doctest: +SKIP
    ('3f2a9c0d1e4b5a67', 'CC BY-NC-SA 4.0')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kidneyseg.config import config_to_dict
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import META_FILE, read_split
from kidneyseg.formats.run_dir import (
    CONFIG_FILE,
    best_checkpoint,
    model_id,
    phase_dir,
    trained_planes,
)
from kidneyseg.models import read_checkpoint_meta
from kidneyseg.types import PHASES

#: Said when ``model.licence`` was left empty.
NO_LICENCE = (
    "not set (model.licence); weights trained on KiTS data fall under the data's CC BY-NC-SA 4.0"
)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a model folder (a phase with a best checkpoint)."""
    return Path(path).is_dir() and any(best_checkpoint(path, p).is_file() for p in PHASES)


def _training_data(prep: Path) -> dict[str, Any]:
    """What the preprocessed folder says about the data (when it still exists)."""
    out: dict[str, Any] = {"prep_dir": str(prep), "available": (prep / META_FILE).is_file()}
    if not out["available"]:
        return out
    try:
        meta = json.loads((prep / META_FILE).read_text(encoding="utf-8"))
        cases = meta.get("cases", {})
        sources = {str(Path(c.get("source_image", "")).parent.parent) for c in cases.values()}
        out.update(cases=len(cases), sources=sorted(sources))
        split = read_split(prep / "split.json")
        out["split"] = {k: len(getattr(split, k)) for k in ("train", "val", "test")}
    except (OSError, ValueError, KidneysegError) as exc:
        out["error"] = str(exc)
    return out


def model_card(run_dir: str | Path) -> dict[str, Any]:
    """The model card of ``run_dir`` as plain data (see the module doc).

    Raises:
        KidneysegError: no phase of the folder has a best checkpoint, or one is unreadable.
    """
    run = Path(run_dir)
    if not is_run_dir(run):
        raise KidneysegError("not a model folder (no kidney/ or tumor/ best.safetensors)", run)
    phases: dict[str, Any] = {}
    licence = ""
    for phase in PHASES:
        path = best_checkpoint(run, phase)
        if not path.is_file():
            phases[phase] = None
            continue
        meta = read_checkpoint_meta(path)
        licence = licence or meta.config.model.licence
        recorded: dict[str, Any] = {}
        config_json = phase_dir(run, phase) / CONFIG_FILE
        if config_json.is_file():
            recorded = json.loads(config_json.read_text(encoding="utf-8"))
        prep = recorded.get("prep_dir")
        phases[phase] = {
            "kidneyseg_version": meta.kidneyseg_version,
            "epoch": meta.extra.get("epoch"),
            "val_loss": meta.extra.get("val_loss"),
            "train_loss": meta.extra.get("train_loss"),
            "normalization": meta.normalization.to_dict(),
            "architecture": meta.config.model.architecture,
            "outputs": list(meta.outputs),
            "training_data": None if prep is None else _training_data(Path(prep)),
            "config": config_to_dict(meta.config),
        }
    complete = all(phases[p] is not None for p in PHASES)
    return {
        "model_dir": str(run),
        "model_id": model_id(run) if complete else None,
        "complete": complete,
        "licence": licence or NO_LICENCE,
        "phases": phases,
        "planes": {phase: list(trained_planes(run, phase)) for phase in PHASES},
    }


def format_card(card: dict[str, Any]) -> str:
    """Human-readable text of a `model_card` (the config itself only in ``--json``)."""
    lines = [
        f"model        {card['model_dir']}",
        f"model id     {card['model_id'] or 'incomplete (a phase is not trained)'}",
        f"licence      {card['licence']}",
    ]
    planes = card.get("planes", {})
    if any(p != ["axial"] for p in planes.values()):
        lines.append("planes       " + "; ".join(f"{k}: {', '.join(v)}" for k, v in planes.items()))
    for phase, p in card["phases"].items():
        if p is None:
            lines.append(f"{phase:<12} not trained")
            continue
        loss = "" if p["val_loss"] is None else f", val loss {p['val_loss']:.4f}"
        lines.append(
            f"{phase:<12} {p['architecture']} ({', '.join(p.get('outputs') or [phase])}), epoch "
            f"{p['epoch']}{loss}, kidneyseg "
            f"{p['kidneyseg_version']}, window {p['normalization'].get('window')}"
        )
        data = p["training_data"]
        if data is None:
            continue
        if not data["available"]:
            lines.append(f"  data       {data['prep_dir']} (no longer there)")
            continue
        split = data.get("split", {})
        lines.append(
            f"  data       {data.get('cases', '?')} cases from {', '.join(data.get('sources', []))}"
            f"; split train {split.get('train', '?')} / val {split.get('val', '?')} / test "
            f"{split.get('test', '?')}"
        )
    return "\n".join(lines)
