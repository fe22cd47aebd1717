"""Metric maths: Dice, surface Dice, the KiTS21/KiTS23 case metrics and the paper's Dice view.

Pure functions on arrays; reading files and writing tables is `kidneyseg.evaluation`'s job.

* `dice` and `surface_dice`: one binary mask pair.
* `kits_metrics`: what the KiTS21/KiTS23 leaderboards score per case: for each hierarchical
  class of `kidneyseg.types.KITS_CLASSES` the 3D Dice and the surface Dice at the official
  tolerance (`KITS_SD_TOLERANCES_MM`), on the whole volume with its voxel spacing.
* `paper_metrics`: the paper's view (section 5.1): Dice of the kidney region and of the tumor,
  per case in 3D and as the mean of per-axial-slice Dice (not comparable with a per-case Dice).
* `region_volumes_ml`: kidney and tumor volumes of the reference and the prediction.
* `summary_stats`: mean, median, sample standard deviation and count over cases; the one rule
  every summary in the package uses.

Example:
    >>> gt = np.zeros((4, 6, 6), np.uint8); gt[1:3, 1:5, 1:5] = 1; gt[1:3, 2:4, 2:4] = 2
    >>> m = kits_metrics(gt, gt, spacing=(3.0, 0.8, 0.8))
    >>> m["dice_tumor"], m["sd_kidney_and_mass"]
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final, TypedDict

import numpy as np
import numpy.typing as npt
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances

from kidneyseg.types import KITS_CLASSES, PHASE_TARGETS, TUMOR

#: Surface-Dice tolerances (mm) of the KiTS21/KiTS23 evaluation, ``HEC_SD_TOLERANCES_MM`` in
#: neheller/kits23 ``kits23/configuration/labels.py`` (also the final KiTS21 values).
KITS_SD_TOLERANCES_MM: Final[dict[str, float]] = {
    "kidney_and_mass": 1.0330772532390826,
    "mass": 1.1328796488598762,
    "tumor": 1.1498198361434828,
}

#: The paper's two regions (section 5.1): kidney = labels 1, 2, 3 (the kidney *with* its masses,
#: what phase 1 segments), tumor = label 2.
PAPER_REGIONS: Final[dict[str, tuple[int, ...]]] = {
    "kidney": PHASE_TARGETS["kidney"],
    "tumor": (TUMOR,),
}

Mask = npt.NDArray[np.bool_]


class SummaryStats(TypedDict):
    """Statistics of one metric over cases (a ``summary.json`` ``metrics`` entry)."""

    mean: float | None
    median: float | None
    std: float | None
    n: int


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

    Args:
        pred: predicted mask, any shape.
        gt: reference mask, same shape.

    Example:
        >>> dice([1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0])
        0.6666666666666666
    """
    p, g = _check_pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(p & g) / total)


def surface_dice(
    pred: npt.ArrayLike, gt: npt.ArrayLike, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Surface Dice at a tolerance: the share of both surfaces within ``tolerance_mm`` of the other.

    The definition of Nikolov et al. (2021, arXiv:1809.04430), computed by DeepMind's
    ``surface-distance`` package (``compute_surface_distances`` +
    ``compute_surface_dice_at_tolerance``), the code the KiTS21/KiTS23 evaluation calls:
    surfaces are marching-cubes surfels on the grid of voxel corners weighted by their area in
    mm^2, each surfel's distance to the other surface comes from a Euclidean distance transform
    with ``sampling=spacing``, and the score is (area of gt surfels within tolerance + area of
    pred surfels within tolerance) / (total area of both). The package crops both masks to
    their joint bounding box first.

    This is a thin wrapper that adds what the package lacks: both masks empty gives 1.0 and
    exactly one empty gives 0.0, as KiTS scores them (the package returns NaN for the first,
    and with NumPy >= 2 fails on the second, on its removed ``np.Inf``); it also checks the
    shapes and the spacing. Only 3D masks are accepted (the package would also take 2D, where
    it measures contour lengths; the KiTS metric is 3D).

    Args:
        pred: predicted 3D mask (non-zero = inside).
        gt: reference 3D mask, same shape.
        spacing: voxel size in mm per array axis, in the arrays' axis order.
        tolerance_mm: the largest distance (mm) still counted as agreeing.

    Raises:
        ValueError: shapes differ, the masks are not 3D, or a spacing is not positive.

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
    distances = compute_surface_distances(g, p, sp)
    return float(compute_surface_dice_at_tolerance(distances, tolerance_mm))


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

    Regions are `PAPER_REGIONS`. ``paper_case_dice_<region>`` is the 3D Dice of the case
    (`dice`). ``paper_slice_dice_<region>`` is the mean of the 2D Dice over the axial slices
    that hold the region in the reference (NaN when none does): a slice-weighted number (small,
    hard slices weigh as much as large, easy ones), not comparable with a per-case Dice.

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
    for name, labels in PAPER_REGIONS.items():
        p, g = np.isin(pred, labels), np.isin(gt, labels)
        out[f"paper_case_dice_{name}"] = dice(p, g)
        inter = np.count_nonzero(p & g, axis=in_plane)
        n_pred, n_gt = np.count_nonzero(p, axis=in_plane), np.count_nonzero(g, axis=in_plane)
        has = n_gt > 0
        out[f"paper_slice_dice_{name}"] = (
            float(np.mean(2.0 * inter[has] / (n_pred[has] + n_gt[has]))) if has.any() else math.nan
        )
    return out


def region_volumes_ml(
    pred_labels: npt.ArrayLike, gt_labels: npt.ArrayLike, spacing: Sequence[float]
) -> dict[str, float]:
    """Volumes (mL: voxel count x voxel volume) of the `PAPER_REGIONS` in both label maps.

    Args:
        pred_labels: predicted label map.
        gt_labels: reference label map (shapes need not match).
        spacing: voxel size in mm per array axis.

    Returns:
        ``{"volume_ml_kidney_gt", "volume_ml_kidney_pred", "volume_ml_tumor_gt",
        "volume_ml_tumor_pred"}``.

    Example:
        >>> gt = np.zeros((2, 10, 10), np.uint8); gt[0] = 1; gt[0, :5] = 2
        >>> region_volumes_ml(gt, gt, (2.0, 1.0, 1.0))["volume_ml_tumor_gt"]
        0.1
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {}
    for name, labels in PAPER_REGIONS.items():
        out[f"volume_ml_{name}_gt"] = float(np.count_nonzero(np.isin(gt, labels)) * voxel_ml)
        out[f"volume_ml_{name}_pred"] = float(np.count_nonzero(np.isin(pred, labels)) * voxel_ml)
    return out


def summary_stats(values: Iterable[float | None]) -> SummaryStats:
    """Mean, median, sample standard deviation and count of the defined values.

    ``None`` and non-finite values (a metric undefined for a case) are left out. ``std`` is the
    sample standard deviation over cases (``ddof=1``, Bessel's correction: the cases are a
    sample of the population the model will meet); it is ``None`` below two values, and mean
    and median are ``None`` when there is none.

    Example:
        >>> summary_stats([1.0, 3.0, float("nan"), None])  # std = sqrt(((1-2)^2 + (3-2)^2) / 1)
        {'mean': 2.0, 'median': 2.0, 'std': 1.4142135623730951, 'n': 2}
    """
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else None,
        "median": float(np.median(finite)) if n else None,
        "std": float(finite.std(ddof=1)) if n > 1 else None,
        "n": n,
    }
