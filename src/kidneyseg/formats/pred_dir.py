"""Prediction outputs (``kidneyseg predict``): label maps and the ``--stats`` file.

* Folder mode writes ``PRED_DIR/<case_id><suffix>``: uint8 labels 0 background, 1 kidney,
  2 tumor, and 3 cyst when phase 2 predicts cysts (``data.tumor_classes = "tumor,cyst"``, the
  ``kits`` preset), in the input's exact geometry. The suffix follows ``--output-format``
  (`OUTPUT_FORMATS`, `label_suffix`): by default (``auto``) the input's own format (``.nrrd``
  in, ``.nrrd`` out; ``.nhdr``/``.mhd`` give ``.nrrd``/``.mha``), ``.nii.gz`` for DICOM input.
  One CT writes to the path given.
* ``--stats FILE`` writes one JSON object (`stats_document`, format version 2): the model that
  predicted (`provenance`) and per case the measurements of `kidneyseg.stats.label_statistics`:
  ``kidneys.{right,left}`` and ``total`` (``volume_ml`` = label 1, ``volume_with_masses_ml`` =
  labels 1-3, ``tumor_volume_ml``, ``cyst_volume_ml``, ``tumor_count``), ``tumors`` (largest
  first: ``number``, ``volume_ml``, ``max_diameter_mm``, ``axial_diameter_mm``, ``centroid_mm``
  (LPS x, y, z), ``side``, ``hu_mean``, ``hu_std`` (null without the CT), ``voxels``),
  ``voxels`` (count per label), ``sides`` (the midline rule and its LPS x), ``coordinates``.
* Each label file names its model in its header description (`header_description`:
  ``kidneyseg <version> model <model id> <device> <precision>``, plus `` onnx`` when ONNX
  Runtime ran it; NIfTI ``descrip``). The provenance also says ``backend`` (torch or onnx).
* DICOM input: ``<name>.seg.dcm`` (`seg_path`), a DICOM Segmentation (`kidneyseg.dicom_seg`),
  unless ``--output-format`` names a label-file format (`writes_seg`).
* ``--save-probabilities``: ``<name>_kidney_prob.nii.gz`` and ``<name>_tumor_prob.nii.gz``,
  and ``<name>_cyst_prob.nii.gz`` when phase 2 predicts cysts (`probability_path`; one file
  per network output) beside the label file, in its geometry: uint8, value =
  ``round(probability x 255)`` (`PROBABILITY_SCALE`; divide by 255 to get it back). Phase 1's
  probability is 0 where it did not run (fast mode: outside the kidney boxes); phase 2's is 0
  outside the region it ran on (slices without kidney, voxels outside the kidney region), and so
  is the cyst probability. A voxel is a mass where max(tumor, cyst) > the threshold, a tumor
  where tumor >= cyst. Same header description as the label file.

Example:
    >>> output_path("pred", "case_00001").as_posix()
    'pred/case_00001.nii.gz'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kidneyseg.filetypes import SAME_FORMAT_SUFFIX, image_suffix
from kidneyseg.types import CYST, KIDNEY, TUMOR
from kidneyseg.utils import atomic_write_text, package_version

#: Suffix of NIfTI label maps (DICOM input; ``--output-format nifti``).
OUTPUT_SUFFIX = ".nii.gz"
#: ``--output-format``: ``auto`` (the input's own format; DICOM: NIfTI + DICOM SEG), one
#: label-file format (no SEG), the SEG only (``dicom-seg``) or NIfTI + SEG (``both``).
OUTPUT_FORMATS = ("auto", "nifti", "nrrd", "mha", "dicom-seg", "both")
#: The label-file suffix of each format word but ``auto`` (``dicom-seg``: where the SEG's name
#: comes from, `seg_path`).
FORMAT_SUFFIXES = {
    "nifti": OUTPUT_SUFFIX,
    "nrrd": ".nrrd",
    "mha": ".mha",
    "dicom-seg": OUTPUT_SUFFIX,
    "both": OUTPUT_SUFFIX,
}
STATS_FORMAT = "kidneyseg-stats"
STATS_FORMAT_VERSION = 2
#: Suffix of the DICOM Segmentation written beside a label file (``ct.nii.gz`` -> ``ct.seg.dcm``).
SEG_SUFFIX = ".seg.dcm"
#: Probability files hold uint8 ``round(p * PROBABILITY_SCALE)``.
PROBABILITY_SCALE = 255
#: ``<name>_<output>_prob.nii.gz`` (always NIfTI, whatever the label file's format).
PROBABILITY_SUFFIX = "_prob.nii.gz"
#: The outputs that can have a probability file: phase 1, phase 2's tumor and cyst.
PROBABILITY_OUTPUTS = ("kidney", "tumor", "cyst")


def output_path(pred_dir: str | Path, case_id: str, suffix: str = OUTPUT_SUFFIX) -> Path:
    """Where folder mode writes a case's label map (``suffix``: `label_suffix`)."""
    return Path(pred_dir) / f"{case_id}{suffix}"


def label_suffix(output_format: str | None, source: str | Path) -> str:
    """The label file's suffix in folder mode for a case read from ``source``.

    ``auto`` (or None) keeps the input's format; a DICOM file or folder gives ``.nii.gz``.

    Example:
        >>> label_suffix("auto", "in/a.nhdr"), label_suffix(None, "in/p1")
        ('.nrrd', '.nii.gz')
        >>> label_suffix("mha", "in/a.nii")
        '.mha'
    """
    if output_format in FORMAT_SUFFIXES:
        return FORMAT_SUFFIXES[output_format]
    suffix = image_suffix(source)
    return SAME_FORMAT_SUFFIX[suffix] if suffix else OUTPUT_SUFFIX


def format_of(label_path: str | Path) -> str | None:
    """The format word (``nifti``, ``nrrd``, ``mha``) of a label file's name, or None.

    Example:
        >>> format_of("out/labels.nii"), format_of("out/labels.png")
        ('nifti', None)
    """
    suffix = image_suffix(label_path)
    written = SAME_FORMAT_SUFFIX.get(suffix or "")
    return {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".mha": "mha"}.get(written or "")


def writes_seg(output_format: str | None, dicom_input: bool) -> bool:
    """Whether a DICOM SEG goes beside the label file (`seg_path`).

    Example:
        >>> writes_seg("auto", True), writes_seg("nifti", True), writes_seg(None, False)
        (True, False, False)
    """
    fmt = output_format or "auto"
    return fmt in ("dicom-seg", "both") or (fmt == "auto" and dicom_input)


def _stem(label_path: str | Path) -> Path:
    p = Path(label_path)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.dcm", ".dcm"):
        if p.name.lower().endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p.with_name(p.stem)


def seg_path(label_path: str | Path) -> Path:
    """Where the DICOM SEG of a label file goes.

    Example:
        >>> seg_path("out/ct.nii.gz").as_posix()
        'out/ct.seg.dcm'
    """
    stem = _stem(label_path)
    return stem.with_name(stem.name + SEG_SUFFIX)


def probability_path(label_path: str | Path, output: str) -> Path:
    """Where ``--save-probabilities`` writes an output's probability map (``output``:
    ``kidney``, ``tumor`` or ``cyst``).

    Example:
        >>> probability_path("out/ct.nii.gz", "tumor").as_posix()
        'out/ct_tumor_prob.nii.gz'
    """
    stem = _stem(label_path)
    return stem.with_name(f"{stem.name}_{output}{PROBABILITY_SUFFIX}")


def probability_owner(path: str | Path) -> Path | None:
    """The label file a probability file (`probability_path`) belongs to, or None when the
    name is not one (a reader of a prediction folder skips a file whose owner is there).

    Example:
        >>> probability_owner("pred/case_00001_cyst_prob.nii.gz").as_posix()
        'pred/case_00001.nii.gz'
        >>> probability_owner("pred/case_00001.nii.gz") is None
        True
    """
    p = Path(path)
    for output in PROBABILITY_OUTPUTS:
        suffix = f"_{output}{PROBABILITY_SUFFIX}"
        if p.name.endswith(suffix) and len(p.name) > len(suffix):
            return p.with_name(p.name[: -len(suffix)] + OUTPUT_SUFFIX)
    return None


def provenance(model_id: str, model: str, device: str, precision: str) -> dict[str, str]:
    """What every prediction output says about the model that made it.

    Example:
        >>> provenance("3f2a", "runs/paper", "cpu", "fp32")["software"]
        'kidneyseg'
    """
    return {
        "software": "kidneyseg",
        "kidneyseg_version": package_version(),
        "model_id": model_id,
        "model": str(model),
        "device": device,
        "precision": precision,
    }


def header_description(prov: Mapping[str, str]) -> str:
    """The label file's header description (NIfTI ``descrip``, 80 characters at most); ends
    in ``onnx`` when ONNX Runtime ran the networks (provenance ``backend``).

    Example:
        >>> header_description(provenance("0123456789abcdef", "run", "cuda:0", "bf16"))
        'kidneyseg 0.1.0 model 0123456789abcdef cuda:0 bf16'
    """
    onnx = " onnx" if prov.get("backend") == "onnx" else ""
    return (
        f"kidneyseg {prov.get('kidneyseg_version', '')} model {prov.get('model_id', '')} "
        f"{prov.get('device', '')} {prov.get('precision', '')}{onnx}"
    )[:80]


def stats_document(
    stats: Mapping[str, dict[str, Any]],
    failed: Mapping[str, str],
    prov: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``--stats`` file's content: format stamp, model, label ids, per-case statistics,
    failures."""
    return {
        "format": STATS_FORMAT,
        "format_version": STATS_FORMAT_VERSION,
        "kidneyseg_version": package_version(),
        "model": dict(prov or {}),
        "labels": {"kidney": KIDNEY, "tumor": TUMOR, "cyst": CYST},
        "cases": dict(sorted(stats.items())),
        "failed": dict(failed),
    }


def write_stats(
    path: str | Path,
    stats: Mapping[str, dict[str, Any]],
    failed: Mapping[str, str],
    prov: Mapping[str, str] | None = None,
) -> None:
    """Write the ``--stats`` file atomically."""
    doc = stats_document(stats, failed, prov)
    atomic_write_text(Path(path), json.dumps(doc, indent=2) + "\n")
