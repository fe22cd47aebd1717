"""Postprocessing on hand-placed blocks (paper §4.3)."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyseg.config import PostprocessConfig
from kidneyseg.postprocessing import (
    assemble_labels,
    keep_largest_components,
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


def _three_kidneys() -> np.ndarray:
    """Labels with three separate foreground components of 96, 64 and 27 voxels."""
    labels = np.zeros((8, 30, 30), np.uint8)
    labels[1:7, 2:6, 2:6] = 1  # 96 voxels, a tumor and a cyst inside
    labels[2:4, 3:5, 3:5] = 2
    labels[5, 3, 3] = 3
    labels[1:5, 20:24, 20:24] = 1  # 64 voxels, a tumor inside
    labels[2, 21, 21] = 2
    labels[4:7, 12:15, 24:27] = 2  # 27 voxels: a tumor-only component (no kidney label)
    return labels


def test_keep_largest_components_keeps_the_n_largest_with_their_masses() -> None:
    labels = _three_kidneys()
    before = labels.copy()
    two = keep_largest_components(labels, 2)
    np.testing.assert_array_equal(labels, before)  # the input is untouched
    expected = before.copy()
    expected[4:7, 12:15, 24:27] = 0
    np.testing.assert_array_equal(two, expected)  # labels inside the kept components unchanged
    one = keep_largest_components(labels, 1)
    assert int((one > 0).sum()) == 96 and int((one == 2).sum()) == 8 and one[5, 3, 3] == 3
    assert not one[:, 15:, :].any()
    for count in (0, 3, 10):  # off, or at least as many components as there are
        np.testing.assert_array_equal(keep_largest_components(labels, count), before)
    empty = np.zeros((3, 4, 4), np.uint8)
    np.testing.assert_array_equal(keep_largest_components(empty, 2), empty)


def test_keep_largest_components_counts_26_connected_voxels_and_breaks_ties_in_order() -> None:
    labels = np.zeros((4, 12, 12), np.uint8)
    for i in range(4):  # a diagonal staircase: one component of 4 voxels, not four of 1
        labels[i, i, i] = 1
    labels[0, 8, 8:11] = 1  # 3 voxels in a row
    labels[3, 10, 0:3] = 1  # 3 voxels too: same size, met later in index order
    kept = keep_largest_components(labels, 2)
    assert int(kept.sum()) == 7
    assert all(kept[i, i, i] for i in range(4)) and kept[0, 8, 8:11].all()
    assert not kept[3, 10, 0:3].any()


def test_postprocess_kidney_components_removes_third_kidney_and_its_tumor() -> None:
    kidney = np.zeros((8, 30, 30), bool)
    kidney[1:7, 2:8, 2:8] = True  # 216 voxels
    kidney[1:6, 20:25, 20:25] = True  # 125 voxels
    kidney[2:5, 12:15, 12:15] = True  # 27 voxels: a false positive "third kidney"
    tumor = np.zeros_like(kidney)
    tumor[2:4, 3:5, 3:5] = True  # inside the largest
    tumor[3, 13, 13] = True  # inside the false positive
    spacing = (3.0, 0.8, 0.8)
    off = postprocess(kidney, tumor, spacing)
    assert int((off > 0).sum()) == 216 + 125 + 27  # the paper default keeps everything
    labels = postprocess(kidney, tumor, spacing, PostprocessConfig(kidney_components=2))
    assert int((labels > 0).sum()) == 216 + 125
    assert int((labels == 2).sum()) == 8 and not labels[2:5, 12:15, 12:15].any()
    labels = postprocess(kidney, tumor, spacing, PostprocessConfig(kidney_components=1))
    assert int((labels > 0).sum()) == 216 and int((labels == 2).sum()) == 8
