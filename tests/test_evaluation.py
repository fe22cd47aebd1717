"""Metrics against hand-worked values, the DeepMind/KiTS reference and real KiTS23 labels."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from surface_distance.lookup_tables import (
    create_table_neighbour_code_to_surface_area as surfel_area_table,
)

from kidneyseg.errors import KidneysegError
from kidneyseg.evaluation import evaluate, format_table, match_cases, reference_cases
from kidneyseg.formats.eval_dir import METRIC_COLUMNS, PER_CASE_COLUMNS
from kidneyseg.io import read_labels, write_volume
from kidneyseg.metrics import (
    KITS_SD_TOLERANCES_MM,
    dice,
    kits_metrics,
    paper_metrics,
    summary_stats,
    surface_dice,
)
from kidneyseg.types import KITS_CLASSES, Volume

KITS23 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kits23_labels"
TOL_KIDNEY = KITS_SD_TOLERANCES_MM["kidney_and_mass"]


def _blob(shape: tuple[int, int, int], seed: int, fraction: float = 0.5) -> np.ndarray:
    """A random smooth-ish mask (several components, holes) for property tests."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 1.2)
    return field > np.quantile(field, 1 - fraction)


@pytest.fixture(scope="module")
def kits_case():
    """Reader for a real KiTS23 label volume (cached); skips when shared data is absent."""
    cache: dict[str, Volume] = {}

    def load(case: str) -> Volume:
        path = KITS23 / case / "segmentation.nii.gz"
        if not path.is_file():
            pytest.skip(f"real KiTS23 labels not found at {path}")
        if case not in cache:
            cache[case] = read_labels(path)
        return cache[case]

    return load


def _erode_in_plane(labels: np.ndarray, pixels: int) -> np.ndarray:
    """Peel ``pixels`` voxels off the foreground in each axial slice (axis 0 is axial in KiTS)."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    inside = labels > 0
    kept = ndimage.binary_erosion(inside, structure, iterations=pixels)
    out = labels.copy()
    out[inside & ~kept] = 0
    return out


# ------------------------------------------------------------------------- hand-worked values
@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ([1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], 2 * 2 / (4 + 2)),
        ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),
        ([1, 0, 1, 0], [1, 0, 1, 0], 1.0),
        ([1, 1, 1, 0], [0, 1, 1, 1], 2 * 2 / (3 + 3)),
        ([0, 0, 0], [0, 0, 0], 1.0),  # both empty: KiTS scores 1
        ([0, 0, 0], [0, 1, 0], 0.0),
    ],
)
def test_dice_known_overlaps(pred: list[int], gt: list[int], expected: float) -> None:
    assert dice(np.array(pred), np.array(gt)) == pytest.approx(expected)


def test_surfel_area_table_hand_values() -> None:
    # The surfel areas surface_dice weighs by: surface-distance's marching-cubes table, with
    # the code's bit 7 - (4a + 2b + c) set when the voxel at offset (a, b, c) is inside.
    s0, s1, s2 = 3.0, 0.7, 0.9
    table = surfel_area_table((s0, s1, s2))
    assert table[0] == 0 and table[255] == 0
    # One voxel inside the cube: the corner triangle through three edge midpoints at half a
    # voxel, area vector (1/8)(s1 s2, s0 s2, s0 s1).
    corner = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8
    assert table[0b00000001] == pytest.approx(corner)
    assert table[0b10000000] == pytest.approx(corner)
    # Four voxels on one side: a flat face across the cube, normal to that axis.
    assert table[0b00001111] == pytest.approx(s1 * s2)  # offsets a = 1: normal to axis 0
    assert table[0b00110011] == pytest.approx(s0 * s2)  # offsets b = 1: normal to axis 1
    assert table[0b01010101] == pytest.approx(s0 * s1)  # offsets c = 1: normal to axis 2
    # Inside and outside swapped: the same surface.
    np.testing.assert_allclose(table, table[::-1])


def test_surface_dice_identical_is_one() -> None:
    mask = _blob((10, 12, 9), seed=1)
    assert surface_dice(mask, mask, (2.5, 0.6, 0.8), 0.1) == 1.0


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"),
    [
        # Single voxels one apart: the 4 corners they share are at 0 mm, the other 4 of each at
        # one spacing step along `axis`; all 8 corner surfels have the same area, so surface
        # Dice = 1 when that step <= tolerance and 4+4 / 8+8 = 0.5 otherwise.
        (0, (1.0, 0.8, 0.8), 1.0),  # 1.0 mm <= 1.033 mm
        (0, (2.0, 0.8, 0.8), 0.5),  # 2.0 mm > 1.033 mm
        (2, (2.0, 0.8, 0.8), 1.0),  # shift along a 0.8 mm axis
        (1, (0.5, 1.1, 0.5), 0.5),  # 1.1 mm > 1.033 mm
    ],
)
def test_surface_dice_one_voxel_shift(
    axis: int, spacing: tuple[float, float, float], expected: float
) -> None:
    gt = np.zeros((5, 6, 7), bool)
    gt[2, 3, 3] = True
    pred = np.roll(gt, 1, axis=axis)
    assert surface_dice(pred, gt, spacing, TOL_KIDNEY) == pytest.approx(expected, abs=1e-12)
    assert dice(pred, gt) == 0.0


def test_surface_dice_properties() -> None:
    a, b = _blob((12, 10, 11), seed=2), _blob((12, 10, 11), seed=3)
    spacing = (3.0, 0.7, 0.7)
    values = [surface_dice(a, b, spacing, t) for t in (0.5, 1.0, 2.0, 4.0, 100.0)]
    assert all(0.0 < v <= 1.0 for v in values)
    assert values == sorted(values)  # non-decreasing in the tolerance
    assert values[-1] == 1.0  # every surfel within 100 mm
    assert surface_dice(b, a, spacing, 2.0) == pytest.approx(values[2])  # symmetric


def test_surface_dice_ignores_axis_order_given_matching_spacing() -> None:
    a, b = _blob((9, 11, 8), seed=4), _blob((9, 11, 8), seed=5)
    spacing = (2.2, 0.6, 1.3)
    base = surface_dice(a, b, spacing, 1.1)
    for perm in itertools.permutations(range(3)):
        sp = tuple(spacing[i] for i in perm)
        assert surface_dice(a.transpose(perm), b.transpose(perm), sp, 1.1) == pytest.approx(base)
    flipped = surface_dice(a[::-1, :, ::-1], b[::-1, :, ::-1], spacing, 1.1)
    assert flipped == pytest.approx(base)


@pytest.mark.parametrize("name", list(KITS_CLASSES))
def test_kits_metrics_empty_conventions(name: str) -> None:
    empty = np.zeros((4, 5, 6), np.uint8)
    full = empty.copy()
    full[1:3, 1:4, 1:5] = KITS_CLASSES[name][-1]
    both_empty = kits_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both_empty[f"dice_{name}"], both_empty[f"sd_{name}"]) == (1.0, 1.0)
    for pred, gt in ((empty, full), (full, empty)):
        one_empty = kits_metrics(pred, gt, (1.0, 1.0, 1.0))
        assert (one_empty[f"dice_{name}"], one_empty[f"sd_{name}"]) == (0.0, 0.0)


def test_kits_metrics_hierarchical_classes() -> None:
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[1, 1:7, 1:7] = 1
    gt[1, 2:4, 2:4] = 2  # tumor, 4 voxels
    gt[1, 5:6, 5:7] = 3  # cyst, 2 voxels
    pred = gt.copy()
    pred[pred == 3] = 1  # cyst called kidney
    m = kits_metrics(pred, gt, (2.0, 1.0, 1.0))
    assert m["dice_kidney_and_mass"] == 1.0 and m["sd_kidney_and_mass"] == 1.0
    assert m["dice_tumor"] == 1.0 and m["sd_tumor"] == 1.0
    assert m["dice_mass"] == pytest.approx(2 * 4 / (4 + 6))
    assert 0.0 < m["sd_mass"] < 1.0


def test_summary_stats_sample_std_over_defined_values() -> None:
    stats = summary_stats([0.2, 0.6, math.nan, None, 0.7])
    assert stats["n"] == 3 and stats["median"] == 0.6
    assert stats["mean"] == pytest.approx(0.5)
    assert stats["std"] == pytest.approx(np.std([0.2, 0.6, 0.7], ddof=1))
    assert summary_stats([0.3]) == {"mean": 0.3, "median": 0.3, "std": None, "n": 1}
    assert summary_stats([math.nan]) == {"mean": None, "median": None, "std": None, "n": 0}


def test_paper_metrics_hand_worked() -> None:
    gt = np.zeros((4, 5, 5), np.uint8)
    gt[0:2, 1:4, 1:4] = 1  # kidney on axial slices 0 and 1, 9 pixels each
    gt[0, 2, 2] = 2  # tumor on slice 0 only
    pred = np.zeros_like(gt)
    pred[0] = gt[0]  # slice 0 exact, slice 1 missed
    pred[3, 0, 0] = 1  # a false positive on slice 3, which has no kidney in the reference
    m = paper_metrics(pred, gt)
    assert m["paper_case_dice_kidney"] == pytest.approx(2 * 9 / (10 + 18))
    assert m["paper_slice_dice_kidney"] == pytest.approx((1.0 + 0.0) / 2)  # slices 0 and 1 only
    assert m["paper_case_dice_tumor"] == 1.0 and m["paper_slice_dice_tumor"] == 1.0
    # The axial axis matters: with axis 1 as axial the slices are other ones.
    assert paper_metrics(pred, gt, axial_axis=1)["paper_slice_dice_kidney"] != pytest.approx(0.5)
    no_tumor = paper_metrics(pred, np.where(gt == 2, 1, gt).astype(np.uint8))
    assert math.isnan(no_tumor["paper_slice_dice_tumor"])  # no reference slice: undefined
    assert no_tumor["paper_case_dice_tumor"] == 0.0  # predicted tumor where there is none


# --------------------------------------------------------------------- the official reference
def test_matches_deepmind_surface_distance_reference(kits_case) -> None:
    """Agreement with `surface-distance` (DeepMind, used by the KiTS21/KiTS23 evaluation)."""
    sd_ref = pytest.importorskip("surface_distance", reason="pip install surface-distance")

    def official(pred: np.ndarray, gt: np.ndarray, spacing, tolerance: float) -> float:
        # compute_metrics_for_label (neheller/kits23) once both masks are non-empty.
        distances = sd_ref.compute_surface_distances(gt, pred, spacing)
        return sd_ref.compute_surface_dice_at_tolerance(distances, tolerance)

    for seed in range(4):
        a, b = _blob((10, 13, 9), seed), _blob((10, 13, 9), seed + 10, fraction=0.3)
        spacing = (2.5, 0.7, 0.9)
        for tol in KITS_SD_TOLERANCES_MM.values():
            assert surface_dice(b, a, spacing, tol) == pytest.approx(
                official(b, a, spacing, tol), abs=1e-9
            )
    gt = kits_case("case_00110")
    pred = np.roll(_erode_in_plane(gt.array, 2), 2, axis=2)
    ours = kits_metrics(pred, gt.array, gt.spacing)
    for name, labels in KITS_CLASSES.items():
        p, g = np.isin(pred, labels), np.isin(gt.array, labels)
        expected = official(p, g, gt.spacing, KITS_SD_TOLERANCES_MM[name])
        assert ours[f"sd_{name}"] == pytest.approx(expected, abs=1e-9)
        assert 0.0 < ours[f"sd_{name}"] < 1.0


# --------------------------------------------------------------------------- real KiTS labels
@pytest.mark.parametrize("case", ["case_00061", "case_00534"])
def test_real_reference_against_itself_is_perfect(kits_case, case: str) -> None:
    gt = kits_case(case)
    m = kits_metrics(gt.array, gt.array, gt.spacing)
    m.update(paper_metrics(gt.to_canonical(), gt.to_canonical()))
    assert m == {k: 1.0 for k in m}


def test_real_perturbations_move_metrics_the_expected_way(kits_case) -> None:
    gt = kits_case("case_00061")  # 5 mm slices, 0.98 mm pixels, axis 0 axial
    assert gt.axial_axis == 0
    thin = kits_metrics(_erode_in_plane(gt.array, 1), gt.array, gt.spacing)
    thick = kits_metrics(_erode_in_plane(gt.array, 3), gt.array, gt.spacing)
    shifted = kits_metrics(np.roll(gt.array, 1, axis=0), gt.array, gt.spacing)
    for name in KITS_CLASSES:
        # One 0.98 mm pixel off the surface is within every tolerance (>= 1.03 mm), 3 are not.
        assert 0.9 < thin[f"dice_{name}"] < 1.0
        assert thin[f"sd_{name}"] > 0.99
        assert thick[f"dice_{name}"] < thin[f"dice_{name}"]
        assert thick[f"sd_{name}"] < 0.8
        # One 5 mm slice off: most of the volume still overlaps, much of the surface does not.
        assert 0.7 < shifted[f"dice_{name}"] < 0.95
        assert 0.3 < shifted[f"sd_{name}"] < 0.8


def test_real_tumor_removed_keeps_cyst_in_mass_class(kits_case) -> None:
    gt = kits_case("case_00110")  # has a cyst
    pred = gt.array.copy()
    pred[pred == 2] = 1
    m = kits_metrics(pred, gt.array, gt.spacing)
    assert (m["dice_tumor"], m["sd_tumor"]) == (0.0, 0.0)
    assert 0.0 < m["dice_mass"] < 1.0 and 0.0 < m["sd_mass"] < 1.0
    assert (m["dice_kidney_and_mass"], m["sd_kidney_and_mass"]) == (1.0, 1.0)


def test_real_surface_dice_uses_the_spacing(kits_case) -> None:
    gt = kits_case("case_00534")
    shifted = np.roll(gt.array, 1, axis=0)
    at_5mm = kits_metrics(shifted, gt.array, gt.spacing)
    at_1mm = kits_metrics(shifted, gt.array, (1.0, gt.spacing[1], gt.spacing[2]))
    assert at_1mm["dice_kidney_and_mass"] == at_5mm["dice_kidney_and_mass"]  # Dice: no spacing
    assert at_5mm["sd_kidney_and_mass"] < 0.8
    assert at_1mm["sd_kidney_and_mass"] == pytest.approx(1.0)  # 1 mm shift <= 1.033 mm


# -------------------------------------------------------------------------- files and folders
def test_evaluate_writes_consistent_files(kits_case, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    expected = {}
    for case, perturb in (
        ("case_00061", lambda a: _erode_in_plane(a, 2)),
        ("case_00534", lambda a: np.roll(a, 1, axis=0)),
    ):
        gt = kits_case(case)
        pred = gt.with_array(perturb(gt.array).astype(np.uint8))
        write_volume(pred, preds / f"{case}.nii.gz")
        expected[case] = kits_metrics(pred.array, gt.array, gt.spacing)
        expected[case].update(paper_metrics(pred.to_canonical(), gt.to_canonical()))
    out = tmp_path / "eval"
    # KITS23 holds more references than these two: score just these (the rest would be missing).
    summary = evaluate(preds, KITS23, out, workers=2, cases=sorted(expected))

    with open(out / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PER_CASE_COLUMNS
    assert [r["case"] for r in rows] == ["case_00061", "case_00534"]
    for row in rows:
        assert row["missing"] == "0"
        for key, value in expected[row["case"]].items():
            assert float(row[key]) == pytest.approx(value, abs=1e-8)
        gt = kits_case(row["case"])
        kidney_ml = np.count_nonzero(gt.array) * np.prod(gt.spacing) / 1000
        assert float(row["volume_ml_kidney_gt"]) == pytest.approx(kidney_ml)

    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert on_disk == summary
    assert on_disk["pred_dir"] == str(preds.resolve())
    assert Path(on_disk["gt_dir"]) == KITS23.resolve()  # absolute, links resolved
    assert on_disk["n_cases"] == 2 and on_disk["kidneyseg_version"]
    assert on_disk["missing"] == []
    assert set(on_disk["metrics"]) == set(METRIC_COLUMNS)
    tumor = [expected[c]["dice_tumor"] for c in sorted(expected)]
    assert on_disk["metrics"]["dice_tumor"]["mean"] == pytest.approx(np.mean(tumor))
    assert on_disk["metrics"]["dice_tumor"]["median"] == pytest.approx(np.median(tumor))
    assert on_disk["metrics"]["dice_tumor"]["std"] == pytest.approx(np.std(tumor, ddof=1))
    assert on_disk["metrics"]["dice_tumor"]["n"] == 2
    class_means = [on_disk["metrics"][f"dice_{n}"]["mean"] for n in KITS_CLASSES]
    assert on_disk["kits_mean_dice"] == pytest.approx(np.mean(class_means))
    assert (out / "summary.md").read_text(encoding="utf-8") == format_table(summary)
    assert "`paper_slice_dice_tumor`" in format_table(summary)


def test_paper_view_uses_canonical_axial_slices(phantom_volume, tmp_path: Path) -> None:
    gt = phantom_volume.labels  # direction diag(-1, -1, 1): the axial axis is index axis 2
    assert gt.axial_axis == 2
    pred_array = gt.array.copy()
    k = np.flatnonzero(gt.array.any(axis=(0, 1)))[0]
    pred_array[:, :, k] = 0  # miss the lowest axial slice with kidney entirely
    pred = gt.with_array(pred_array)
    write_volume(gt, tmp_path / "gt" / "phantom.nii.gz")
    write_volume(pred, tmp_path / "preds" / "phantom.nii.gz")
    evaluate(tmp_path / "preds", tmp_path / "gt", tmp_path / "eval", workers=1)
    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    canonical = paper_metrics(pred.to_canonical(), gt.to_canonical())
    wrong_axis = paper_metrics(pred.array, gt.array, axial_axis=0)
    value = float(row["paper_slice_dice_kidney"])
    assert value == pytest.approx(canonical["paper_slice_dice_kidney"])
    assert value != pytest.approx(wrong_axis["paper_slice_dice_kidney"])
    n_slices = np.count_nonzero(gt.array.any(axis=(0, 1)))
    assert value == pytest.approx((n_slices - 1) / n_slices)  # the one missed slice scores 0


def test_match_cases_reference_layouts(tmp_path: Path) -> None:
    preds, gts = tmp_path / "preds", tmp_path / "gt"
    preds.mkdir()
    for case in ("a", "b", "c"):
        (preds / f"{case}.nii.gz").write_bytes(b"")
    (preds / ".a.nii.gz.tmp.nii.gz").write_bytes(b"")  # an unfinished atomic write: ignored
    (gts / "a").mkdir(parents=True)
    (gts / "a" / "segmentation.nii.gz").write_bytes(b"")
    (gts / "a" / "aggregated_MAJ_seg.nii.gz").write_bytes(b"")
    (gts / "b").mkdir()
    (gts / "b" / "segmentation.nii.gz").write_bytes(b"")
    (gts / "c.nii.gz").write_bytes(b"")
    pairs = match_cases(preds, gts)
    assert [(c, g.relative_to(gts).as_posix()) for c, _, g in pairs] == [
        ("a", "a/aggregated_MAJ_seg.nii.gz"),
        ("b", "b/segmentation.nii.gz"),
        ("c", "c.nii.gz"),
    ]


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="workers"):
        evaluate(tmp_path, tmp_path, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ missing predictions
SMALL_SPACING = (2.5, 0.8, 0.7)


def _small_labels(shift: int = 0, tumor: bool = True) -> np.ndarray:
    labels = np.zeros((8, 12, 10), np.uint8)
    labels[2 + shift : 6 + shift, 2:9, 2:8] = 1
    if tumor:
        labels[3 + shift : 5 + shift, 4:6, 3:5] = 2
    return labels


@pytest.fixture
def three_cases(tmp_path: Path) -> tuple[Path, Path]:
    """(preds, gt): references a, b (no tumor), c in the KiTS layout; predictions of a and c."""
    preds, gts = tmp_path / "preds", tmp_path / "gt"
    for case, tumor in (("a", True), ("b", False), ("c", True)):
        write_volume(Volume(_small_labels(tumor=tumor), SMALL_SPACING),
                     gts / case / "segmentation.nii.gz")  # fmt: skip
    write_volume(Volume(_small_labels(), SMALL_SPACING), preds / "a.nii.gz")
    write_volume(Volume(_small_labels(shift=1), SMALL_SPACING), preds / "c.nii.gz")
    return preds, gts


def test_evaluate_refuses_a_missing_prediction(three_cases, tmp_path: Path) -> None:
    preds, gts = three_cases
    out = tmp_path / "eval"
    with pytest.raises(KidneysegError) as err:
        evaluate(preds, gts, out, workers=1)
    message = str(err.value)
    assert "1 of 3 case(s)" in message and "(first: b)" in message
    assert "pass --split/--subset to evaluate a subset, or --allow-missing" in message
    assert len(message.splitlines()) == 1
    assert not out.exists()
    # With the cases named, the subset hint is not offered (they already are a subset).
    with pytest.raises(KidneysegError, match=r"1 of 2 .*first: b.*; pass --allow-missing"):
        evaluate(preds, gts, out, workers=1, cases=["b", "c"])
    assert not out.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_allow_missing_scores_the_case_as_empty(three_cases, tmp_path: Path, workers) -> None:
    preds, gts = three_cases
    summary = evaluate(preds, gts, tmp_path / "eval", workers=workers, allow_missing=True)
    assert summary["n_cases"] == 3 and summary["missing"] == ["b"]
    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert [rows[c]["missing"] for c in "abc"] == ["1" if c == "b" else "0" for c in "abc"]
    b = rows["b"]
    # An empty prediction: Dice 0 where the reference has the structure (kidney), 1 where
    # neither has it (b has no tumor and no mass: the KiTS empty-vs-empty convention).
    assert float(b["dice_kidney_and_mass"]) == 0.0 and float(b["sd_kidney_and_mass"]) == 0.0
    assert float(b["dice_tumor"]) == 1.0 and float(b["dice_mass"]) == 1.0
    assert float(b["paper_case_dice_kidney"]) == 0.0
    assert float(b["volume_ml_kidney_pred"]) == 0.0 and float(b["volume_ml_kidney_gt"]) > 0
    # The zero counts in the statistics: the mean is over all three cases.
    kidney = [float(rows[c]["dice_kidney_and_mass"]) for c in "abc"]
    assert kidney[0] == 1.0 and 0.0 < kidney[2] < 1.0
    stats = summary["metrics"]["dice_kidney_and_mass"]
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(np.mean(kidney))
    table = (tmp_path / "eval" / "summary.md").read_text(encoding="utf-8")
    assert "1 of them without a prediction, scored as empty" in table and ": b." in table
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["missing"] == ["b"]


def test_cases_select_a_subset_and_ignore_other_predictions(three_cases, tmp_path: Path):
    preds, gts = three_cases
    summary = evaluate(preds, gts, tmp_path / "eval", workers=1, cases=["c", "a", "c"])
    assert summary["n_cases"] == 2 and summary["missing"] == []
    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        assert [row["case"] for row in csv.DictReader(f)] == ["a", "c"]
    summary = evaluate(preds, gts, tmp_path / "eval", workers=1, cases=["a"])
    assert summary["n_cases"] == 1  # c's prediction is outside the cases: ignored
    assert summary["metrics"]["dice_kidney_and_mass"]["mean"] == 1.0


@pytest.mark.parametrize(
    ("cases", "allow_missing", "words"),
    [
        (["a", "zzz"], True, "no reference segmentation"),  # named case without a reference
        ([], False, "no cases to evaluate"),
        (["b"], True, "none of the 1 case(s) to evaluate has a prediction"),
    ],
)
def test_bad_case_lists(three_cases, tmp_path: Path, cases, allow_missing, words) -> None:
    preds, gts = three_cases
    with pytest.raises(KidneysegError) as err:
        evaluate(preds, gts, tmp_path / "eval", workers=1, cases=cases,
                 allow_missing=allow_missing)  # fmt: skip
    assert words in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_a_prediction_without_reference_stays_an_error(three_cases, tmp_path: Path) -> None:
    preds, gts = three_cases
    write_volume(Volume(_small_labels(), SMALL_SPACING), preds / "d.nii.gz")
    with pytest.raises(KidneysegError, match="no reference segmentation") as err:
        evaluate(preds, gts, tmp_path / "eval", workers=1, allow_missing=True)
    assert "d.nii.gz" in str(err.value)
    # ... unless the cases to score leave it out.
    assert evaluate(preds, gts, tmp_path / "eval", workers=1, cases=["a"])["n_cases"] == 1


def test_reference_cases_layouts(tmp_path: Path) -> None:
    gts = tmp_path / "gt"
    for rel in ("a/segmentation.nii.gz", "b/aggregated_MAJ_seg.nii.gz", "c.nii.gz",
                "d/imaging.nii.gz", ".e.nii.gz.tmp.nii.gz", "kits.json"):  # fmt: skip
        (gts / rel).parent.mkdir(parents=True, exist_ok=True)
        (gts / rel).write_bytes(b"")
    assert reference_cases(gts) == ["a", "b", "c"]  # d has imaging only: no reference
