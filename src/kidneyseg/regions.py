"""Phase-1 kidney regions for phase-2 training (``data.tumor_region = "predicted"``).

Phase 2 can train on the kidney regions phase 1 predicts, as the cascade sees them at
inference. `predict_kidney_regions` makes them with the same `PhaseRunner` as
`kidneyseg.inference.Predictor`, once per case, and caches them in ``RUN_DIR/tumor/regions/``:

* ``<case_id>.npy``: uint8 0/1, canonical ``(z, y, x)``, the case's shape;
* ``<case_id>.slices.npy``: region pixels per slice (int64);
* ``source.json``: the phase-1 checkpoint, its SHA-256 and the cascade settings (another model
  or other settings empty the cache).

Example:
    >>> predict_kidney_regions(prep, prep.split.train, "run/kidney/best.safetensors",
    ...                        "run/tumor/regions")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kidneyseg.config import InferenceConfig
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import PrepDir
from kidneyseg.formats.run_dir import file_sha256
from kidneyseg.localization import segment_kidneys
from kidneyseg.models import read_checkpoint_meta
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.utils import atomic_path, atomic_write_text

SOURCE_FILE = "source.json"


def region_files(regions_dir: str | Path, case_id: str) -> tuple[Path, Path]:
    """``(<case_id>.npy, <case_id>.slices.npy)`` in a regions folder."""
    d = Path(regions_dir)
    return d / f"{case_id}.npy", d / f"{case_id}.slices.npy"


def regions_complete(regions_dir: str | Path, case_ids: Sequence[str]) -> bool:
    """True when ``regions_dir`` holds a predicted region for every case."""
    return all(all(f.is_file() for f in region_files(regions_dir, c)) for c in case_ids)


def _recorded_digest(regions_dir: Path) -> str | None:
    source = regions_dir / SOURCE_FILE
    if not source.is_file():
        return None
    try:
        value = json.loads(source.read_text(encoding="utf-8")).get("sha256")
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _settings_key(settings: InferenceConfig) -> str:
    return (
        f"{settings.mode}/{settings.coarse_step_mm:g}/{settings.crop_margin_mm:g}/"
        f"{settings.threshold:g}{'/tta' if settings.tta else ''}"  # keys without TTA unchanged
    )


def regions_ready(
    regions_dir: str | Path,
    case_ids: Sequence[str],
    checkpoint: str | Path,
    settings: InferenceConfig | None = None,
) -> bool:
    """True when ``regions_dir`` holds every case's region, predicted by ``checkpoint`` with
    ``settings`` (default settings when None)."""
    if not regions_complete(regions_dir, case_ids):
        return False
    key = file_sha256(Path(checkpoint)) + ":" + _settings_key(settings or InferenceConfig())
    return _recorded_digest(Path(regions_dir)) == key


def predict_kidney_regions(
    prep: PrepDir,
    case_ids: Sequence[str],
    checkpoint: str | Path,
    regions_dir: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    threshold: float = 0.5,
    precision: str = "auto",
    settings: InferenceConfig | None = None,
) -> Path:
    """Predict phase 1's kidney region of each case once and cache it (for phase-2 training).

    The regions are made exactly as prediction makes them (`kidneyseg.localization.
    segment_kidneys` with the same settings). ``settings`` (the config's ``inference``
    section) gives the mode, batch size, threshold, precision and flip TTA; without it, the
    defaults with ``batch_size``, ``threshold`` and ``precision``. Cases already cached are
    skipped; each file is written atomically.

    Raises:
        KidneysegError: the checkpoint is missing, corrupt or not a phase-1 model.
    """
    checkpoint, out = Path(checkpoint), Path(regions_dir)
    phase = read_checkpoint_meta(checkpoint).phase
    if phase != "kidney":
        raise KidneysegError(
            f"predicted regions need a phase-1 (kidney) model, this one is phase {phase!r}",
            path=checkpoint,
        )
    if settings is None:
        settings = InferenceConfig(batch_size=batch_size, precision=precision, threshold=threshold)
    runner = PhaseRunner.load(
        checkpoint,
        "kidney",
        torch.device(device),
        settings.precision,
        settings.batch_size,
        settings.threshold,
        settings.tta,
    )
    # Regions depend on the checkpoint and on how the cascade runs: both key the cache.
    digest = file_sha256(checkpoint) + ":" + _settings_key(settings)
    recorded = _recorded_digest(out)
    if recorded is not None and recorded != digest:
        shutil.rmtree(out)  # regions of another phase-1 model: stale
    if regions_complete(out, case_ids) and recorded == digest:
        return out
    out.mkdir(parents=True, exist_ok=True)
    source = {"checkpoint": str(checkpoint.resolve()), "sha256": digest}
    atomic_write_text(out / SOURCE_FILE, json.dumps(source, indent=2) + "\n")
    for case_id in case_ids:
        if regions_complete(out, [case_id]):
            continue
        image = np.load(prep.case_files(case_id)[0], mmap_mode="r")
        kidney = segment_kidneys(runner, image, prep.spacing_mm(case_id), settings)
        region = kidney.astype(np.uint8)
        region_path, slices_path = region_files(out, case_id)
        with atomic_path(region_path) as tmp, tmp.open("wb") as f:
            np.save(f, region)
        with atomic_path(slices_path) as tmp, tmp.open("wb") as f:
            np.save(f, region.reshape(len(region), -1).sum(axis=1, dtype=np.int64))
    return out
