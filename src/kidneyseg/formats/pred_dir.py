"""Prediction outputs (``kidneyseg predict``): label maps and the ``--stats`` file.

* Folder mode writes ``PRED_DIR/<case_id>.nii.gz``: uint8 labels 0 background, 1 kidney,
  2 tumor, in the input's exact geometry. One CT writes to the path given.
* ``--stats FILE`` writes one JSON object (`stats_document`): per case the kidney and tumor
  voxel counts and volumes in mL (`label_statistics`).

Example:
    >>> output_path("pred", "case_00001").as_posix()
    'pred/case_00001.nii.gz'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.types import KIDNEY, TUMOR, Volume
from kidneyseg.utils import atomic_write_text, package_version

#: Suffix of the label maps written in folder mode.
OUTPUT_SUFFIX = ".nii.gz"
STATS_FORMAT = "kidneyseg-stats"


def output_path(pred_dir: str | Path, case_id: str) -> Path:
    """Where folder mode writes a case's label map."""
    return Path(pred_dir) / f"{case_id}{OUTPUT_SUFFIX}"


def label_statistics(labels: Volume) -> dict[str, Any]:
    """Voxel counts and volumes (mL) of kidney (label 1) and tumor (label 2) in a label map.

    Example:
        >>> arr = np.zeros((10, 10, 10), np.uint8); arr[:2] = 1; arr[0, 0, 0] = 2
        >>> label_statistics(Volume(arr, (1.0, 1.0, 2.0)))["kidney"]
        {'voxels': 199, 'volume_ml': 0.398}
    """
    counts = np.bincount(np.asarray(labels.array, dtype=np.uint8).ravel(), minlength=3)
    ml = labels.voxel_volume_ml
    return {
        name: {"voxels": int(counts[k]), "volume_ml": round(float(counts[k]) * ml, 6)}
        for name, k in (("kidney", KIDNEY), ("tumor", TUMOR))
    }


def stats_document(
    stats: Mapping[str, dict[str, Any]], failed: Mapping[str, str]
) -> dict[str, Any]:
    """The ``--stats`` file's content: format stamp, label ids, per-case statistics, failures."""
    return {
        "format": STATS_FORMAT,
        "kidneyseg_version": package_version(),
        "labels": {"kidney": KIDNEY, "tumor": TUMOR},
        "cases": dict(sorted(stats.items())),
        "failed": dict(failed),
    }


def write_stats(
    path: str | Path, stats: Mapping[str, dict[str, Any]], failed: Mapping[str, str]
) -> None:
    """Write the ``--stats`` file atomically."""
    atomic_write_text(Path(path), json.dumps(stats_document(stats, failed), indent=2) + "\n")
