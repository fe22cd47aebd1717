"""The synthetic phantom cohort: determinism, labels, HU, geometry, world-space anatomy, CLI;
and every structure in its real place with its literature HU in each contrast phase."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.data import kidneys, scanner, shapes
from kidneyseg.data.kits import find_cases
from kidneyseg.data.phantoms import (
    DEFAULT_SHAPE,
    PHASES,
    PhantomAnatomy,
    make_phantom,
    make_phantom_anatomy,
    write_cohort,
)
from kidneyseg.data.tissues import HU_TABLE, hu_range
from kidneyseg.errors import KidneysegError
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
    paint = shapes.Canvas.paint

    def recording(self, box, mask, value, label=None, inside_cavity=True, organ=None):
        if label is not None:
            eff = mask & self.cavity2d[box[1], box[2]][None] if inside_cavity else mask
            calls.append((box, eff.copy(), label))
        paint(self, box, mask, value, label, inside_cavity, organ)

    # Concentric masses on the kidney centre, so cysts and tumors surely overlap.
    monkeypatch.setattr(kidneys, "mass_center", lambda rng, k, r, exophytic: k.center)
    monkeypatch.setattr(shapes.Canvas, "paint", recording)
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
    # An enhanced kidney: the arterial (corticomedullary) phase KiTS scans are in, in a patient
    # whose bolus brings the cortex to >= 200 HU (the bolus varies between patients, as in
    # KiTS, where the median slice has 3 % of its kidney voxels at >= 200 HU and many have none).
    seed = next(
        s
        for s in range(40)
        if make_phantom_anatomy(s, (4, 16, 16), "arterial").tissue_hu["kidney_cortex"] >= 200
    )
    ct, labels = make_phantom(seed, (32, 96, 96), phase="arterial")
    hu, lab = ct.to_canonical(), labels.to_canonical()
    windowed = np.clip(hu, 0, 200)
    assert (windowed[lab == KIDNEY] == 200).mean() > 0.02  # bright cortex saturates
    assert (windowed[hu > 300] == 200).all()  # as does bone: a model must learn shape


def test_spacing_ranges() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for shape, (lo, hi) in (((48, 128, 128), (2.5, 3.75)), ((300, 512, 512), (0.62, 0.94))):
            spacing, grid, _ = scanner.draw_geometry(rng, shape)
            assert lo <= spacing[1] == spacing[2] <= hi
            assert 0.5 <= spacing[0] <= 5.0
            assert len(grid.z) == shape[0]
    ct, _ = make_phantom(1)
    assert sorted(ct.to_canonical().shape) == sorted(DEFAULT_SHAPE)
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


# --- anatomy: every structure in its real place, with its literature HU per phase -------------

ORGAN_SHAPE = (48, 128, 128)  # the default cohort shape: ~2.5-3.75 mm pixels
KIDNEY_PARTS = ("kidney_cortex", "kidney_medulla", "collecting_system")
#: Organ -> tissues of `HU_TABLE` whose range its median HU must fall in (union of ranges).
ORGAN_TISSUES = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "pancreas": ("pancreas",),
    "psoas": ("muscle",),
    "quadratus_lumborum": ("muscle",),
    "abdominal_wall": ("muscle",),
    "erector_spinae": ("back_muscle",),
    "aorta": ("aorta",),
    "ivc": ("ivc_infrarenal", "ivc_suprarenal"),
    "kidney_cortex": ("kidney_cortex",),
    "kidney_medulla": ("kidney_medulla",),
    "collecting_system": ("excreted_contrast",),
    "subcutaneous_fat": ("subcutaneous_fat",),
    "visceral_fat": ("visceral_fat",),
    "perirenal_fat": ("perirenal_fat",),
    "lung": ("lung",),
    "intervertebral_disc": ("intervertebral_disc",),
    "cyst": ("cyst", "hyperdense_cyst"),
}
_CACHE: dict[tuple, PhantomAnatomy] = {}


def _anatomy(seed: int, phase: str | None = None, shape=ORGAN_SHAPE) -> PhantomAnatomy:
    key = (seed, phase, shape)
    if key not in _CACHE:
        _CACHE[key] = make_phantom_anatomy(seed, shape, phase)
    return _CACHE[key]


def _centroid(p: PhantomAnatomy, mask: np.ndarray) -> np.ndarray:
    """Mean (z, y, x) mm of a canonical mask (+x patient left, +y posterior, +z superior)."""
    iz, iy, ix = np.nonzero(mask)
    return np.array([p.grid.z[iz].mean(), p.grid.y[iy].mean(), p.grid.x[ix].mean()])


def _side(p: PhantomAnatomy, name: str, side: int) -> np.ndarray:
    """The part of organ ``name`` on the patient's right (side -1) or left (+1)."""
    x = p.grid.x[None, None, :]
    return p.organs[name] & (x * side > 0)


def _core(mask: np.ndarray) -> np.ndarray:
    """The mask eroded by one voxel in-plane: away from partial volume at the edges."""
    from scipy.ndimage import binary_erosion

    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    return binary_erosion(mask, cross)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_structure_is_painted(seed: int) -> None:
    p = _anatomy(seed)
    wanted = {
        "subcutaneous_fat", "abdominal_wall", "visceral_fat", "erector_spinae",
        "quadratus_lumborum", "psoas", "diaphragm_crus", "liver", "spleen", "pancreas",
        "stomach", "small_bowel", "aorta", "ivc", "renal_artery", "renal_vein", "ureter",
        "portal_vein", "vertebra", "intervertebral_disc", "spinal_canal", "rib",
        "perirenal_fat", "renal_sinus_fat", *KIDNEY_PARTS, "table",
    }  # fmt: skip
    painted = {name for name, mask in p.organs.items() if mask.any()}
    assert wanted <= painted, sorted(wanted - painted)
    assert any(name.startswith("colon_") for name in painted)
    assert p.phase in PHASES and p.metadata["phase"] == p.phase


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_liver_on_the_right_above_and_over_the_right_kidney(seed: int) -> None:
    p = _anatomy(seed)
    right = next(k for k in p.kidneys + [None] if k is None or k.side < 0)
    liver = _centroid(p, p.organs["liver"])
    assert liver[2] < -20  # patient's right
    if right is not None:
        assert liver[0] > right.center[0]  # mostly above the right kidney's centre ...
        low = p.grid.z[np.nonzero(p.organs["liver"].any(axis=(1, 2)))[0].min()]
        assert low <= right.center[0] + 25  # ... reaching down over it


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_spleen_on_the_left_posterolateral(seed: int) -> None:
    p = _anatomy(seed)
    spleen = _centroid(p, p.organs["spleen"])
    aorta = _centroid(p, p.organs["aorta"])
    assert spleen[2] > 40 and spleen[2] > 0.4 * p.body.cav_a  # left, lateral
    assert spleen[1] > aorta[1]  # behind the aorta: posterolateral
    left = [k for k in p.kidneys if k.side > 0]
    if left:
        assert spleen[0] > left[0].center[0]  # at the left kidney's upper pole and above


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_psoas_beside_the_spine_anterolateral_growing_caudally(seed: int) -> None:
    p = _anatomy(seed)
    b = p.body
    for side in (-1, 1):
        psoas = _centroid(p, _side(p, "psoas", side))
        assert side * psoas[2] > b.vb_rx  # beside the vertebral body
        assert psoas[1] < b.canal_y  # in front of the spinal canal: anterolateral to the spine
        for k in p.kidneys:
            if k.side == side:
                assert abs(psoas[2]) < abs(k.center[2])  # medial to the kidney
    area = p.organs["psoas"].sum(axis=(1, 2))
    k_l1 = int(np.argmin(np.abs(p.grid.z - b.level_z("L1"))))
    k_l4 = int(np.argmin(np.abs(p.grid.z - b.level_z("L4"))))
    if p.grid.z[0] <= b.level_z("L4"):
        assert area[k_l4] > area[k_l1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_back_muscles_behind_and_beside_the_spine(seed: int) -> None:
    p = _anatomy(seed)
    b = p.body
    for side in (-1, 1):
        erector = _centroid(p, _side(p, "erector_spinae", side))
        ql = _centroid(p, _side(p, "quadratus_lumborum", side))
        psoas = _centroid(p, _side(p, "psoas", side))
        assert erector[1] > b.canal_y  # paraspinal: behind the canal
        assert 10 < side * erector[2] < 100
        assert abs(ql[2]) > abs(psoas[2])  # quadratus lumborum lateral to the psoas,
        assert psoas[1] < ql[1] < erector[1]  # between psoas and erector spinae in depth
    # The paraspinal mass is large: more than the vertebral body's area on every slice.
    per_slice = p.organs["erector_spinae"].sum(axis=(1, 2)) * p.spacing[1] * p.spacing[2]
    assert per_slice.min() > np.pi * b.vb_rx * b.vb_ry


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aorta_left_anterior_of_the_spine_ivc_right(seed: int) -> None:
    p = _anatomy(seed)
    b = p.body
    aorta, ivc = _centroid(p, p.organs["aorta"]), _centroid(p, p.organs["ivc"])
    assert aorta[2] > 0 and aorta[1] < b.vb_front  # left of the midline, in front of the spine
    assert ivc[2] < 0 and ivc[2] < aorta[2] - 10  # right
    assert ivc[1] < b.vb_y


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kidneys_at_l1_to_l3_lateral_to_psoas_in_front_of_the_back_muscles(seed: int) -> None:
    p = _anatomy(seed)
    b = p.body
    lab = p.labels > 0
    for k in p.kidneys:
        mine = lab & (p.grid.x[None, None, :] * k.side > 0)
        c = _centroid(p, mine)
        assert b.level_range("L3")[0] <= c[0] <= b.level_range("L1")[1]
        assert k.side * c[2] > 0  # on its own side
        at_level = np.abs(p.grid.z - c[0]) < 15
        psoas = _side(p, "psoas", k.side) & at_level[:, None, None]
        if psoas.any():
            assert abs(c[2]) > abs(_centroid(p, psoas)[2]) + 15
        assert c[1] < _centroid(p, _side(p, "erector_spinae", k.side))[1]
        assert not (mine & p.organs["erector_spinae"]).any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gut_pancreas_lungs_ribs_table_in_their_places(seed: int) -> None:
    p = _anatomy(seed)
    b = p.body
    stomach = _centroid(p, p.organs["stomach"])
    assert stomach[2] > 0 and stomach[1] < b.vb_front  # left upper quadrant, anterior
    assert _centroid(p, p.organs["pancreas"])[1] < _centroid(p, p.organs["aorta"])[1]
    assert _centroid(p, p.organs["small_bowel"])[1] < b.vb_front
    for name, side in (("colon_ascending", -1), ("colon_descending", 1)):
        if p.organs.get(name) is not None and p.organs[name].any():
            assert side * _centroid(p, p.organs[name])[2] > 40  # in the flanks
    kidney_z = min(k.center[0] for k in p.kidneys)
    if "lung" in p.organs and p.organs["lung"].any():
        assert p.grid.z[np.nonzero(p.organs["lung"].any(axis=(1, 2)))[0].min()] > kidney_z
    assert _centroid(p, p.organs["rib"])[0] > kidney_z - 30
    assert _centroid(p, p.organs["table"])[1] > b.b_post - 5  # under the patient's back
    assert abs(_centroid(p, p.organs["vertebra"])[2]) < 5  # on the midline


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perirenal_fat_separates_the_kidneys(seed: int) -> None:
    from scipy.ndimage import binary_dilation

    p = _anatomy(seed)
    kidney = p.labels > 0
    ring = binary_dilation(kidney, np.ones((1, 3, 3), bool), iterations=2) & ~kidney
    assert np.mean(p.hu[ring] < -40) > 0.3  # a fat plane around most of each kidney
    assert (ring & p.organs["perirenal_fat"]).sum() > 0.3 * ring.sum()


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_organ_hu_in_the_literature_range_of_the_phase(seed: int, phase: str) -> None:
    p = _anatomy(seed, phase)
    checked = 0
    for organ, tissues in ORGAN_TISSUES.items():
        mask = p.organs.get(organ)
        if mask is None:
            continue
        core = _core(mask)
        if core.sum() < 10:  # too small for a robust median at this resolution
            continue
        lo = min(hu_range(t, phase)[0] for t in tissues)
        hi = max(hu_range(t, phase)[1] for t in tissues)
        median = float(np.median(p.hu[core]))
        assert lo - 15 <= median <= hi + 15, (organ, phase, median, (lo, hi))
        checked += 1
    assert checked >= 14
    tumor = _core(p.organs["tumor"]) if "tumor" in p.organs else np.zeros(0, bool)
    if tumor.sum() > 20:
        subtypes = p.metadata["tumor_types"].split(",")
        lo = min(
            hu_range("necrosis", phase)[0], *(hu_range(f"tumor_{t}", phase)[0] for t in subtypes)
        )
        hi = max(hu_range(f"tumor_{t}", phase)[1] for t in subtypes)
        assert lo - 15 <= np.median(p.hu[tumor]) <= hi + 15


def test_contrast_phases_change_hu_not_anatomy() -> None:
    shape = (40, 192, 192)  # fine enough to resolve the medullary pyramids
    seed = next(
        s for s in range(40) if _anatomy(s, "arterial", shape).metadata["kidneys"] == "both"
    )
    by_phase = {ph: _anatomy(seed, ph, shape) for ph in PHASES}
    ref = by_phase["arterial"]
    for p in by_phase.values():  # the same patient in every phase
        assert np.array_equal(p.labels, ref.labels)
        assert p.organs.keys() == ref.organs.keys()
        assert all(np.array_equal(p.organs[n], ref.organs[n]) for n in ref.organs)

    def median(ph: str, organ: str) -> float:
        return float(np.median(by_phase[ph].hu[_core(ref.organs[organ])]))

    # Non-contrast: kidney like muscle (~30-40 HU), cortex and medulla alike.
    kidney_nc = float(np.median(by_phase["noncontrast"].hu[_core(ref.labels == 1)]))
    assert 20 <= kidney_nc <= 50
    assert (
        abs(median("noncontrast", "kidney_cortex") - median("noncontrast", "kidney_medulla")) < 20
    )
    # Arterial (corticomedullary): bright cortex, darker medulla.
    assert median("arterial", "kidney_cortex") > median("arterial", "kidney_medulla") + 50
    # Venous (nephrographic): homogeneous.
    assert abs(median("venous", "kidney_cortex") - median("venous", "kidney_medulla")) < 30
    # Delayed (excretory): dense contrast in the collecting system.
    assert median("delayed", "collecting_system") > 250
    assert median("delayed", "collecting_system") > 2 * median("delayed", "kidney_cortex")
    assert median("arterial", "collecting_system") < 40
    # Blood pool and liver follow the bolus.
    aorta = [median(ph, "aorta") for ph in ("arterial", "venous", "delayed", "noncontrast")]
    assert aorta == sorted(aorta, reverse=True)
    assert median("venous", "liver") > median("arterial", "liver") > median("noncontrast", "liver")
    # The arterial spleen is mottled (arciform enhancement), later homogeneous.
    core = _core(ref.organs["spleen"])
    assert by_phase["arterial"].hu[core].std() > by_phase["venous"].hu[core].std()


def test_only_kidney_tumor_and_cyst_are_labelled() -> None:
    for seed in range(4):
        p = _anatomy(seed)
        labelled = np.zeros(p.labels.shape, bool)
        for name in (*KIDNEY_PARTS, "tumor", "cyst"):
            if name in p.organs:
                labelled |= p.organs[name]
        assert np.array_equal(p.labels > 0, labelled)
        for name, mask in p.organs.items():
            if name not in (*KIDNEY_PARTS, "tumor", "cyst"):
                assert not p.labels[mask].any(), name  # liver, psoas, bowel ...: background
        if "tumor" in p.organs:
            assert (p.labels[p.organs["tumor"]] == TUMOR).all()
        if "cyst" in p.organs:
            assert (p.labels[p.organs["cyst"]] == CYST).all()


def test_anatomy_api_matches_the_written_phantom_and_is_deterministic() -> None:
    a = make_phantom_anatomy(7, SMALL)
    b = make_phantom_anatomy(7, SMALL)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(a.organs[n], b.organs[n]) for n in a.organs)
    ct, labels = make_phantom(7, SMALL, orientation="RAS")
    assert np.array_equal(ct.to_canonical(), a.hu)
    assert np.array_equal(labels.to_canonical(), a.labels)
    assert ct.metadata["phase"] == a.phase
    fixed = make_phantom_anatomy(7, SMALL, phase="delayed")
    assert fixed.phase == "delayed" and np.array_equal(fixed.labels, a.labels)
    with pytest.raises(KidneysegError, match="contrast phase"):
        make_phantom(7, SMALL, phase="portal")


def test_tissue_table_is_complete_and_ordered() -> None:
    for name, ranges in HU_TABLE.items():
        assert set(ranges) == set(PHASES), name
        assert all(lo <= hi for lo, hi in ranges.values()), name
    assert hu_range("kidney_cortex", "noncontrast")[1] <= 50  # ~30-40 HU without contrast
    assert hu_range("kidney_cortex", "arterial")[0] > hu_range("kidney_medulla", "arterial")[1]
    assert hu_range("excreted_contrast", "delayed")[0] >= 300
    assert hu_range("cyst", "arterial") == hu_range("cyst", "noncontrast")  # never enhances
    assert hu_range("cyst", "noncontrast")[1] <= 20


def test_scanner_and_body_vary_between_patients() -> None:
    seen = [make_phantom_anatomy(s, (8, 32, 32)) for s in range(24)]
    assert {p.phase for p in seen} == set(PHASES)  # every phase occurs
    assert max(p.tissue_hu["oral_contrast"] for p in seen) > 150
    assert {p.metadata["oral_contrast"] for p in seen} == {"yes", "no"}
    noise = [float(p.metadata["noise_hu"]) for p in seen]
    assert 4 <= min(noise) and max(noise) <= 60 and max(noise) > 1.5 * min(noise)
    widths = [2 * p.body.a for p in seen]
    assert max(widths) > 1.3 * min(widths)  # body size varies ...
    fat = [p.body.adiposity for p in seen]
    assert min(fat) < 0.2 and max(fat) > 0.6  # ... and so does the fat
    thick = {
        p.spacing[0] for p in (make_phantom_anatomy(s, (n, 32, 32)) for s, n in ((0, 400), (1, 40)))
    }
    assert min(thick) < 1 and max(thick) >= 5  # thin and thick slices


def test_write_cohort_with_chosen_phases_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "c"
    write_cohort(out, cases=2, seed=1, shape=(8, 32, 32), progress=False, phases=["noncontrast"])
    stamps = [json.loads((out / f"case_0000{i}" / "phantom.json").read_text()) for i in range(2)]
    assert [s["phase"] for s in stamps] == ["noncontrast"] * 2
    assert stamps[0]["phases"] == ["noncontrast"]
    before = (out / "case_00000" / "imaging.nii.gz").stat().st_mtime_ns
    write_cohort(out, cases=2, seed=1, shape=(8, 32, 32), progress=False, phases=["noncontrast"])
    assert (out / "case_00000" / "imaging.nii.gz").stat().st_mtime_ns == before
    write_cohort(out, cases=1, seed=1, shape=(8, 32, 32), progress=False, phases=["delayed"])
    stamp = json.loads((out / "case_00000" / "phantom.json").read_text())
    assert stamp["phase"] == "delayed"  # other phases: rewritten
    with pytest.raises(KidneysegError, match="contrast phase"):
        write_cohort(out, cases=1, seed=1, shape=(8, 32, 32), progress=False, phases=["x"])


def test_cli_phases_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ph"
    args = ["phantoms", str(out), "--cases", "1", "--shape", "8", "32", "32"]
    assert main([*args, "--phases", "venous", "delayed"]) == 0
    stamp = json.loads((out / "case_00000" / "phantom.json").read_text())
    assert stamp["phase"] in ("venous", "delayed")
    assert main([*args, "--phases", "portal"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "contrast phase" in err
