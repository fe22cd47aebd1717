"""Postprocessing of the cascade's binary masks into one 3D label map (paper §4.3).

Pure array functions on canonical ``(z, y, x)`` arrays (any 3D array works: nothing here
depends on axis order except the spacing, which must follow the same order).

* `restrict_tumor_to_kidney`: tumor (and cyst) only inside the predicted kidney region
  (paper §4.3).
* `remove_small_components`: drop 3D connected components below a size.
* `assemble_labels`: the masks -> uint8 labels 0 background, 1 kidney, 2 tumor, 3 cyst (cyst
  only from a phase 2 that predicts it, ``data.tumor_classes = "tumor,cyst"``).
* `keep_largest_components`: only the N largest 3D components of a label map's foreground.
* `postprocess`: all of the above as a `PostprocessConfig` asks.

Example:
    >>> import numpy as np
    >>> kidney = np.zeros((4, 8, 8), bool); kidney[1:3, 2:6, 2:6] = True
    >>> tumor = np.zeros_like(kidney); tumor[1, 3, 3] = True; tumor[0, 0, 0] = True
    >>> labels = assemble_labels(kidney, restrict_tumor_to_kidney(kidney, tumor))
    >>> int((labels == 1).sum()), int((labels == 2).sum())
    (31, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from kidneyseg.config import PostprocessConfig
from kidneyseg.types import BACKGROUND, CYST, KIDNEY, TUMOR

BoolArray = npt.NDArray[np.bool_]

#: 26-connectivity: voxels touching by a face, edge or corner belong to one component, so a
#: structure that runs obliquely through thick slices is not cut into pieces and removed.
_STRUCTURE = ndimage.generate_binary_structure(3, 3)


def restrict_tumor_to_kidney(
    kidney_mask: npt.NDArray[Any], tumor_mask: npt.NDArray[Any]
) -> BoolArray:
    """Tumor (or cyst) voxels that lie inside the kidney region (paper §4.3).

    Phase 1 segments the kidney *with* its masses, so a true tumor or cyst always lies inside
    that region; a mass predicted outside it is a false positive.

    Example:
        >>> import numpy as np
        >>> restrict_tumor_to_kidney(np.array([1, 1, 0]), np.array([0, 1, 1])).tolist()
        [False, True, False]
    """
    if kidney_mask.shape != tumor_mask.shape:
        raise ValueError(f"mask shapes differ: {kidney_mask.shape} vs {tumor_mask.shape}")
    return np.logical_and(kidney_mask, tumor_mask)


def remove_small_components(mask: npt.NDArray[Any], min_voxels: int) -> BoolArray:
    """Remove 3D connected components (26-connectivity) with fewer than ``min_voxels`` voxels.

    Every component of at least ``min_voxels`` voxels is kept (not only the largest: a
    patient has two kidneys and may have several tumors). ``min_voxels <= 1`` keeps all.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((1, 1, 8), bool); m[0, 0, :3] = True; m[0, 0, 6] = True
        >>> remove_small_components(m, 2).astype(int).tolist()
        [[[1, 1, 1, 0, 0, 0, 0, 0]]]
    """
    mask = np.asarray(mask, dtype=bool)
    if min_voxels <= 1 or not mask.any():
        return mask.copy()
    # Label only the bounding box of the mask: predicted masks are small, volumes are not.
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    labels, count = ndimage.label(mask[box], structure=_STRUCTURE)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    out = np.zeros_like(mask)
    out[box] = keep[labels]
    return out


def assemble_labels(
    kidney_mask: npt.NDArray[Any],
    tumor_mask: npt.NDArray[Any],
    cyst_mask: npt.NDArray[Any] | None = None,
) -> npt.NDArray[np.uint8]:
    """One uint8 label map: 0 background, 1 kidney, 2 tumor, 3 cyst (a mass wins over kidney;
    tumor over cyst where both are set, as tumor wins the tie of the two outputs).

    Example:
        >>> import numpy as np
        >>> assemble_labels(np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1])).tolist()
        [0, 1, 2, 2]
        >>> assemble_labels(np.array([1, 1, 1]), np.array([0, 1, 1]), np.array([1, 0, 1])).tolist()
        [3, 2, 2]
    """
    masks = [tumor_mask] if cyst_mask is None else [tumor_mask, cyst_mask]
    for mask in masks:
        if kidney_mask.shape != mask.shape:
            raise ValueError(f"mask shapes differ: {kidney_mask.shape} vs {mask.shape}")
    labels = np.full(kidney_mask.shape, BACKGROUND, dtype=np.uint8)
    labels[np.asarray(kidney_mask, dtype=bool)] = KIDNEY
    if cyst_mask is not None:
        labels[np.asarray(cyst_mask, dtype=bool)] = CYST
    labels[np.asarray(tumor_mask, dtype=bool)] = TUMOR
    return labels


def keep_largest_components(labels: npt.NDArray[Any], count: int) -> npt.NDArray[Any]:
    """Keep the ``count`` largest 3D connected components (26-connectivity, by voxel count) of
    the foreground (labels >= 1); every label outside them becomes background.

    The foreground is the kidney with its masses, so a tumor (or cyst) that lies outside the
    kept components goes with them. Ties in size keep the component met first in index order.
    ``count <= 0`` keeps everything. The input is not changed.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((1, 1, 9), np.uint8); m[0, 0, :3] = 1; m[0, 0, 4] = 2; m[0, 0, 6:8] = 2
        >>> keep_largest_components(m, 2).tolist()
        [[[1, 1, 1, 0, 0, 0, 2, 2, 0]]]
    """
    labels = np.asarray(labels)
    out = labels.copy()
    foreground = labels >= 1
    if count <= 0 or not foreground.any():
        return out
    box = ndimage.find_objects(foreground.astype(np.uint8))[0]
    components, found = ndimage.label(foreground[box], structure=_STRUCTURE)
    if found <= count:
        return out
    sizes = np.bincount(components.ravel(), minlength=found + 1)[1:]
    # A stable sort keeps, among equal sizes, the component met first (lowest id).
    keep = np.zeros(found + 1, dtype=bool)
    keep[1 + np.argsort(-sizes, kind="stable")[:count]] = True
    out[box][~keep[components]] = BACKGROUND
    return out


def ml_to_voxels(volume_ml: float, spacing: Sequence[float]) -> int:
    """Smallest voxel count whose volume is at least ``volume_ml`` for this spacing (mm).

    Example:
        >>> ml_to_voxels(0.1, (1.0, 0.5, 0.5))  # 0.25 uL voxels
        400
    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    # Round first so 0.1 mL / 0.001 mL is 100 voxels, not 101 from floating-point noise.
    return max(0, math.ceil(round(volume_ml / voxel_ml, 6)))


def postprocess(
    kidney: npt.NDArray[Any],
    tumor: npt.NDArray[Any],
    spacing: Sequence[float],
    cfg: PostprocessConfig | None = None,
    region: npt.NDArray[Any] | None = None,
    cyst: npt.NDArray[Any] | None = None,
) -> npt.NDArray[np.uint8]:
    """The cascade's masks -> final labels, as ``cfg`` asks (paper §4.3).

    Steps: the masses (tumor and cyst) restricted to the kidney region
    (``cfg.tumor_inside_kidney``); components smaller than ``cfg.min_component_ml`` removed
    from the kidney region and from the masses (tumor and cyst together, so a mass that is part
    tumor, part cyst counts as one; 0 = off, the paper's setting); then assembled into labels
    0/1/2 (and 3 with ``cyst``). (A mass component lies inside one kidney component, so it
    never outlives the removal of its kidney component.) Without ``cyst`` (a tumor-only
    phase 2) the masses are the tumor alone. Last, ``cfg.kidney_components = N`` (0 = off)
    keeps only the N largest 3D components of kidney with masses (`keep_largest_components`:
    tumor and cyst outside them go too).

    Args:
        kidney: phase-1 kidney region (kidney incl. masses), bool-like, 3D.
        tumor: phase-2 tumor mask, same shape.
        spacing: voxel size in mm, in the arrays' axis order.
        cfg: settings; the paper defaults when omitted.
        region: the region phase 2 saw (the kidney region grown by ``data.region_margin_mm``);
            the masses are kept inside it. Defaults to ``kidney`` (the paper).
        cyst: phase-2 cyst mask (``data.tumor_classes = "tumor,cyst"``), same shape, or None.

    Example:
        >>> import numpy as np
        >>> k = np.zeros((3, 4, 4), bool); k[:, :2, :2] = True; k[1, 3, 3] = True
        >>> labels = postprocess(k, np.zeros_like(k), (2.0, 1.0, 1.0),
        ...                      PostprocessConfig(min_component_ml=0.004))
        >>> int(labels.sum())  # the 2-uL speck is gone, the 24-uL block stays
        12
    """
    cfg = cfg or PostprocessConfig()
    kidney = np.asarray(kidney, dtype=bool)
    tumor = np.asarray(tumor, dtype=bool)
    cyst = None if cyst is None else np.asarray(cyst, dtype=bool) & ~tumor
    if cfg.tumor_inside_kidney:
        inside = kidney if region is None else region
        tumor = restrict_tumor_to_kidney(inside, tumor)
        cyst = None if cyst is None else restrict_tumor_to_kidney(inside, cyst)
    if cfg.min_component_ml > 0:
        min_voxels = ml_to_voxels(cfg.min_component_ml, spacing)
        kidney = remove_small_components(kidney, min_voxels)
        if cyst is None:
            tumor = remove_small_components(tumor, min_voxels)
        else:
            masses = remove_small_components(tumor | cyst, min_voxels)
            tumor, cyst = tumor & masses, cyst & masses
    labels = assemble_labels(kidney, tumor, cyst)
    if cfg.kidney_components > 0:
        labels = keep_largest_components(labels, cfg.kidney_components)
    return labels
