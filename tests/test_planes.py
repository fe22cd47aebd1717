"""Plane views of canonical volumes: where things land, and the exact way back."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyseg.config import resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.planes import (
    PAD_HU,
    PLANES,
    PlaneGrid,
    PlaneView,
    parse_planes,
    resample_axis,
    slices_with,
)

#: (canonical shape, canonical spacing): thick and thin slices, anisotropic and non-square
#: in-plane grids, a scan longer than wide and one wider than long.
GRIDS = [
    ((7, 10, 12), (2.5, 0.8, 0.7)),
    ((30, 9, 11), (0.5, 0.9, 0.8)),
    ((5, 6, 6), (1.0, 1.0, 1.0)),
    ((4, 13, 8), (3.0, 0.6, 1.1)),
    ((3, 5, 17), (5.0, 0.75, 0.75)),
    ((40, 7, 6), (1.25, 0.7, 0.7)),
]


@pytest.mark.parametrize(("shape", "spacing"), GRIDS)
@pytest.mark.parametrize("plane", PLANES)
def test_labels_round_trip_exactly(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], plane: str
) -> None:
    labels = np.random.default_rng(0).integers(0, 4, shape).astype(np.uint8)
    grid = PlaneGrid(plane, shape, spacing)
    view = grid.to_view(labels, slice(None), linear=False)
    assert view.shape == grid.view_shape
    if plane != "axial":
        assert view.shape[1] == view.shape[2]  # square slices
        r, c = grid.resampled
        rows, cols = grid.slice_axes
        assert r >= shape[rows] and c >= shape[cols]  # never coarser than the source
        pr, pc = grid.view_spacing[1:]
        assert pr == pytest.approx(pc, rel=0.1)  # square pixels (up to rounding)
    back = np.zeros_like(labels)
    grid.put(back, slice(None), grid.from_view(view))
    np.testing.assert_array_equal(back, labels)
    # Batch by batch (what prediction does) gives the same slices as all at once.
    parts = [grid.to_view(labels, idx, False) for idx in np.array_split(np.arange(len(view)), 3)]
    np.testing.assert_array_equal(np.concatenate(parts), view)


def test_axial_is_the_identity() -> None:
    ct = np.random.default_rng(1).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    grid = PlaneGrid("axial", ct.shape, (3.0, 0.7, 0.9))
    assert grid.view_shape == ct.shape and grid.padding == (0, 0)
    np.testing.assert_array_equal(grid.to_view(ct, slice(None), True, PAD_HU, np.int16), ct)
    np.testing.assert_array_equal(PlaneView(grid, ct)[1:3], ct[1:3])


def test_a_known_block_lands_where_expected() -> None:
    """Canonical (z, y, x) = (6, 10, 14) at (2, 1, 1) mm: coronal slices are (z, x) with z
    doubled (12 rows, padded to 14 x 14: one row of air above and below), sagittal slices
    (z, y) with z doubled (12 x 10 padded to 12 x 12: one column of air each side)."""
    ct = np.full((6, 10, 14), 40, np.int16)
    ct[2, 3:6, 7] = 300
    spacing = (2.0, 1.0, 1.0)
    coronal = PlaneGrid("coronal", ct.shape, spacing)
    assert coronal.view_shape == (10, 14, 14) and coronal.padding == (1, 0)
    view = coronal.to_view(ct, [4], True, PAD_HU, np.int16)[0]
    assert (view[0] == PAD_HU).all() and (view[13] == PAD_HU).all()  # the air rows
    body = view[1:13]
    # Row j samples z at (j + 0.5) / 2 - 0.5: rows 3..6 sit at z = 1.25, 1.75, 2.25, 2.75,
    # i.e. 1/4, 3/4, 3/4, 1/4 of the way to the block's 300 HU from 40 HU.
    np.testing.assert_array_equal(body[:, 7], [40, 40, 40, 105, 235, 235, 105, 40, 40, 40, 40, 40])
    assert (np.delete(body, 7, axis=1) == 40).all()
    assert (coronal.to_view(ct, [2], True, PAD_HU, np.int16)[0][1:13] == 40).all()  # y = 2

    sagittal = PlaneGrid("sagittal", ct.shape, spacing)
    assert sagittal.view_shape == (14, 12, 12) and sagittal.padding == (0, 1)
    view = sagittal.to_view(ct, [7], True, PAD_HU, np.int16)[0]
    assert (view[:, 0] == PAD_HU).all() and (view[:, 11] == PAD_HU).all()
    labels = (ct == 300).astype(np.uint8)
    mask = sagittal.to_view(labels, [7], False)[0]
    rows, cols = np.nonzero(mask)
    assert set(rows) == {4, 5} and set(cols) == {1 + 3, 1 + 4, 1 + 5}  # z = 2, y = 3..5
    np.testing.assert_array_equal(slices_with(labels > 0, sagittal), [7])
    np.testing.assert_array_equal(slices_with(labels > 0, coronal), [3, 4, 5])


def test_probabilities_come_back_linearly() -> None:
    grid = PlaneGrid("coronal", (4, 3, 6), (2.5, 1.0, 1.0))
    height, width = grid.view_shape[1:]
    constant = np.full((3, height, width), 200, np.uint8)
    np.testing.assert_allclose(grid.from_view(constant, linear=True), 200)
    # A ramp along the resampled rows comes back as the mean of each source slice's samples.
    r, _ = grid.resampled
    top, _ = grid.padding
    ramp = np.zeros((1, height, width), np.float32)
    ramp[0, top : top + r] = np.arange(r, dtype=np.float32)[:, None]
    back = grid.from_view(ramp, linear=True)[0]
    assert back.shape == (4, 6)
    assert np.all(np.diff(back[:, 0]) > 0) and np.allclose(back, back[:, :1])


def test_plane_view_is_lazy_and_grows_masks_in_its_plane() -> None:
    ct = np.random.default_rng(2).integers(-200, 300, (5, 8, 9)).astype(np.int16)
    grid = PlaneGrid("sagittal", ct.shape, (2.0, 0.5, 0.5))
    view = PlaneView(grid, ct)
    assert view.shape == grid.view_shape and len(view) == 9 and view.dtype == np.int16
    np.testing.assert_array_equal(view[[2, 5]], grid.to_view(ct, [2, 5], True, PAD_HU, np.int16))
    np.testing.assert_array_equal(view[4], np.asarray(view)[4])
    region = np.zeros(ct.shape, bool)
    region[2, 4, 4] = True
    tight = PlaneView(grid, region, "mask")[4]
    grown = PlaneView(grid, region, "mask", margin_mm=1.0)[4]
    assert tight.sum() == 4  # z doubled (4 rows of 0.5 mm): 4 x 1 pixels
    assert grown.sum() > tight.sum() and grown[tight].all()
    assert not PlaneView(grid, region, "mask", margin_mm=1.0)[3].any()  # in its plane only


def test_resample_axis_conventions() -> None:
    a = np.arange(4)
    assert resample_axis(a, 0, 4, linear=False) is a
    up = resample_axis(a, 0, 9, linear=False)
    np.testing.assert_array_equal(resample_axis(up, 0, 4, linear=False), a)
    np.testing.assert_allclose(resample_axis(np.array([0.0, 8.0]), 0, 4, True), [0, 2, 6, 8])


def test_plane_settings_are_checked() -> None:
    assert parse_planes("Sagittal,axial") == ("axial", "sagittal")
    for bad in ("", "axial,axial", "transverse"):
        with pytest.raises(KidneysegError, match="planes"):
            parse_planes(bad)
    assert resolve_config().data.planes == "axial"  # the paper's defaults stay axial
    assert resolve_config().inference.planes == "all"
    with pytest.raises(KidneysegError, match="data.planes"):
        resolve_config(overrides=["data.planes=axial,oblique"])
    with pytest.raises(KidneysegError, match="inference.planes"):
        resolve_config(overrides=["inference.planes=none"])
    cfg = resolve_config(overrides=["data.planes=axial,coronal,sagittal", "inference.planes=axial"])
    assert parse_planes(cfg.data.planes) == PLANES
