"""Tests of kidneyseg.stats and ``kidneyseg stats``: hand-computed blocks and spheres, sides on
flipped / permuted copies of real KiTS23 labels, the TotalSegmentator kidneys, the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.cli.stats import csv_rows
from kidneyseg.io import read_labels, read_volume, write_volume
from kidneyseg.stats import (
    KIDNEY_SEPARATION_MM,
    CanonicalGeometry,
    label_statistics,
    measure,
)
from kidneyseg.types import Volume

SPACING_ZYX = (3.0, 0.8, 0.7)


def _geometry() -> CanonicalGeometry:
    return CanonicalGeometry.axis_aligned(SPACING_ZYX)


def two_kidneys() -> tuple[np.ndarray, np.ndarray]:
    """Canonical labels: right kidney with a cyst, left kidney with a 4x10x12 tumor; and a CT."""
    labels = np.zeros((20, 80, 200), np.uint8)
    labels[2:14, 20:60, 20:60] = 1  # patient right (small x)
    labels[3:15, 20:60, 140:180] = 1  # patient left, 120 columns (84 mm) further
    labels[5:9, 30:40, 150:162] = 2
    labels[6:8, 25:30, 30:35] = 3
    ct = np.full(labels.shape, -1000, np.int16)
    ct[:, 5:75, 10:190] = 40
    ct[labels == 2] = 60
    ct[5:9, 30:40, 150:162][:, :, ::2] = 80  # half the tumor 80 HU, half 60
    return labels, ct


def test_volumes_per_side_and_tumor_sizes_by_hand() -> None:
    labels, ct = two_kidneys()
    ml = math.prod(SPACING_ZYX) / 1000
    m = measure(labels, _geometry())
    assert m.side_rule == "kidneys"
    kidney = 12 * 40 * 40
    stats = m.to_stats_json()
    right, left = stats["kidneys"]["right"], stats["kidneys"]["left"]
    assert right["volume_with_masses_ml"] == pytest.approx(kidney * ml, abs=1e-4)
    assert right["volume_ml"] == pytest.approx((kidney - 2 * 5 * 5) * ml, abs=1e-4)
    assert right["cyst_volume_ml"] == pytest.approx(50 * ml, abs=1e-4)
    assert (right["tumor_volume_ml"], right["tumor_count"]) == (0.0, 0)
    assert left["volume_ml"] == pytest.approx((kidney - 480) * ml, abs=1e-4)
    assert left["tumor_volume_ml"] == pytest.approx(480 * ml, abs=1e-4)
    assert (left["cyst_volume_ml"], left["tumor_count"]) == (0.0, 1)
    (tumor,) = stats["tumors"]
    sz, sy, sx = SPACING_ZYX
    # Feret diameters run between voxel centres: (n - 1) spacings along each axis.
    assert tumor["max_diameter_mm"] == pytest.approx(math.hypot(3 * sz, 9 * sy, 11 * sx), abs=0.01)
    assert tumor["axial_diameter_mm"] == pytest.approx(math.hypot(9 * sy, 11 * sx), abs=0.01)
    assert tumor["centroid_mm"] == pytest.approx([155.5 * sx, 34.5 * sy, 6.5 * sz], abs=0.01)
    assert tumor["side"] == "left" and tumor["hu_mean"] is None
    with_ct = measure(labels, _geometry(), ct)
    assert with_ct.side_rule == "body"
    (t,) = with_ct.tumors
    assert t.hu_mean == pytest.approx(70.0)
    assert t.hu_std == pytest.approx(np.std([60, 80] * 240, ddof=1))
    assert with_ct.volumes_ml == m.volumes_ml


def test_spheres_of_known_size() -> None:
    spacing = (2.5, 0.75, 0.6)  # canonical (z, y, x) mm
    shape = (40, 160, 200)
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)),
                             indexing="ij")  # fmt: skip
    labels = np.zeros(shape, np.uint8)
    r = 20.0
    inside = (zz - 50.0) ** 2 + (yy - 60.0) ** 2 + (xx - 40.0) ** 2 <= r**2
    labels[inside] = 2
    m = measure(labels, CanonicalGeometry.axis_aligned(spacing))
    (tumor,) = m.tumors
    assert abs(tumor.max_diameter_mm - 2 * r) <= max(spacing)
    assert abs(tumor.axial_diameter_mm - 2 * r) <= max(spacing[1:]) * math.sqrt(2)
    assert tumor.volume_ml == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.03)
    np.testing.assert_allclose(tumor.centroid_mm, (40.0, 60.0, 50.0), atol=0.05)
    # One kidney region (the sphere), at smaller x than the grid centre (59.7 mm): right.
    assert m.side_rule == "grid" and tumor.side == "right"


def test_one_kidney_is_sided_by_the_grid_centre_and_pieces_stay_together() -> None:
    labels = np.zeros((10, 40, 100), np.uint8)
    labels[2:8, 10:30, 60:75] = 1  # one kidney, patient left of the grid centre
    labels[2:8, 10:30, 77:80] = 1  # a fragment of it, 2 columns apart: one kidney still
    m = measure(labels, _geometry())
    assert m.side_rule == "grid"
    assert m.volumes_ml["kidney"]["right"] == 0 and m.volumes_ml["kidney"]["left"] > 0
    assert (60 + 77) / 2 * SPACING_ZYX[2] < KIDNEY_SEPARATION_MM  # why the pieces stay together


def test_empty_map() -> None:
    stats = measure(np.zeros((3, 4, 5), np.uint8), _geometry()).to_stats_json()
    assert stats["tumors"] == [] and stats["total"]["volume_with_masses_ml"] == 0


# ----------------------------------------------------------------------------- real labels


def _permuted(v: Volume, perm: tuple[int, int, int]) -> Volume:
    """The same physical label map stored with the index axes in another order."""
    d = v.direction_matrix[:, perm]
    return Volume(
        np.ascontiguousarray(np.transpose(v.array, perm)),
        tuple(v.spacing[p] for p in perm),  # type: ignore[arg-type]
        v.origin,
        tuple(map(tuple, d)),
        v.case_id,
    )


def _flipped(v: Volume, axis: int) -> Volume:
    """The same physical label map stored with one index axis reversed."""
    d = v.direction_matrix.copy()
    origin = np.asarray(v.origin) + d[:, axis] * v.spacing[axis] * (v.shape[axis] - 1)
    d[:, axis] *= -1
    return Volume(
        np.ascontiguousarray(np.flip(v.array, axis)),
        v.spacing,
        tuple(float(o) for o in origin),  # type: ignore[arg-type]
        tuple(map(tuple, d)),
        v.case_id,
    )


def _mirrored(v: Volume) -> Volume:
    """The mirror-image patient: voxels flipped along the index axis that runs along LPS x,
    geometry kept."""
    axis = next(c for c, (w, _) in enumerate(v.world_axes) if w == 0)
    return v.with_array(np.ascontiguousarray(np.flip(v.array, axis)))


@pytest.mark.parametrize("case", ["case_00061", "case_00110"])
def test_sides_follow_the_anatomy_not_the_array(shared_data: Path, case: str) -> None:
    labels = read_labels(shared_data / "kits23_labels" / case / "segmentation.nii.gz")
    ref = label_statistics(labels)
    assert ref["total"]["tumor_count"] >= 1 and ref["sides"]["rule"].startswith("midpoint")
    for copy in (_permuted(labels, (2, 0, 1)), _flipped(labels, 2), _flipped(labels, 0)):
        stats = label_statistics(copy)
        assert stats["kidneys"] == ref["kidneys"]
        for a, b in zip(stats["tumors"], ref["tumors"], strict=True):
            assert a["side"] == b["side"] and a["volume_ml"] == b["volume_ml"]
            assert a["max_diameter_mm"] == pytest.approx(b["max_diameter_mm"], abs=1e-3)
            assert a["axial_diameter_mm"] == pytest.approx(b["axial_diameter_mm"], abs=1e-3)
            assert a["centroid_mm"] == pytest.approx(b["centroid_mm"], abs=0.02)
    mirror = label_statistics(_mirrored(labels))
    assert mirror["kidneys"]["left"] == ref["kidneys"]["right"]
    assert mirror["kidneys"]["right"] == ref["kidneys"]["left"]
    assert [t["side"] for t in mirror["tumors"]] == [
        {"left": "right", "right": "left"}[t["side"]] for t in ref["tumors"]
    ]


def test_totalsegmentator_kidneys_land_on_their_sides(shared_data: Path) -> None:
    folder = shared_data / "totalseg_example"
    seg = read_volume(folder / "example_seg_fast_force_split.nii.gz")  # 2 right, 3 left kidney
    labels = seg.with_array(np.isin(seg.array, (2, 3)).astype(np.uint8))
    ml = seg.voxel_volume_ml
    for copy in (labels, _permuted(labels, (1, 2, 0))):
        stats = label_statistics(copy)
        assert stats["kidneys"]["right"]["volume_ml"] == pytest.approx(
            int((seg.array == 2).sum()) * ml, abs=1e-3
        )
        assert stats["kidneys"]["left"]["volume_ml"] == pytest.approx(
            int((seg.array == 3).sum()) * ml, abs=1e-3
        )
    ct = read_volume(folder / "example_ct.nii.gz")
    with_ct = label_statistics(labels, ct)
    assert with_ct["sides"]["rule"] == "body midline of the CT"
    assert with_ct["kidneys"] == label_statistics(labels)["kidneys"]


# ----------------------------------------------------------------------------- command line


def _volume(canonical: np.ndarray) -> Volume:
    # File axes: 0 -> patient right (-x), 1 -> anterior (-y), 2 -> superior.
    direction = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
    array = np.ascontiguousarray(np.transpose(canonical, (2, 1, 0))[::-1, ::-1, :])
    sz, sy, sx = SPACING_ZYX
    return Volume(array, (sx, sy, sz), (10.0, -20.0, 30.0), direction, "synth")


def test_cli_json_csv_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, ct = two_kidneys()
    lab = write_volume(_volume(labels), tmp_path / "labels.nii.gz")
    img = write_volume(_volume(ct), tmp_path / "ct.nii.gz")
    assert main(["stats", str(lab), "--image", str(img), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["kidneys"]["left"]) >= {
        "volume_ml", "volume_with_masses_ml", "tumor_volume_ml", "cyst_volume_ml", "tumor_count"
    }  # fmt: skip
    (tumor,) = stats["tumors"]
    assert set(tumor) >= {
        "volume_ml", "max_diameter_mm", "axial_diameter_mm", "centroid_mm", "side", "hu_mean",
        "hu_std",
    }  # fmt: skip
    assert tumor["side"] == "left" and tumor["hu_mean"] == pytest.approx(70.0)
    assert stats["kidneys"]["left"]["tumor_count"] == 1
    assert main(["stats", str(lab), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["row"], r["side"]) for r in rows] == [
        ("kidney", "right"), ("kidney", "left"), ("kidney", "total"), ("tumor", "left")
    ]  # fmt: skip
    expected = csv_rows(label_statistics(read_labels(lab)))
    assert rows[3]["hu_mean"] == "" and rows == [
        {k: str(v) for k, v in r.items()} for r in expected
    ]
    assert main(["stats", str(lab)]) == 0
    text = capsys.readouterr().out
    assert "tumor 1    left" in text and "midpoint between the two kidneys" in text
    small = _volume(ct[:-1])
    assert main(["stats", str(lab), "--image", str(write_volume(small, tmp_path / "s.nii.gz"))])
    assert capsys.readouterr().err.startswith("error: ")
