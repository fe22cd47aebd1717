"""The model folder ``RUN_DIR``: names, readers and writers of each phase's outputs.

Layout (docs/formats.md "Model folder")::

    RUN_DIR/<phase>/best.safetensors   weights of the best validation loss or Dice (predict uses it)
    RUN_DIR/<phase>/last.safetensors   weights at the end of the last finished epoch
    RUN_DIR/<phase>/last.ckpt          Lightning state for --resume
    RUN_DIR/<phase>/metrics.csv        one row per epoch (`METRICS_COLUMNS`)
    RUN_DIR/<phase>/curves.png         training/validation loss (paper Fig. 6), validation Dice
    RUN_DIR/<phase>/config.json        resolved config + package version
    RUN_DIR/tumor/regions/             cached phase-1 regions (data.tumor_region=predicted)
    RUN_DIR/<phase>/extra_prep/        preprocessed data.extra_cases (a KiTS-layout folder)
    RUN_DIR/<phase>_<plane>/           the same for a coronal / sagittal model (``data.planes``)
    RUN_DIR/planes/<plane>/            the plane's view of PREP_DIR (`kidneyseg.plane_views`)

The checkpoint file format itself (safetensors + JSON header) belongs to `kidneyseg.models`.

Example:
    >>> best_checkpoint("run", "kidney").as_posix()
    'run/kidney/best.safetensors'
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kidneyseg.errors import KidneysegError
from kidneyseg.planes import PLANES
from kidneyseg.types import PHASES
from kidneyseg.utils import atomic_write_text

BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
RESUME_FILE = "last.ckpt"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.json"
REGIONS_DIR = "regions"
#: The preprocessed ``data.extra_cases`` when they were given as a KiTS-layout folder.
EXTRA_PREP_DIR = "extra_prep"
#: ``RUN_DIR/planes/<plane>/``: cached plane views of the training data (`kidneyseg.plane_views`).
PLANE_VIEWS_DIR = "planes"
#: Columns of ``metrics.csv``.
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "slices_per_s")


def phase_dir(run_dir: str | Path, phase: str, plane: str = "axial") -> Path:
    """``RUN_DIR/<phase>`` (axial) or ``RUN_DIR/<phase>_<plane>`` (coronal, sagittal).

    Example:
        >>> phase_dir("run", "tumor", "coronal").as_posix()
        'run/tumor_coronal'
    """
    if phase not in PHASES:
        raise KidneysegError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    if plane not in PLANES:
        raise KidneysegError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    return Path(run_dir) / (phase if plane == "axial" else f"{phase}_{plane}")


def best_checkpoint(run_dir: str | Path, phase: str, plane: str = "axial") -> Path:
    """``RUN_DIR/<phase>[_<plane>]/best.safetensors`` (the checkpoint prediction uses)."""
    return phase_dir(run_dir, phase, plane) / BEST_FILE


def plane_view_dir(run_dir: str | Path, plane: str) -> Path:
    """``RUN_DIR/planes/<plane>``: the cached plane view of the training data."""
    return Path(run_dir) / PLANE_VIEWS_DIR / plane


def trained_planes(run_dir: str | Path, phase: str) -> tuple[str, ...]:
    """The planes (in `PLANES` order) with a best checkpoint of ``phase`` in ``run_dir``."""
    return tuple(p for p in PLANES if best_checkpoint(run_dir, phase, p).is_file())


def checkpoint_digests(run_dir: str | Path) -> dict[str, str]:
    """SHA-256 (hex) of every best checkpoint, keyed by its folder name (``kidney``,
    ``tumor``, ``kidney_coronal``, ...); both axial phases are required.

    Raises:
        KidneysegError: an axial phase's best checkpoint is missing.
    """
    digests = {phase: file_sha256(require_best_checkpoint(run_dir, phase)) for phase in PHASES}
    for phase in PHASES:
        for plane in trained_planes(run_dir, phase):
            if plane != "axial":
                path = best_checkpoint(run_dir, phase, plane)
                digests[path.parent.name] = file_sha256(path)
    return digests


def require_best_checkpoint(run_dir: str | Path, phase: str) -> Path:
    """The phase's best checkpoint, or a one-line error saying how to make it."""
    path = best_checkpoint(run_dir, phase)
    if not path.is_file():
        raise KidneysegError(
            f"model folder has no {phase}/{BEST_FILE}; train it with "
            f"`kidneyseg train PREP_DIR {run_dir} --phase {phase}`",
            path=run_dir,
        )
    return path


def model_id(run_dir: str | Path) -> str:
    """The model id: the first 16 hex digits of SHA-256 over the best checkpoints (each
    file's SHA-256: kidney, tumor, then any plane models by folder name). Same weights, same
    id, wherever they lie; a folder of axial models only keeps the id it always had.

    Raises:
        KidneysegError: a phase's best checkpoint is missing.
    """
    return model_id_from_digests(checkpoint_digests(run_dir))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, as hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_id_from_digests(digests: Mapping[str, str]) -> str:
    """The model id from the best checkpoints' SHA-256 (hex), keyed as `checkpoint_digests`:
    what `model_id` computes, and what a model package's manifest is checked against.

    Example:
        >>> model_id_from_digests({"kidney": "0" * 64, "tumor": "1" * 64})
        '6ca0aa1749761d6a'
    """
    outer = hashlib.sha256()
    for name in (*PHASES, *sorted(k for k in digests if k not in PHASES)):
        outer.update(f"{name}:{digests[name]}\n".encode())
    return outer.hexdigest()[:16]


def phase_trained(run_dir: str | Path, phase: str) -> bool:
    """True when the phase has a best checkpoint and its metrics (a finished or reusable run)."""
    d = phase_dir(run_dir, phase)
    return (d / BEST_FILE).is_file() and (d / METRICS_FILE).is_file()


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` as strings (``[]`` when the file does not exist yet)."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_metrics(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``metrics.csv`` atomically with the `METRICS_COLUMNS` header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
