"""Tests of `kidneyseg.types`: orientation letters, the axial axis and canonical conversion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kidneyseg.types import Volume, from_canonical, to_canonical, world_axes

ORIENTATIONS = [
    (perm, signs)
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
]


def direction_for(perm: tuple[int, ...], signs: tuple[int, ...]) -> np.ndarray:
    """Direction whose index axis c points along LPS world axis perm[c] with sign signs[c]."""
    d = np.zeros((3, 3))
    for c, (w, s) in enumerate(zip(perm, signs, strict=True)):
        d[w, c] = s
    return d


def test_volume_rejects_non_3d_and_bad_spacing() -> None:
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((4, 5)), (1.0, 1.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((4, 5, 6)), (1.0, 0.0, 1.0))


@pytest.mark.parametrize(("perm", "signs"), ORIENTATIONS)
def test_axcodes_and_axial_axis_follow_direction(perm: tuple, signs: tuple) -> None:
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    vol = Volume(np.zeros((2, 3, 4)), (1.0, 2.0, 3.0), direction=direction_for(perm, signs))
    assert vol.axial_axis == perm.index(2)
    assert vol.axcodes == tuple(letters[w][s > 0] for w, s in zip(perm, signs, strict=True))


def test_kits_direction_gives_ipl_axial_first() -> None:
    # KiTS: index axis 0 points Inferior, 1 Posterior, 2 Left (as read by SimpleITK).
    kits = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0))
    vol = Volume(np.zeros((5, 6, 7)), (5.0, 0.7, 0.7), direction=kits)
    assert vol.axcodes == ("I", "P", "L")
    assert vol.axial_axis == 0
    assert vol.to_canonical().shape == (5, 6, 7)
    assert vol.canonical_spacing == (5.0, 0.7, 0.7)


@pytest.mark.parametrize(("perm", "signs"), ORIENTATIONS)
def test_canonical_round_trip_and_content(perm: tuple, signs: tuple) -> None:
    rng = np.random.default_rng(1)
    canonical = rng.integers(0, 1000, (3, 4, 5))  # (z, y, x)
    lps = canonical.transpose(2, 1, 0)  # indexed (x, y, z)
    # Build the file-order array independently of the code under test.
    arr = np.transpose(lps, perm)
    arr = np.flip(arr, [c for c in range(3) if signs[c] < 0])
    d = direction_for(perm, signs)
    np.testing.assert_array_equal(to_canonical(arr, d), canonical)
    np.testing.assert_array_equal(from_canonical(canonical, d), arr)
    spacing_lps = (0.6, 0.9, 2.5)
    vol = Volume(arr, tuple(spacing_lps[w] for w in perm), direction=d)  # type: ignore[arg-type]
    assert vol.canonical_spacing == (2.5, 0.9, 0.6)
    assert vol.from_canonical(vol.to_canonical()).same_geometry(vol)


def test_world_axes_handles_oblique_and_rejects_degenerate() -> None:
    angle = np.deg2rad(20)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    assert world_axes(rot) == ((0, 1), (1, 1), (2, 1))
    with pytest.raises(ValueError, match="distinct"):
        world_axes(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


def test_same_geometry_and_with_array() -> None:
    vol = Volume(np.zeros((2, 3, 4), np.int16), (1.0, 1.0, 2.0), origin=(1.0, 2.0, 3.0))
    assert vol.same_geometry(vol.with_array(np.ones((2, 3, 4), np.uint8)))
    moved = Volume(vol.array, vol.spacing, origin=(1.0, 2.0, 4.0))
    assert not vol.same_geometry(moved)
    with pytest.raises(ValueError, match="shape"):
        vol.with_array(np.zeros((3, 3, 4)))
    assert vol.voxel_volume_ml == pytest.approx(0.002)
