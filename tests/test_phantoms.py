"""The synthetic phantom cohort: determinism, labels, HU, geometry, world-space anatomy, CLI."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.data import phantoms
from kidneyseg.data.kits import find_cases
from kidneyseg.data.phantoms import make_phantom, write_cohort
from kidneyseg.io import read_volume, write_volume
from kidneyseg.types import CYST, KIDNEY, TUMOR, Volume

SMALL = (24, 64, 64)


def _world(volume: Volume, index: np.ndarray) -> np.ndarray:
    """LPS mm of (fractional) file indices ``index`` (..., 3)."""
    return (
        np.asarray(volume.origin) + (index * np.asarray(volume.spacing)) @ volume.direction_matrix.T
    )


def _seed_with(kidneys: str, limit: int = 120) -> int:
    for seed in range(limit):
        # The anatomy does not depend on the shape, so a tiny volume answers the question.
        if make_phantom(seed, (4, 16, 16))[0].metadata["kidneys"] == kidneys:
            return seed
    raise AssertionError(f"no seed below {limit} gives kidneys={kidneys}")


def test_same_seed_same_volumes_other_seed_differs() -> None:
    ct1, lab1 = make_phantom(5, SMALL)
    ct2, lab2 = make_phantom(5, SMALL)
    ct3, _ = make_phantom(6, SMALL)
    assert np.array_equal(ct1.array, ct2.array) and np.array_equal(lab1.array, lab2.array)
    assert ct1.same_geometry(ct2) and ct1.same_geometry(lab1)
    assert ct1.array.dtype == np.int16 and lab1.array.dtype == np.uint8
    assert not np.array_equal(ct1.array, ct3.array)


def test_cohort_files_identical_across_runs_and_workers(tmp_path: Path) -> None:
    a = write_cohort(tmp_path / "a", cases=2, seed=3, shape=(12, 40, 40), progress=False)
    b = write_cohort(tmp_path / "b", cases=2, seed=3, shape=(12, 40, 40), workers=2, progress=False)
    assert [c.case_id for c in a] == ["case_00000", "case_00001"]
    for ca, cb in zip(a, b, strict=True):
        assert filecmp.cmp(ca.image, cb.image, shallow=False)
        assert filecmp.cmp(ca.label, cb.label, shallow=False)
    found = find_cases(tmp_path / "a")
    assert [(c.case_id, c.label.name) for c in found] == [
        ("case_00000", "segmentation.nii.gz"),
        ("case_00001", "segmentation.nii.gz"),
    ]
    # A rerun keeps finished cases; a different shape rewrites them.
    before = a[0].image.stat().st_mtime_ns
    write_cohort(tmp_path / "a", cases=2, seed=3, shape=(12, 40, 40), progress=False)
    assert a[0].image.stat().st_mtime_ns == before
    write_cohort(tmp_path / "a", cases=1, seed=3, shape=(12, 48, 40), progress=False)
    assert read_volume(a[0].image).to_canonical().shape == (12, 48, 40)
    assert json.loads((a[0].image.parent / "phantom.json").read_text(encoding="utf-8"))[
        "shape"
    ] == [12, 48, 40]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


def test_labels_follow_painting_order_tumor_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuild the label map from every labelled paint call: kidney < cyst < tumor."""
    calls: list[tuple[tuple[slice, ...], np.ndarray, int]] = []
    paint = phantoms._Canvas.paint

    def recording(self, box, mask, value, label=None, inside_cavity=True):
        if label is not None:
            eff = mask & self.cavity2d[box[1], box[2]][None] if inside_cavity else mask
            calls.append((box, eff.copy(), label))
        paint(self, box, mask, value, label, inside_cavity)

    # Concentric masses on the kidney centre, so cysts and tumors surely overlap.
    monkeypatch.setattr(phantoms, "_mass_center", lambda rng, k, r, exophytic: k.center)
    monkeypatch.setattr(phantoms._Canvas, "paint", recording)
    seed = next(
        s
        for s in range(60)
        if int(make_phantom(s, (4, 16, 16))[0].metadata["cysts"]) > 0
        and int(make_phantom(s, (4, 16, 16))[0].metadata["tumors"]) > 0
    )
    calls.clear()
    ct, labels = make_phantom(seed, SMALL)
    order = [label for _, _, label in calls]
    assert order == sorted(order, key=[KIDNEY, CYST, TUMOR].index)  # kidney, cyst, tumor
    expected = np.zeros(SMALL, np.uint8)
    masks = {
        KIDNEY: np.zeros(SMALL, bool),
        CYST: np.zeros(SMALL, bool),
        TUMOR: np.zeros(SMALL, bool),
    }
    for box, mask, label in calls:
        masks[label][box] |= mask
    for label in (KIDNEY, CYST, TUMOR):
        expected[masks[label]] = label
    got = labels.to_canonical()
    assert np.array_equal(got, expected)
    assert set(np.unique(got)) <= {0, KIDNEY, TUMOR, CYST}
    overlap = masks[CYST] & masks[TUMOR]
    assert overlap.any() and (got[overlap] == TUMOR).all()
    assert (got[masks[CYST] & ~masks[TUMOR]] == CYST).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_hu_ranges(seed: int) -> None:
    ct, labels = make_phantom(seed, (32, 96, 96))
    hu, lab = ct.to_canonical(), labels.to_canonical()
    kidney = hu[lab == KIDNEY]
    assert kidney.size > 100
    assert 80 <= np.median(kidney) <= 250  # between medulla and cortex
    if (lab == TUMOR).sum() > 50:
        assert 20 <= np.median(hu[lab == TUMOR]) <= 145
    assert (hu > 300).sum() > 50  # bone: spine and ribs
    assert (hu > 300).sum() < 0.05 * hu.size
    assert np.median(hu[:, :3, :3]) < -900  # air in the corners
    assert ((hu > -150) & (hu < -50)).mean() > 0.05  # fat
    assert hu.min() >= -1024 and hu.max() <= 3071


def test_enhanced_kidney_and_bone_saturate_together_in_the_paper_window() -> None:
    ct, labels = make_phantom(0, (32, 96, 96))
    hu, lab = ct.to_canonical(), labels.to_canonical()
    windowed = np.clip(hu, 0, 200)
    assert (windowed[lab == KIDNEY] == 200).mean() > 0.02  # bright cortex saturates
    assert (windowed[hu > 300] == 200).all()  # as does bone: a model must learn shape


def test_spacing_ranges() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for shape, (lo, hi) in (((48, 128, 128), (2.5, 3.75)), ((300, 512, 512), (0.62, 0.94))):
            spacing, grid, _ = phantoms._geometry(rng, shape)
            assert lo <= spacing[1] == spacing[2] <= hi
            assert 0.5 <= spacing[0] <= 5.0
            assert len(grid.z) == shape[0]
    ct, _ = make_phantom(1)
    assert sorted(ct.to_canonical().shape) == sorted(phantoms.DEFAULT_SHAPE)
    zs, ys, xs = ct.canonical_spacing
    assert 0.5 <= zs <= 5 and 2.5 <= ys == xs <= 3.75


def test_same_anatomy_at_other_resolutions() -> None:
    _, coarse = make_phantom(4, (48, 64, 64))
    _, fine = make_phantom(4, (48, 128, 128))
    ml = [np.count_nonzero(v.array) * v.voxel_volume_ml for v in (coarse, fine)]
    assert ml[0] == pytest.approx(ml[1], rel=0.1)


def test_one_kidney_cases_exist_and_sit_on_their_side() -> None:
    seed = _seed_with("left")
    _, labels = make_phantom(seed, SMALL)
    lab = labels.to_canonical()
    kidney_x = np.nonzero(lab > 0)[2]
    # Canonical x runs right -> left, so the left kidney lies in the upper half of x.
    assert kidney_x.size and kidney_x.min() > SMALL[2] / 2
    _, both = make_phantom(_seed_with("both"), SMALL)
    xb = np.nonzero(both.to_canonical() == KIDNEY)[2]
    assert xb.min() < SMALL[2] / 2 < xb.max()


@pytest.mark.parametrize("kidneys", ["right", "left"])
def test_kidney_side_is_correct_in_world_space_for_every_orientation(
    tmp_path: Path, kidneys: str
) -> None:
    seed = _seed_with(kidneys)
    canon = None
    for orientation in ("IPL", "RAS", "LPS", "ASR", "SLA"):
        ct, labels = make_phantom(seed, (16, 48, 40), orientation=orientation)
        assert "".join(ct.axcodes) == orientation
        write_volume(labels, tmp_path / f"{orientation}.nii.gz")
        back = read_volume(tmp_path / f"{orientation}.nii.gz")
        assert back.same_geometry(labels)
        idx = np.argwhere(back.array == KIDNEY).mean(axis=0)
        centre = (np.asarray(back.shape) - 1) / 2
        kidney_x, centre_x = _world(back, idx)[0], _world(back, centre)[0]
        # LPS: patient right is -x.
        assert (kidney_x < centre_x - 20) if kidneys == "right" else (kidney_x > centre_x + 20)
        c = back.to_canonical()
        canon = c if canon is None else canon
        assert np.array_equal(c, canon)  # same anatomy whatever the file orientation


def test_cli_writes_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ph"
    code = main(["phantoms", str(out), "--cases", "2", "--seed", "1", "--shape", "8", "32", "32"])
    assert code == 0
    assert "wrote 2 phantom cases" in capsys.readouterr().out
    cases = find_cases(out)
    assert len(cases) == 2
    lab = read_volume(cases[1].label)
    assert sorted(lab.to_canonical().shape) == [8, 32, 32]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cases", "0"], "at least 1"),
        (["--shape", "-4", "64", "64"], "SLICES ROWS COLS"),
        (["--shape", "8", "8", "64"], "rows, cols >= 16"),
        (["--workers", "0"], "workers"),
    ],
)
def test_cli_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "ph"
    assert main(["phantoms", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_cli_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["phantoms", str(blocker / "out"), "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "file.txt" in err
    assert blocker.read_text(encoding="utf-8") == "not a folder"
