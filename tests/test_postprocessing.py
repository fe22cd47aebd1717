"""Postprocessing on hand-placed blocks (paper §4.3)."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyseg.config import PostprocessConfig
from kidneyseg.postprocessing import (
    assemble_labels,
    ml_to_voxels,
    postprocess,
    remove_small_components,
    restrict_tumor_to_kidney,
)


def _blocks() -> tuple[np.ndarray, np.ndarray]:
    kidney = np.zeros((10, 20, 20), bool)
    kidney[2:8, 2:10, 2:10] = True  # 6*8*8 = 384 voxels
    tumor = np.zeros_like(kidney)
    tumor[3:5, 3:5, 3:5] = True  # 8 voxels inside the kidney
    tumor[3:5, 14:16, 14:16] = True  # 8 voxels outside it
    return kidney, tumor


def test_tumor_outside_kidney_is_removed() -> None:
    kidney, tumor = _blocks()
    kept = restrict_tumor_to_kidney(kidney, tumor)
    assert kept[3:5, 3:5, 3:5].all()
    assert not kept[:, 10:, 10:].any()
    assert int(kept.sum()) == 8


def test_restrict_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        restrict_tumor_to_kidney(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_assembly_tumor_wins() -> None:
    kidney, tumor = _blocks()
    labels = assemble_labels(kidney, tumor)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert int((labels == 2).sum()) == 16  # both tumor blocks, inside and outside
    assert int((labels == 1).sum()) == 384 - 8
    assert labels[0, 0, 0] == 0


def test_remove_small_components_keeps_every_large_one() -> None:
    mask = np.zeros((6, 30, 30), bool)
    mask[1:4, 1:6, 1:6] = True  # 75 voxels
    mask[1:4, 20:25, 20:25] = True  # 75 voxels: a second "kidney", must stay
    mask[5, 28, 28] = True  # 1 voxel
    mask[0:2, 10:12, 10:12] = True  # 8 voxels
    out = remove_small_components(mask, 9)
    assert int(out.sum()) == 150
    assert out[1:4, 1:6, 1:6].all() and out[1:4, 20:25, 20:25].all()
    assert remove_small_components(mask, 8).sum() == 158  # exactly min_voxels is kept
    assert remove_small_components(mask, 0).sum() == mask.sum()
    assert not remove_small_components(np.zeros((3, 3, 3), bool), 5).any()


def test_diagonal_voxels_form_one_component() -> None:
    # 26-connectivity: a structure running obliquely through slices stays one component.
    mask = np.zeros((4, 4, 4), bool)
    for i in range(4):
        mask[i, i, i] = True
    assert remove_small_components(mask, 4).sum() == 4
    assert remove_small_components(mask, 5).sum() == 0


def test_ml_to_voxels_uses_anisotropic_spacing() -> None:
    assert ml_to_voxels(0.1, (1.0, 1.0, 1.0)) == 100
    assert ml_to_voxels(0.1, (5.0, 0.5, 0.5)) == 80  # 1.25 uL voxels
    assert ml_to_voxels(0.1, (3.0, 1.0, 1.0)) == 34  # 33.33 -> at least 0.1 mL needs 34
    assert ml_to_voxels(0.0, (1.0, 1.0, 1.0)) == 0


def test_postprocess_min_component_in_ml_with_anisotropic_spacing() -> None:
    kidney = np.zeros((10, 40, 40), bool)
    kidney[2:8, 5:15, 5:15] = True  # 600 voxels
    kidney[1:3, 30:33, 30:33] = True  # 18 voxels
    tumor = np.zeros_like(kidney)
    tumor[3:6, 6:9, 6:9] = True  # 27 voxels inside the big kidney
    tumor[1:3, 31:32, 31:32] = True  # 2 voxels inside the small one
    cfg = PostprocessConfig(min_component_ml=0.02)  # 20 uL
    # Voxels 4 x 0.5 x 0.5 mm = 1 uL: the 18-uL kidney speck and the 2-uL tumor speck go.
    labels = postprocess(kidney, tumor, (4.0, 0.5, 0.5), cfg)
    assert int((labels > 0).sum()) == 600
    assert int((labels == 2).sum()) == 27
    # Voxels 4 x 1 x 0.5 mm = 2 uL: the kidney speck is 36 uL and stays (its tumor, 4 uL, goes).
    labels = postprocess(kidney, tumor, (4.0, 1.0, 0.5), cfg)
    assert int((labels > 0).sum()) == 618
    assert int((labels == 2).sum()) == 27
    assert (labels[1:3, 30:33, 30:33] == 1).all()
    # Voxels 1 x 0.5 x 0.5 mm = 0.25 uL: the 27-voxel tumor is 6.75 uL and goes as well.
    labels = postprocess(kidney, tumor, (1.0, 0.5, 0.5), cfg)
    assert int((labels > 0).sum()) == 600
    assert int((labels == 2).sum()) == 0


def test_postprocess_paper_default_changes_nothing_inside_kidney() -> None:
    kidney, tumor = _blocks()
    labels = postprocess(kidney, tumor, (3.0, 0.8, 0.8))
    expected = assemble_labels(kidney, restrict_tumor_to_kidney(kidney, tumor))
    np.testing.assert_array_equal(labels, expected)


def test_postprocess_can_keep_tumor_outside_kidney() -> None:
    kidney, tumor = _blocks()
    labels = postprocess(
        kidney, tumor, (1.0, 1.0, 1.0), PostprocessConfig(tumor_inside_kidney=False)
    )
    assert int((labels == 2).sum()) == 16
