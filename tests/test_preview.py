"""Tests of kidneyseg.stats (measurements) and kidneyseg.preview (``predict --preview``).

A synthetic case with known kidneys (right kidney with a cyst, left kidney with a tumor) is
written with a permuted, flipped (and in one test oblique) direction and uneven spacing, so a
preview that ignored orientation would swap the sides; the real TotalSegmentator example CT checks
the sides on real anatomy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.errors import KidneysegError
from kidneyseg.io import read_volume, write_volume
from kidneyseg.preview import PREVIEW_SIZE, preview_path, write_preview
from kidneyseg.stats import CanonicalGeometry, measure
from kidneyseg.types import Volume, from_canonical

# File axis 0 -> superior, 1 -> patient right (-x), 2 -> anterior (-y).
DIRECTION = ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0))
SPACING_ZYX = (2.5, 0.8, 0.7)
SHAPE = (12, 40, 48)  # canonical (z, y, x); body centred, so the midline is the grid centre
RIGHT_KIDNEY = (slice(2, 10), slice(14, 30), slice(8, 20))  # small x = patient right
LEFT_KIDNEY = (slice(3, 11), slice(14, 30), slice(28, 40))
TUMOR = (slice(6, 9), slice(18, 24), slice(33, 38))  # in the left kidney, superior half
CYST = (slice(5, 6), slice(20, 23), slice(10, 13))  # in the right kidney
TUMOR_CENTRE = (7.0, 20.5, 35.0)


def _image(arr: np.ndarray) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(arr))


def canonical_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical CT (int16 HU) and labels of the synthetic case."""
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 4:36, 4:44] = 40 + rng.integers(-10, 10, (SHAPE[0], 32, 40))
    labels = np.zeros(SHAPE, np.uint8)
    labels[RIGHT_KIDNEY] = 1
    labels[LEFT_KIDNEY] = 1
    labels[TUMOR] = 2
    labels[CYST] = 3
    ct[labels == 1] = 160
    ct[labels == 2] = 90
    ct[labels == 3] = 5
    return ct, labels


def to_volume(
    canonical: np.ndarray, direction: tuple[tuple[float, ...], ...] = DIRECTION
) -> Volume:
    """A file-order volume (origin off zero) whose canonical array is ``canonical``."""
    d = np.asarray(direction, dtype=np.float64)
    array = from_canonical(canonical, d)
    probe = Volume(array, (1.0, 1.0, 1.0), direction=direction)
    spacing = tuple(SPACING_ZYX[2 - w] for w, _ in probe.world_axes)
    return Volume(np.ascontiguousarray(array), spacing, (-12.0, 30.0, 7.5), direction, "synth")  # type: ignore[arg-type]


def synthetic_case(
    direction: tuple[tuple[float, ...], ...] = DIRECTION,
) -> tuple[Volume, Volume]:
    ct, labels = canonical_case()
    return to_volume(ct, direction), to_volume(labels, direction)


def _expected_ml(side: str, ids: tuple[int, ...]) -> float:
    _, labels = canonical_case()
    half = labels[..., : SHAPE[2] // 2] if side == "right" else labels[..., SHAPE[2] // 2 :]
    return int(np.isin(half, ids).sum()) * float(np.prod(SPACING_ZYX)) / 1000


def _rgb(png: np.ndarray, pixel: tuple[int, int]) -> np.ndarray:
    return png[pixel[0], pixel[1], :3]


def _red(px: np.ndarray) -> bool:
    return bool(px[0] > 0.6 and px[1] < 0.35 and px[2] < 0.35)


def test_canonical_geometry_maps_indices_to_lps_for_oblique_files() -> None:
    a = math.radians(20)
    oblique = ((0.0, math.cos(a), -math.sin(a)), (0.0, math.sin(a), math.cos(a)), (-1.0, 0, 0))
    vol = Volume(np.arange(4 * 5 * 6).reshape(4, 5, 6), (0.9, 1.3, 2.2), (3.0, -4.0, 5.0),
                 oblique)  # fmt: skip
    geometry = CanonicalGeometry.of(vol)
    canon = vol.to_canonical()
    assert geometry.spacing == vol.canonical_spacing
    for q in [(0, 0, 0), (1, 2, 3), tuple(n - 1 for n in canon.shape)]:
        ijk = np.unravel_index(int(canon[q]), vol.shape)
        lps = np.asarray(vol.origin) + vol.direction_matrix @ (np.asarray(vol.spacing) * ijk)
        np.testing.assert_allclose(geometry.lps(q), lps, atol=1e-9)


@pytest.mark.parametrize(
    "direction",
    [
        DIRECTION,
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
        (  # 15 degrees about the body axis: sides come from the direction cosines
            (math.cos(0.26), -math.sin(0.26), 0.0),
            (math.sin(0.26), math.cos(0.26), 0.0),
            (0.0, 0.0, 1.0),
        ),
    ],
)
def test_measures_sides_and_tumors_do_not_depend_on_file_orientation(
    direction: tuple[tuple[float, ...], ...],
) -> None:
    ct, labels = synthetic_case(direction)
    m = measure(labels.to_canonical(), CanonicalGeometry.of(labels), ct.to_canonical())
    for side in ("right", "left"):
        assert m.volumes_ml["kidney"][side] == pytest.approx(_expected_ml(side, (1, 2, 3)))
        assert m.volumes_ml["tumor"][side] == pytest.approx(_expected_ml(side, (2,)))
        assert m.volumes_ml["cyst"][side] == pytest.approx(_expected_ml(side, (3,)))
    assert m.volumes_ml["tumor"]["right"] == 0 and m.volumes_ml["cyst"]["left"] == 0
    (tumor,) = m.tumors
    assert tumor.side == "left" and tumor.voxels == 3 * 6 * 5
    np.testing.assert_allclose(tumor.centroid_index, TUMOR_CENTRE)


def test_two_tumors_are_two_components_largest_first() -> None:
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:3, 1:3, 1:3] = 2  # 8 voxels, patient right
    labels[2:5, 5:8, 8:11] = 2  # 27 voxels, patient left
    m = measure(labels, CanonicalGeometry.axis_aligned((2.0, 1.0, 1.0)))
    assert [(t.number, t.voxels, t.side) for t in m.tumors] == [(1, 27, "left"), (2, 8, "right")]
    assert m.tumors[0].centroid_index == (3.0, 6.0, 9.0)
    assert m.tumors[0].volume_ml == pytest.approx(27 * 2 / 1000)


def test_preview_of_synthetic_case(tmp_path: Path) -> None:
    ct, labels = synthetic_case()
    result = write_preview(ct, labels, tmp_path / "synth_preview.png")
    png = _image(result.path)
    assert (png.shape[1], png.shape[0]) == PREVIEW_SIZE
    right, left = _expected_ml("right", (1, 2, 3)), _expected_ml("left", (1, 2, 3))
    assert result.title == (
        f"synth: right kidney {right:.1f} mL (tumor 0.0 mL) · left kidney {left:.1f} mL "
        f"(tumor {_expected_ml('left', (2,)):.1f} mL)"
    )
    views = [p.view for p in result.panels]
    assert views.count("axial") == 8 and views[-2:] == ["coronal", "sagittal"]
    # The tumor (patient left) is red on the image's right half of its axial slices, and on the
    # upper half of the coronal reformat (superior at the top).
    z, y, x = TUMOR_CENTRE
    axial = [p for p in result.panels if p.view == "axial" and TUMOR[0].start <= p.index < 9]
    assert axial
    for panel in axial:
        row, col = panel.png_pixel(y, x)
        assert _red(_rgb(png, (row, col)))
        assert col > (panel.corner0[1] + panel.corner1[1]) / 2
    coronal = next(p for p in result.panels if p.view == "coronal")
    row, col = coronal.png_pixel(z, x)
    assert _red(_rgb(png, (row, col))) and row < (coronal.corner0[0] + coronal.corner1[0]) / 2
    sagittal = next(p for p in result.panels if p.view == "sagittal")
    assert TUMOR[2].start <= sagittal.index < TUMOR[2].stop
    assert _red(_rgb(png, sagittal.png_pixel(z, y)))
    assert [p.name for p in tmp_path.iterdir()] == ["synth_preview.png"]  # atomic, no leftovers


def test_empty_prediction_says_no_kidney_found(tmp_path: Path) -> None:
    ct, labels = synthetic_case()
    empty = labels.with_array(np.zeros_like(labels.array))
    result = write_preview(ct, empty, tmp_path / "empty.png")
    assert result.title == "synth: no kidney found" and result.measurements.empty
    png = _image(result.path)
    assert (png.shape[1], png.shape[0]) == PREVIEW_SIZE
    assert [p.view for p in result.panels] == ["axial", "coronal", "sagittal"]
    assert result.panels[0].index == SHAPE[0] // 2


def test_labels_off_the_ct_grid_are_an_error(tmp_path: Path) -> None:
    ct, labels = synthetic_case()
    moved = Volume(labels.array, labels.spacing, (0.0, 0.0, 0.0), labels.direction)
    with pytest.raises(KidneysegError, match="does not lie on the CT's grid"):
        write_preview(ct, moved, tmp_path / "p.png")
    assert not list(tmp_path.iterdir())


def test_preview_of_the_real_ct(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "totalseg_example"
    ct = read_volume(folder / "example_ct.nii.gz")
    seg = read_volume(folder / "example_seg_fast_force_split.nii.gz")  # 2 right, 3 left kidney
    labels = seg.with_array(np.isin(seg.array, (2, 3)).astype(np.uint8), case_id="example")
    result = write_preview(ct, labels, tmp_path / "example_preview.png")
    png = _image(result.path)
    assert (png.shape[1], png.shape[0]) == PREVIEW_SIZE
    ml = seg.voxel_volume_ml
    right, left = int((seg.array == 2).sum()) * ml, int((seg.array == 3).sum()) * ml
    assert result.measurements.volumes_ml["kidney"]["right"] == pytest.approx(right, abs=1e-6)
    assert result.measurements.volumes_ml["kidney"]["left"] == pytest.approx(left, abs=1e-6)
    assert f"right kidney {right:.1f} mL" in result.title
    assert f"left kidney {left:.1f} mL" in result.title
    # Patient left is on the image's right: the left kidney's centre lands right of centre.
    centre = np.argwhere(np.isin(seg.to_canonical(), 3)).mean(axis=0)
    panel = min(
        (p for p in result.panels if p.view == "axial"), key=lambda p: abs(p.index - centre[0])
    )
    col = panel.png_pixel(centre[1], centre[2])[1]
    assert col > (panel.corner0[1] + panel.corner1[1]) / 2


def test_predict_preview_writes_a_png_beside_each_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_inference import make_model_dir, phantom_canonical, volume_from_canonical

    run = make_model_dir(tmp_path / "run")
    data = tmp_path / "cts"
    for i in range(2):
        write_volume(volume_from_canonical(phantom_canonical((5, 32, 32), seed=i)),
                     data / f"case_{i}.nrrd")  # fmt: skip
    args = ["--model", str(run), "--device", "cpu", "--no-progress", "--preview"]
    assert main(["predict", str(data), str(tmp_path / "pred"), *args]) == 0
    names = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert names == ["case_0.nrrd", "case_0_preview.png", "case_1.nrrd", "case_1_preview.png"]
    # --output-format changes the label files' names; the previews still find their CTs.
    nifti = ["--output-format", "nifti"]
    assert main(["predict", str(data), str(tmp_path / "pred_nii"), *args, *nifti]) == 0
    names = sorted(p.name for p in (tmp_path / "pred_nii").iterdir())
    assert names == ["case_0.nii.gz", "case_0_preview.png", "case_1.nii.gz", "case_1_preview.png"]
    single = tmp_path / "one" / "labels.nii.gz"
    assert main(["predict", str(data / "case_1.nrrd"), str(single), *args]) == 0
    assert preview_path(single).is_file() and preview_path(single).name == "labels_preview.png"
    png = _image(preview_path(single))
    assert (png.shape[1], png.shape[0]) == PREVIEW_SIZE
    capsys.readouterr()
