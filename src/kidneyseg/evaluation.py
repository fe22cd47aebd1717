"""Evaluation: the official KiTS21/KiTS23 metrics and the paper's own per-slice Dice view.

Two views of the same predictions, kept apart on purpose:

* **KiTS view** (what the KiTS21/KiTS23 leaderboards report, `kits_metrics`): for each
  hierarchical evaluation class (`kidneyseg.types.KITS_CLASSES`: ``kidney_and_mass`` = labels
  1, 2, 3; ``mass`` = 2, 3; ``tumor`` = 2) the 3D Dice and the surface Dice at the official
  tolerance (`KITS_SD_TOLERANCES_MM`), computed on the whole volume with its voxel spacing.
  The leaderboard score is the mean over cases, then over the three classes.
* **Paper view** (`paper_metrics`, paper section 5.1): Dice of the kidney region (labels 1, 2, 3)
  and of the tumor (label 2), once per case in 3D (``paper_case_dice_*``) and once as the
  mean of per-axial-slice Dice over the slices that hold the structure in the reference
  (``paper_slice_dice_*``). A per-slice mean is *not* comparable with a per-case Dice (it weighs
  small, hard slices as much as large, easy ones), so the columns say which one they are.

Files written by `evaluate` into ``OUT_DIR``:

``per_case.csv``
    One row per case, columns `PER_CASE_COLUMNS`: ``case``; ``dice_<class>`` and ``sd_<class>``
    for the three KiTS classes; ``paper_case_dice_kidney``, ``paper_slice_dice_kidney``,
    ``paper_case_dice_tumor``, ``paper_slice_dice_tumor``; ``volume_ml_{kidney,tumor}_{gt,pred}``
    (voxel count x voxel volume; kidney = labels 1, 2, 3, tumor = label 2). All but ``case`` are
    numbers; an undefined value (a per-slice Dice when the reference has no slice with that
    structure) is an empty cell.
``summary.json``
    ``{"format": "kidneyseg-eval", "format_version": 1, "kidneyseg_version", "pred_dir",
    "gt_dir" (absolute), "n_cases", "tolerances_mm", "kits_mean_dice", "kits_mean_sd",
    "metrics": {column: {"mean", "median", "std", "n"}}}``; ``std`` is the sample standard
    deviation (``null`` below two values), ``n`` counts the defined values.
``summary.md``
    `format_table` of the summary.

Example:
    >>> import numpy as np
    >>> gt = np.zeros((4, 6, 6), np.uint8); gt[1:3, 1:5, 1:5] = 1; gt[1:3, 2:4, 2:4] = 2
    >>> m = kits_metrics(gt, gt, spacing=(3.0, 0.8, 0.8))
    >>> m["dice_tumor"], m["sd_kidney_and_mass"]
    (1.0, 1.0)
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kidneyseg.errors import KidneysegError
from kidneyseg.types import KITS_CLASSES, PHASE_TARGETS, TUMOR

#: Surface-Dice tolerances (mm) of the KiTS21/KiTS23 evaluation, ``HEC_SD_TOLERANCES_MM`` in
#: neheller/kits23 ``kits23/configuration/labels.py`` (also the final KiTS21 values).
KITS_SD_TOLERANCES_MM: Final[dict[str, float]] = {
    "kidney_and_mass": 1.0330772532390826,
    "mass": 1.1328796488598762,
    "tumor": 1.1498198361434828,
}

#: Reference label files looked up for case ``<case>`` under GT_DIR, in order of preference.
REFERENCE_PATTERNS: Final = (
    "{case}/aggregated_MAJ_seg.nii.gz",
    "{case}/segmentation.nii.gz",
    "{case}.nii.gz",
)

KITS_COLUMNS: Final = tuple(
    f"{metric}_{name}" for name in KITS_CLASSES for metric in ("dice", "sd")
)
PAPER_COLUMNS: Final = (
    "paper_case_dice_kidney",
    "paper_slice_dice_kidney",
    "paper_case_dice_tumor",
    "paper_slice_dice_tumor",
)
VOLUME_COLUMNS: Final = (
    "volume_ml_kidney_gt",
    "volume_ml_kidney_pred",
    "volume_ml_tumor_gt",
    "volume_ml_tumor_pred",
)
#: Columns of ``per_case.csv``, in order.
PER_CASE_COLUMNS: Final = ("case", *KITS_COLUMNS, *PAPER_COLUMNS, *VOLUME_COLUMNS)
METRIC_COLUMNS: Final = (*KITS_COLUMNS, *PAPER_COLUMNS, *VOLUME_COLUMNS)

_PAPER_REGIONS: Final = {"kidney": PHASE_TARGETS["kidney"], "tumor": (TUMOR,)}

Mask = npt.NDArray[np.bool_]

# Surface elements of a 2x2x2 cube of voxel centres, by its occupancy code (bit 7 - (4a+2b+c)
# for the corner at offset (a, b, c)): the marching-cubes triangles' area vectors in units of
# 1/8 of a voxel face, absolute values only (the area needs no sign). This is the data of
# ``_NEIGHBOUR_CODE_TO_NORMALS`` in deepmind/surface-distance ``lookup_tables.py``
# (Apache-2.0), re-encoded: one token per code 0..127, three digits per triangle, '-' = none.
# Code c >= 128 is the complement of 255 - c, which has the same surface.
_SURFEL_TRIANGLES: Final = (
    "- 111 111 220220 111 202202 111111 111222400 111 111111 202202 111222400 220220 "
    "111222400 111222400 400400 111 022022 111111 040111222 111111 004111222 111111111 "
    "111111222222 111111 022022111 111202202 022111202333 111220220 022111220333 111111222400 "
    "111222400 111 111111 022022 040111222 111111 111202202 022022111 022111202333 111111 "
    "111111111 004111222 111111222222 111220220 111111222400 022111220333 111222400 220220 "
    "040111222 040111222 040040 111220220 111202220333 040111111222 040111222 111220220 "
    "040111111222 111202220333 040111222 220220220220 111220220 111220220 220220 111 111111 "
    "111111 111220220 022022 004111222 022022111 022111220333 111111 111111111 111202202 "
    "111111222400 040111222 111111222222 022111202333 111222400 202202 004111222 111202202 "
    "111202220333 004111222 004004 004111111222 004111222 111202202 004111111222 202202202202 "
    "111202202 111202220333 004111222 111202202 202202 111111 111111111 022022111 "
    "040111111222 022022111 004111111222 022022022022 022022111 111111111 111111111111 "
    "004111111222 111111111 040111111222 111111111 022022111 111111 111222400 111111222222 "
    "022111202333 040111222 022111220333 004111222 022022111 022022 111111222400 111111111 "
    "111202202 111111 111220220 111111 111111 111 "
)


def _decode_triangles() -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """(code of each triangle, its absolute area vector in voxel-face units) for all 256 codes."""
    tokens = "".join(_SURFEL_TRIANGLES).split()
    if len(tokens) != 128:  # pragma: no cover - guards the table above against edits
        raise AssertionError(f"surfel table has {len(tokens)} entries, expected 128")
    codes: list[int] = []
    normals: list[list[int]] = []
    for code in range(256):
        token = tokens[min(code, 255 - code)]
        if token == "-":
            continue
        for start in range(0, len(token), 3):
            codes.append(code)
            normals.append([int(digit) for digit in token[start : start + 3]])
    return np.asarray(codes, dtype=np.intp), np.asarray(normals, dtype=np.float64) / 8.0


_TRIANGLE_CODES, _TRIANGLE_NORMALS = _decode_triangles()


def surfel_area_table(spacing: Sequence[float]) -> npt.NDArray[np.float64]:
    """Surface area (mm^2) inside a 2x2x2 cube of voxel centres, for each of its 256 codes.

    The code has bit ``7 - (4a + 2b + c)`` set when the voxel at offset ``(a, b, c)`` is inside.
    Each marching-cubes triangle's area vector ``n`` (unit voxels) becomes
    ``(n0 s1 s2, n1 s0 s2, n2 s0 s1)`` for spacing ``s``; the area is the sum of their norms
    (deepmind/surface-distance, ``create_table_neighbour_code_to_surface_area``).

    Example:
        >>> t = surfel_area_table((2.0, 1.0, 1.0))
        >>> float(t[0]), float(t[0b00001111])  # nothing inside; a flat face normal to axis 0
        (0.0, 1.0)
    """
    s0, s1, s2 = (float(s) for s in spacing)
    scaled = _TRIANGLE_NORMALS * np.array([s1 * s2, s0 * s2, s0 * s1])
    areas = np.bincount(_TRIANGLE_CODES, weights=np.linalg.norm(scaled, axis=1), minlength=256)
    return np.asarray(areas, dtype=np.float64)


def _check_pair(pred: npt.ArrayLike, gt: npt.ArrayLike) -> tuple[Mask, Mask]:
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    return p, g


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if ndim != 3 or len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"need 3D masks and three positive spacings; got {ndim}D, {spacing}")
    return values


def dice(pred: npt.ArrayLike, gt: npt.ArrayLike) -> float:
    """Dice coefficient ``2 |P & G| / (|P| + |G|)`` of two masks (non-zero = inside).

    Both empty gives 1.0, as the KiTS evaluation scores it (``compute_metrics_for_label`` in
    neheller/kits23 ``kits23/evaluation/metrics.py``); exactly one empty gives 0.0.

    Example:
        >>> dice([1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0])
        0.6666666666666666
    """
    p, g = _check_pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(p & g) / total)


def _bounding_box(mask: Mask) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _neighbour_codes(mask: Mask) -> npt.NDArray[np.uint8]:
    """Occupancy code of every 2x2x2 cube of voxel centres, i.e. at every voxel corner.

    The result has one more element per axis than ``mask``: one empty voxel is assumed on
    every side, so the corners on the outer faces of the mask are included.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    n0, n1, n2 = (s + 1 for s in mask.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                codes |= padded[a : a + n0, b : b + n1, c : c + n2] << (7 - (4 * a + 2 * b + c))
    return codes


def _surfels(
    pred: Mask, gt: Mask, spacing: tuple[float, ...]
) -> tuple[npt.NDArray[np.float64], ...]:
    """Areas of the surfels of gt and pred and their distances (mm) to the other surface."""
    from scipy import ndimage

    # Crop to the joint bounding box: the distances between the two surfaces do not change.
    box = _bounding_box(pred | gt)
    table = surfel_area_table(spacing)
    out = []
    codes = [_neighbour_codes(gt[box]), _neighbour_codes(pred[box])]
    borders = [(c != 0) & (c != 255) for c in codes]
    for own, other in ((0, 1), (1, 0)):
        distance = ndimage.distance_transform_edt(~borders[other], sampling=spacing)
        out.append(table[codes[own][borders[own]]])
        out.append(distance[borders[own]])
    return tuple(out)


def surface_dice(
    pred: npt.ArrayLike, gt: npt.ArrayLike, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Surface Dice at a tolerance: the share of both surfaces within ``tolerance_mm`` of the other.

    The definition of Nikolov et al. (2021, arXiv:1809.04430) as implemented by
    deepmind/surface-distance (``compute_surface_distances`` +
    ``compute_surface_dice_at_tolerance``) and used by KiTS21/KiTS23: surfaces are
    marching-cubes surfels on the grid of voxel corners weighted by their area in mm^2; each
    surfel's distance to the other surface comes from a Euclidean distance transform with
    ``sampling=spacing``; the score is (area of gt surfels within tolerance + area of pred
    surfels within tolerance) / (total area of both). Both masks empty gives 1.0, exactly one
    empty gives 0.0 (as KiTS scores it).

    Args:
        pred: predicted 3D mask (non-zero = inside).
        gt: reference 3D mask, same shape.
        spacing: voxel size in mm per array axis, in the arrays' axis order.
        tolerance_mm: the largest distance (mm) still counted as agreeing.

    Example:
        >>> a = np.zeros((5, 5, 5), bool); a[2, 2, 2] = True
        >>> b = np.roll(a, 1, axis=0)  # one voxel further along axis 0
        >>> surface_dice(a, b, (1.0, 1.0, 1.0), 1.03), surface_dice(a, b, (2.0, 1.0, 1.0), 1.03)
        (1.0, 0.5)
    """
    p, g = _check_pair(pred, gt)
    sp = _check_spacing(spacing, p.ndim)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 1.0
    if not p_any or not g_any:
        return 0.0
    areas_gt, dist_gt, areas_pred, dist_pred = _surfels(p, g, sp)
    within = areas_gt[dist_gt <= tolerance_mm].sum() + areas_pred[dist_pred <= tolerance_mm].sum()
    return float(within / (areas_gt.sum() + areas_pred.sum()))


def kits_metrics(
    pred_labels: npt.ArrayLike, gt_labels: npt.ArrayLike, spacing: Sequence[float]
) -> dict[str, float]:
    """The KiTS21/KiTS23 case metrics: Dice and surface Dice of the three evaluation classes.

    Classes are `kidneyseg.types.KITS_CLASSES` (``kidney_and_mass`` = labels 1, 2, 3, ``mass``
    = 2, 3, ``tumor`` = 2), tolerances `KITS_SD_TOLERANCES_MM` (``compute_metrics_for_case`` in
    neheller/kits23 ``kits23/evaluation/metrics.py``).

    Args:
        pred_labels: predicted label map (0 background, 1 kidney, 2 tumor, 3 cyst).
        gt_labels: reference label map, same shape.
        spacing: voxel size in mm per array axis (``Volume.spacing`` for ``Volume.array``).

    Returns:
        ``{"dice_kidney_and_mass", "sd_kidney_and_mass", "dice_mass", "sd_mass",
        "dice_tumor", "sd_tumor"}``.

    Example:
        >>> gt = np.zeros((3, 4, 4), np.uint8); gt[1, 1:3, 1:3] = 2
        >>> kits_metrics(np.zeros_like(gt), gt, (5.0, 0.8, 0.8))["sd_tumor"]
        0.0
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    out: dict[str, float] = {}
    for name, labels in KITS_CLASSES.items():
        p, g = np.isin(pred, labels), np.isin(gt, labels)
        out[f"dice_{name}"] = dice(p, g)
        out[f"sd_{name}"] = surface_dice(p, g, spacing, KITS_SD_TOLERANCES_MM[name])
    return out


def paper_metrics(
    pred_labels: npt.ArrayLike, gt_labels: npt.ArrayLike, axial_axis: int = 0
) -> dict[str, float]:
    """The paper's Dice view (section 5.1): per case in 3D and per axial slice.

    Regions: kidney = labels 1, 2, 3 (the kidney *with* its masses, what phase 1 segments),
    tumor = label 2. ``paper_case_dice_<region>`` is the 3D Dice of the case (`dice`).
    ``paper_slice_dice_<region>`` is the mean of the 2D Dice over the axial slices that hold
    the region in the reference (NaN when none does): a slice-weighted number, not comparable
    with a per-case Dice.

    Args:
        pred_labels: predicted label map.
        gt_labels: reference label map, same shape.
        axial_axis: the array axis that indexes axial slices (0 for ``Volume.to_canonical()``).

    Example:
        >>> gt = np.zeros((3, 4, 4), np.uint8); gt[0:2, 1:3, 1:3] = 1
        >>> pred = gt.copy(); pred[1] = 0  # second kidney slice missed
        >>> m = paper_metrics(pred, gt)
        >>> round(m["paper_case_dice_kidney"], 3), m["paper_slice_dice_kidney"]
        (0.667, 0.5)
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    in_plane = tuple(a for a in range(pred.ndim) if a != axial_axis)
    out: dict[str, float] = {}
    for name, labels in _PAPER_REGIONS.items():
        p, g = np.isin(pred, labels), np.isin(gt, labels)
        out[f"paper_case_dice_{name}"] = dice(p, g)
        inter = np.count_nonzero(p & g, axis=in_plane)
        n_pred, n_gt = np.count_nonzero(p, axis=in_plane), np.count_nonzero(g, axis=in_plane)
        has = n_gt > 0
        out[f"paper_slice_dice_{name}"] = (
            float(np.mean(2.0 * inter[has] / (n_pred[has] + n_gt[has]))) if has.any() else math.nan
        )
    return out


def _volumes_ml(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {}
    for name, labels in _PAPER_REGIONS.items():
        out[f"volume_ml_{name}_gt"] = float(np.count_nonzero(np.isin(gt, labels)) * voxel_ml)
        out[f"volume_ml_{name}_pred"] = float(np.count_nonzero(np.isin(pred, labels)) * voxel_ml)
    return out


def match_cases(pred_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair each ``PRED_DIR/<case>.nii.gz`` with its reference label file under ``GT_DIR``.

    The reference is the first of `REFERENCE_PATTERNS` that exists.

    Raises:
        KidneysegError: a folder is missing, there is no prediction, or a case has no reference.

    Example:
        >>> match_cases("preds", "kits23/dataset")  # doctest: +SKIP
        [('case_00061', PosixPath('preds/case_00061.nii.gz'),
          PosixPath('kits23/dataset/case_00061/segmentation.nii.gz'))]
    """
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    if not pred_root.is_dir():
        raise KidneysegError("prediction folder not found", path=pred_root)
    if not gt_root.is_dir():
        raise KidneysegError("reference (ground truth) folder not found", path=gt_root)
    # Names starting with "." are temporary files of an unfinished atomic write.
    preds = sorted(
        p
        for p in pred_root.iterdir()
        if p.is_file() and p.name.endswith(".nii.gz") and not p.name.startswith(".")
    )
    if not preds:
        raise KidneysegError(
            "no predictions (<case>.nii.gz) in the prediction folder; run `kidneyseg predict`",
            path=pred_root,
        )
    pairs = []
    for pred in preds:
        case = pred.name[: -len(".nii.gz")]
        candidates = [gt_root / pattern.format(case=case) for pattern in REFERENCE_PATTERNS]
        gt = next((c for c in candidates if c.is_file()), None)
        if gt is None:
            looked = ", ".join(str(c) for c in candidates)
            raise KidneysegError(
                f"no reference segmentation for this case (looked for {looked})", path=pred
            )
        pairs.append((case, pred, gt))
    return pairs


def evaluate_case(case: str, pred_path: str | Path, gt_path: str | Path) -> dict[str, Any]:
    """Read one prediction and its reference and compute one row of ``per_case.csv``.

    Raises:
        KidneysegError: unreadable file, labels outside 0-3, or the prediction is not on the
            reference's grid (shape, spacing, origin or direction).

    Example:
        >>> row = evaluate_case("case_00061", "preds/case_00061.nii.gz",
        ...                     "kits23/case_00061/segmentation.nii.gz")  # doctest: +SKIP
        >>> row["dice_tumor"]  # doctest: +SKIP
        0.87
    """
    from kidneyseg.io import check_same_geometry, read_labels

    gt = read_labels(gt_path)
    pred = read_labels(pred_path)
    try:
        check_same_geometry(gt, pred, pred_path)
    except KidneysegError as exc:
        raise KidneysegError(
            f"{exc.message} (prediction vs reference {gt_path})", path=pred_path
        ) from None
    row: dict[str, Any] = {"case": case}
    # Volume.spacing is in Volume.array's axis order, which is all the KiTS metrics need (they
    # are invariant to permuting axes together with the spacing).
    row.update(kits_metrics(pred.array, gt.array, gt.spacing))
    row.update(paper_metrics(pred.to_canonical(), gt.to_canonical(), axial_axis=0))
    row.update(_volumes_ml(pred.array, gt.array, gt.spacing))
    return row


def _run_cases(jobs: list[tuple[str, Path, Path]], workers: int) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rows = []
    with tqdm(
        total=len(jobs),
        desc="evaluate",
        unit="case",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    ) as progress:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                rows.append(evaluate_case(*job))
                progress.update()
        else:
            import multiprocessing

            # spawn: a fresh interpreter, safe even when the caller has torch/OpenMP threads.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                pending: set[Future[dict[str, Any]]] = {
                    pool.submit(evaluate_case, *job) for job in jobs
                }
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None:
                            pool.shutdown(wait=True, cancel_futures=True)
                            raise future.exception()  # type: ignore[misc]
                        rows.append(future.result())
                        progress.update()
    return sorted(rows, key=lambda row: row["case"])


def _stats(values: Sequence[float]) -> dict[str, Any]:
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else None,
        "median": float(np.median(finite)) if n else None,
        "std": float(finite.std(ddof=1)) if n > 1 else None,
        "n": n,
    }


def summarize(
    rows: Sequence[dict[str, Any]], pred_dir: str | Path, gt_dir: str | Path
) -> dict[str, Any]:
    """The ``summary.json`` content for per-case rows (see the module doc for the keys).

    ``kits_mean_dice`` / ``kits_mean_sd`` average the three classes' mean over cases, as the
    KiTS leaderboard does.

    Example:
        >>> rows = [{c: 1.0 for c in METRIC_COLUMNS}]
        >>> summarize(rows, "preds", "gt")["kits_mean_dice"]
        1.0
    """
    from kidneyseg.utils import package_version

    metrics = {col: _stats([row[col] for row in rows]) for col in METRIC_COLUMNS}

    def class_mean(metric: str) -> float | None:
        means = [metrics[f"{metric}_{name}"]["mean"] for name in KITS_CLASSES]
        return None if any(m is None for m in means) else float(np.mean(means))

    return {
        "format": "kidneyseg-eval",
        "format_version": 1,
        "kidneyseg_version": package_version(),
        "pred_dir": str(Path(pred_dir).resolve()),
        "gt_dir": str(Path(gt_dir).resolve()),
        "n_cases": len(rows),
        "tolerances_mm": dict(KITS_SD_TOLERANCES_MM),
        "kits_mean_dice": class_mean("dice"),
        "kits_mean_sd": class_mean("sd"),
        "metrics": metrics,
    }


_TABLE_NAMES: Final = {
    "dice_kidney_and_mass": "KiTS Dice, kidney + masses",
    "sd_kidney_and_mass": "KiTS surface Dice, kidney + masses",
    "dice_mass": "KiTS Dice, masses (tumor + cyst)",
    "sd_mass": "KiTS surface Dice, masses (tumor + cyst)",
    "dice_tumor": "KiTS Dice, tumor",
    "sd_tumor": "KiTS surface Dice, tumor",
    "paper_case_dice_kidney": "paper Dice per case, kidney",
    "paper_slice_dice_kidney": "paper Dice per slice, kidney",
    "paper_case_dice_tumor": "paper Dice per case, tumor",
    "paper_slice_dice_tumor": "paper Dice per slice, tumor",
    "volume_ml_kidney_gt": "kidney volume, reference (mL)",
    "volume_ml_kidney_pred": "kidney volume, prediction (mL)",
    "volume_ml_tumor_gt": "tumor volume, reference (mL)",
    "volume_ml_tumor_pred": "tumor volume, prediction (mL)",
}


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table of a `summarize` result (what ``summary.md`` holds).

    Example:
        >>> rows = [{c: 0.5 for c in METRIC_COLUMNS}]
        >>> print(format_table(summarize(rows, "p", "g")).splitlines()[2])
        | KiTS Dice, kidney + masses | `dice_kidney_and_mass` | 0.5000 | 0.5000 | – | 1 |
    """
    lines = [
        "| metric | column | mean | median | std | n |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for column, stats in summary["metrics"].items():
        digits = 1 if column.startswith("volume_ml") else 4
        cells = [_fmt(stats[key], digits) for key in ("mean", "median", "std")]
        name = _TABLE_NAMES.get(column, column)
        lines.append(f"| {name} | `{column}` | {' | '.join(cells)} | {stats['n']} |")
    n = summary["n_cases"]
    for metric, label in (("dice", "Dice"), ("sd", "surface Dice")):
        value = _fmt(summary[f"kits_mean_{metric}"], 4)
        lines.append(
            f"| **KiTS mean {label}** (3 classes) | `kits_mean_{metric}` | {value} | | | {n} |"
        )
    tolerances = ", ".join(f"{k} {v:.3f} mm" for k, v in summary["tolerances_mm"].items())
    lines += [
        "",
        f"{n} case(s). KiTS metrics are per case in 3D (surface Dice tolerances: {tolerances}). "
        "Paper *per slice* Dice is the mean over the axial slices holding the structure in the "
        "reference (paper section 5.1); do not compare it with per-case Dice.",
        "",
        f"Predictions: `{summary['pred_dir']}`; reference: `{summary['gt_dir']}`.",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else format(value, ".10g")
    return str(value)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_CASE_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[col]) for col in PER_CASE_COLUMNS])
    return buffer.getvalue()


def evaluate(
    pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path, workers: int = 2
) -> dict[str, Any]:
    """Score every prediction in ``pred_dir`` against its reference in ``gt_dir``.

    Writes ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_dir`` (see the
    module doc), all or nothing: on any error nothing is written.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` label maps (what ``kidneyseg predict`` writes).
        gt_dir: references as ``<case>/aggregated_MAJ_seg.nii.gz``,
            ``<case>/segmentation.nii.gz`` (the KiTS layout) or ``<case>.nii.gz``.
        out_dir: output folder (created; existing files of these names are replaced).
        workers: processes computing cases in parallel.

    Returns:
        The summary (the content of ``summary.json``).

    Raises:
        KidneysegError: missing folder or reference, no prediction, a prediction not on its
            reference's grid, an unreadable file (the message names it).

    Example:
        >>> summary = evaluate("preds", "kits23/dataset", "eval")  # doctest: +SKIP
        >>> print(format_table(summary))  # doctest: +SKIP
    """
    if workers < 1:
        raise KidneysegError(f"workers must be at least 1 (got {workers})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KidneysegError("output path exists and is not a folder", path=out)
    rows = _run_cases(match_cases(pred_dir, gt_dir), workers)
    summary = summarize(rows, pred_dir, gt_dir)
    _write_outputs(out, rows, summary)
    return summary


def _write_outputs(out: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    import contextlib

    from kidneyseg.utils import atomic_path, check_writable_dir

    texts = {
        "per_case.csv": _csv_text(rows),
        "summary.json": json.dumps(summary, indent=2, allow_nan=False) + "\n",
        "summary.md": format_table(summary),
    }
    check_writable_dir(out)
    # Every file goes to a temporary name first; they are renamed together only once all are
    # written, so a failure leaves none of them behind.
    with contextlib.ExitStack() as stack:
        temporaries = {name: stack.enter_context(atomic_path(out / name)) for name in texts}
        for name, text in texts.items():
            temporaries[name].write_text(text, encoding="utf-8")
