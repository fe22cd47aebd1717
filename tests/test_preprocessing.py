"""Preprocessing: contract of PREP_DIR, split, statistics, resume, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.config import Config, resolve_config
from kidneyseg.data.kits import KitsCase
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import CASE_FILES, read_split_file, restore_geometry
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.normalization import HIST_BINS, hu_histogram, phase_normalization
from kidneyseg.preprocessing import preprocess, process_case, to_c_order
from kidneyseg.splitting import make_split, split_counts
from kidneyseg.types import Volume

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
# Column c = LPS direction of index axis c.
AXIAL_FIRST = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))  # (S, P, L)
RAS_LIKE = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))  # (R, A, S)
FLIPPED_AXIAL_FIRST = ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (-1.0, 0.0, 0.0))  # (I, A, R)


def write_case(
    root: Path,
    case_id: str,
    shape: tuple[int, int, int] = (12, 10, 5),
    spacing: tuple[float, float, float] = (0.8, 0.9, 3.0),
    direction: tuple[tuple[float, ...], ...] = IDENTITY,
    seed: int = 0,
    image: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_spacing: tuple[float, float, float] | None = None,
    label_name: str = "segmentation.nii.gz",
) -> Path:
    """A tiny KiTS case: random HU and three label blocks, in the given file geometry."""
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.integers(-1000, 600, size=shape).astype(np.int16)
    if labels is None:
        labels = np.zeros(image.shape, np.uint8)
        labels[2:7, 2:6, :] = 1
        labels[3:5, 3:5, 1:] = 2
        labels[6:8, 6:8, :2] = 3
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    origin = (-10.0 - seed, 20.0, 5.0 * seed)
    write_volume(Volume(image, spacing, origin, direction), folder / "imaging.nii.gz")
    lab_vol = Volume(labels, label_spacing or spacing, origin, direction)
    write_volume(lab_vol, folder / label_name)
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Five cases in different orientations and spacings, int16 and float32 images."""
    root = tmp_path / "data"
    write_case(root, "case_00000", seed=0)
    write_case(root, "case_00001", (6, 9, 11), (3.0, 0.7, 0.75), AXIAL_FIRST, seed=1)
    write_case(
        root,
        "case_00002",
        (9, 8, 7),
        (0.6, 0.6, 2.5),
        RAS_LIKE,
        seed=2,
        label_name="aggregated_MAJ_seg.nii.gz",
    )
    write_case(root, "case_00003", (7, 12, 10), (2.0, 0.9, 0.8), FLIPPED_AXIAL_FIRST, seed=3)
    rng = np.random.default_rng(4)
    float_hu = rng.uniform(-1100, 1500, size=(11, 10, 4)).astype(np.float32)
    float_hu[0, 0, 0], float_hu[1, 0, 0], float_hu[2, 0, 0] = 40000.7, -12.5, 2.5
    write_case(root, "case_00004", image=float_hu, spacing=(0.7, 0.8, 4.0), seed=4)
    return root


def run_cli(*argv: str) -> int:
    return main(["preprocess", *argv, "--workers", "1"])


def test_outputs_match_contract(data_dir: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    summary = preprocess(data_dir, prep, Config(), workers=1, progress=False)
    assert sorted(summary.processed) == [f"case_0000{i}" for i in range(5)]
    meta = json.loads((prep / "meta.json").read_text(encoding="utf-8"))
    assert (meta["format"], meta["format_version"]) == ("kidneyseg-prep", 1)
    assert meta["config"]["preprocess"]["split"] == [0.8, 0.1, 0.1]
    assert set(meta["normalization"]) == {"kidney", "tumor"}
    assert meta["normalization"]["kidney"]["window"] == [0.0, 200.0]
    assert meta["normalization"]["tumor"]["window"] is None
    for case_dir in sorted((data_dir).iterdir()):
        cid = case_dir.name
        out = prep / "cases" / cid
        assert sorted(p.name for p in out.iterdir()) == sorted(CASE_FILES)
        src = read_image(case_dir / "imaging.nii.gz")
        lab_src = read_labels(next(case_dir.glob("*seg*.nii.gz")))
        expected = np.clip(np.rint(src.to_canonical().astype(np.float64)), -32768, 32767)
        image = np.load(out / "image.npy", mmap_mode="r")
        label = np.load(out / "label.npy", mmap_mode="r")
        slices = np.load(out / "slices.npy")
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image.flags.c_contiguous and label.flags.c_contiguous
        np.testing.assert_array_equal(image, expected)
        np.testing.assert_array_equal(label, lab_src.to_canonical())
        assert slices.dtype == np.int64 and slices.shape == (image.shape[0], 3)
        for col, k in enumerate((1, 2, 3)):
            np.testing.assert_array_equal(slices[:, col], (label == k).sum(axis=(1, 2)))
        record = json.loads((out / "case.json").read_text(encoding="utf-8"))
        assert record["shape"] == list(image.shape) == meta["cases"][cid]["shape"]
        assert record["spacing_mm"] == pytest.approx(src.canonical_spacing)
        assert meta["cases"][cid]["spacing_mm"] == pytest.approx(src.canonical_spacing)
        assert meta["cases"][cid]["source_image"] == str((case_dir / "imaging.nii.gz").resolve())
        # case.json holds enough to put the canonical array back in the file's geometry.
        back = restore_geometry(record, np.asarray(label))
        assert back.same_geometry(lab_src)
        np.testing.assert_array_equal(back.array, lab_src.array)
        assert tuple(record["original"]["axcodes"]) == src.axcodes
    # Hand-worked canonical orders: LPS file -> reverse axes; RAS file -> flip x, y first.
    c0 = read_image(data_dir / "case_00000" / "imaging.nii.gz").array
    c2 = read_image(data_dir / "case_00002" / "imaging.nii.gz").array
    np.testing.assert_array_equal(np.load(prep / "cases/case_00000/image.npy"), c0.transpose())
    np.testing.assert_array_equal(
        np.load(prep / "cases/case_00002/image.npy"), c2[::-1, ::-1, :].transpose()
    )
    # The float image was rounded and clipped to int16.
    img4 = np.load(prep / "cases" / "case_00004" / "image.npy")
    assert img4.max() == 32767 and -12 in img4 and 2 in img4
    hist = np.load(prep / "hu_histogram.npz")
    assert set(hist.files) == {"all", "kidney_region"}
    assert hist["all"].dtype == np.int64 and hist["all"].shape == (HIST_BINS,)


def test_int_histogram_and_c_order_copy() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-32768, 32767, size=(40, 7, 70), dtype=np.int16)
    hu[0, 0, :4] = [-1025, -1024, 3071, 3072]
    # The integer fast path of hu_histogram counts exactly as its float path.
    np.testing.assert_array_equal(hu_histogram(hu), hu_histogram(hu.astype(np.float32)))
    # A transposed, flipped view (a KiTS file's canonical view) copied block by block.
    view = hu.transpose(2, 1, 0)[::-1, :, ::-1]
    out = to_c_order(view, np.int16)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)
    np.testing.assert_array_equal(to_c_order(view, np.float32, lambda b: b * 2.0), view * 2.0)
    assert to_c_order(hu, np.int16) is hu


def test_one_slice_case(tmp_path: Path) -> None:
    labels = np.zeros((10, 8, 1), np.uint8)
    labels[2:5, 2:5, 0] = 1
    labels[3, 3, 0] = 2
    write_case(tmp_path / "data", "case_00000", shape=(10, 8, 1), labels=labels)
    preprocess(tmp_path / "data", tmp_path / "prep", workers=1, progress=False)
    out = tmp_path / "prep" / "cases" / "case_00000"
    assert np.load(out / "image.npy").shape == (1, 8, 10)
    np.testing.assert_array_equal(np.load(out / "slices.npy"), [[8, 1, 0]])


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, (1, 0, 0)),
        (2, (1, 1, 0)),
        (3, (2, 1, 0)),
        (4, (3, 1, 0)),
        (5, (3, 1, 1)),
        (10, (8, 1, 1)),
        (300, (240, 30, 30)),
    ],
)
def test_split_counts(n: int, expected: tuple[int, int, int]) -> None:
    assert split_counts(n, (0.8, 0.1, 0.1)) == expected


def test_split_deterministic_and_disjoint() -> None:
    ids = [f"case_{i:05d}" for i in range(37)]
    a = make_split(ids, (0.8, 0.1, 0.1), seed=5)
    assert a == make_split(list(reversed(ids)), (0.8, 0.1, 0.1), seed=5)
    assert a != make_split(ids, (0.8, 0.1, 0.1), seed=6)
    sets = [set(a.train), set(a.val), set(a.test)]
    assert set().union(*sets) == set(ids) and sum(map(len, sets)) == len(ids)
    assert (len(a.train), len(a.val), len(a.test)) == (29, 4, 4)


def test_split_json_and_user_split(data_dir: Path, tmp_path: Path) -> None:
    cfg = resolve_config(overrides=["preprocess.seed=3"])
    preprocess(data_dir, tmp_path / "p1", cfg, workers=1, progress=False)
    written = json.loads((tmp_path / "p1" / "split.json").read_text(encoding="utf-8"))
    expected = make_split([f"case_0000{i}" for i in range(5)], (0.8, 0.1, 0.1), 3)
    assert written == expected.to_json() and written["seed"] == 3
    user = {
        "train": ["case_00001", "case_00004"],
        "val": ["case_00000", "case_00002"],
        "test": ["case_00003"],
    }
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(user))
    # Reuses p1's case arrays (resume) but writes the user's split.
    summary = preprocess(data_dir, tmp_path / "p1", split_file=split_file, progress=False)
    assert summary.processed == () and len(summary.skipped) == 5
    written = json.loads((tmp_path / "p1" / "split.json").read_text(encoding="utf-8"))
    assert {k: written[k] for k in ("train", "val", "test")} == user


def test_statistics_from_training_split_only(data_dir: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "split.json"
    split_file.write_text(
        json.dumps(
            {
                "train": ["case_00000", "case_00002"],
                "val": ["case_00001", "case_00004"],
                "test": ["case_00003"],
            }
        )
    )
    cfg = resolve_config(overrides=["data.kidney_window=20,45"])
    first = preprocess(data_dir, tmp_path / "a", cfg, split_file=split_file, progress=False)
    # Worked out directly from the training cases' files.
    hist = {"all": np.zeros(HIST_BINS, np.int64), "kidney_region": np.zeros(HIST_BINS, np.int64)}
    for cid in ("case_00000", "case_00002"):
        img = read_image(data_dir / cid / "imaging.nii.gz")
        lab = read_labels(next((data_dir / cid).glob("*seg*.nii.gz")))
        hist["all"] += hu_histogram(img.array)
        hist["kidney_region"] += hu_histogram(img.array, lab.array > 0)
    stored = np.load(tmp_path / "a" / "hu_histogram.npz")
    np.testing.assert_array_equal(stored["all"], hist["all"])
    np.testing.assert_array_equal(stored["kidney_region"], hist["kidney_region"])
    assert first.normalization["kidney"] == phase_normalization(hist, "kidney", (20.0, 45.0))
    assert first.normalization["tumor"] == phase_normalization(hist, "tumor", None)

    # Other val/test images: same statistics. Another training image: different statistics.
    changed = tmp_path / "data2"
    shutil.copytree(data_dir, changed)
    for cid in ("case_00001", "case_00003"):
        shutil.rmtree(changed / cid)
    write_case(changed, "case_00001", (6, 9, 11), (3.0, 0.7, 0.75), AXIAL_FIRST, seed=11)
    write_case(changed, "case_00003", (5, 5, 5), (1.0, 1.0, 1.0), IDENTITY, seed=13)
    second = preprocess(changed, tmp_path / "b", cfg, split_file=split_file, progress=False)
    assert second.normalization == first.normalization
    write_case(changed, "case_00000", seed=10)
    third = preprocess(changed, tmp_path / "b", cfg, split_file=split_file, progress=False)
    assert third.processed == ("case_00000",)  # changed source -> redone, others resumed
    assert third.normalization["kidney"] != first.normalization["kidney"]


def test_resume_skips_done_cases_and_ignores_leftovers(data_dir: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    preprocess(data_dir, prep, workers=1, progress=False)
    meta_before = json.loads((prep / "meta.json").read_text(encoding="utf-8"))
    done = prep / "cases" / "case_00001" / "image.npy"
    mtime = done.stat().st_mtime_ns
    # An interrupted run leaves a temp folder; a case folder missing a file is not done.
    leftover = prep / "cases" / ".case_00002.abc123.tmp"
    leftover.mkdir()
    (leftover / "image.npy").write_bytes(b"partial")
    (prep / "cases" / "case_00003" / "slices.npy").unlink()
    summary = preprocess(data_dir, prep, workers=1, progress=False)
    assert summary.processed == ("case_00003",)
    assert summary.skipped == ("case_00000", "case_00001", "case_00002", "case_00004")
    assert done.stat().st_mtime_ns == mtime
    assert not leftover.exists()
    assert (prep / "cases" / "case_00003" / "slices.npy").is_file()
    assert json.loads((prep / "meta.json").read_text(encoding="utf-8")) == meta_before


def test_parallel_matches_serial(data_dir: Path, tmp_path: Path) -> None:
    serial = preprocess(data_dir, tmp_path / "s", workers=1, progress=False)
    parallel = preprocess(data_dir, tmp_path / "p", workers=2, progress=False)
    assert serial.split == parallel.split and serial.normalization == parallel.normalization
    for cid in serial.processed:
        for name in ("image.npy", "label.npy", "slices.npy"):
            a = np.load(tmp_path / "s" / "cases" / cid / name)
            np.testing.assert_array_equal(a, np.load(tmp_path / "p" / "cases" / cid / name))


def test_parallel_error_stops_and_keeps_done_cases(data_dir: Path, tmp_path: Path) -> None:
    bad = np.zeros((12, 10, 5), np.uint8)
    bad[0, 0, 0] = 7
    write_case(data_dir, "case_00003", labels=bad)
    prep = tmp_path / "prep"
    with pytest.raises(KidneysegError, match=r"case_00003/segmentation.nii.gz: labels outside 0-3"):
        preprocess(data_dir, prep, workers=2, progress=False)
    assert not (prep / "meta.json").exists()
    assert not list((prep / "cases").glob(".*"))  # no temp folder left behind
    for folder in (prep / "cases").iterdir():
        assert folder.name != "case_00003"
        assert sorted(p.name for p in folder.iterdir()) == sorted(CASE_FILES)
        assert np.load(folder / "image.npy").dtype == np.int16


def test_cli_success(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(data_dir), str(tmp_path / "prep"), "--set", "preprocess.seed=2") == 0
    assert "preprocessed 5 case(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "prep" / "split.json").read_text(encoding="utf-8"))["seed"] == 2


def _mismatched_shape(root: Path) -> None:
    write_case(root, "case_00007", labels=np.zeros((12, 10, 4), np.uint8))


def _mismatched_geometry(root: Path) -> None:
    write_case(root, "case_00007", label_spacing=(0.8, 0.9, 2.0))


def _labels_outside(root: Path) -> None:
    labels = np.zeros((12, 10, 5), np.uint8)
    labels[1, 1, 1] = 5
    write_case(root, "case_00007", labels=labels)


def _nan_image(root: Path) -> None:
    image = np.full((12, 10, 5), -100.0, np.float32)
    image[3, 3, 3] = np.nan
    write_case(root, "case_00007", image=image)


def _normalised_image(root: Path) -> None:
    image = np.random.default_rng(0).uniform(0, 1, (12, 10, 5)).astype(np.float32)
    write_case(root, "case_00007", image=image)


def _missing_label(root: Path) -> None:
    (write_case(root, "case_00007") / "segmentation.nii.gz").unlink()


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (_mismatched_shape, r"case_00007/segmentation.nii.gz: shape .* differs"),
        (_mismatched_geometry, r"case_00007/segmentation.nii.gz: geometry.* differs"),
        (_labels_outside, r"case_00007/segmentation.nii.gz: labels outside 0-3 \(found \[5\]\)"),
        (_nan_image, r"case_00007/imaging.nii.gz: image contains .*NaN"),
        (_normalised_image, r"case_00007/imaging.nii.gz: not CT in HU"),
        (_missing_label, r"case_00007: case has imaging.nii.gz but no label file"),
    ],
)
def test_bad_case_cli_error(
    make_bad: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    write_case(root, "case_00000")
    make_bad(root)  # type: ignore[operator]
    prep = tmp_path / "prep"
    assert run_cli(str(root), str(prep)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not (prep / "meta.json").exists()
    assert not (prep / "cases" / "case_00007").exists()


def test_nan_image_names_case(tmp_path: Path) -> None:
    # Any readable format: the error names the case's file.
    image = np.full((6, 5, 4), -100.0, np.float32)
    image[1, 2, 3] = np.nan
    folder = tmp_path / "data" / "case_00009"
    folder.mkdir(parents=True)
    write_volume(Volume(image, (1.0, 1.0, 2.0)), folder / "imaging.nrrd")
    write_volume(Volume(np.zeros(image.shape, np.uint8), (1.0, 1.0, 2.0)), folder / "seg.nrrd")
    case = KitsCase("case_00009", folder / "imaging.nrrd", folder / "seg.nrrd")
    with pytest.raises(KidneysegError, match=r"case_00009/imaging.nrrd: image contains .*NaN"):
        process_case(case, tmp_path / "prep" / "cases")
    assert not (tmp_path / "prep" / "cases" / "case_00009").exists()


def test_empty_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert run_cli(str(tmp_path / "empty"), str(tmp_path / "prep")) == 2
    assert "no KiTS cases found" in capsys.readouterr().err
    assert not (tmp_path / "prep").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"train": ["case_00000"], "val": ["case_00000", "case_00001"], "test": []},
            "case case_00000 is listed in both train and val",
        ),
        (
            {"train": ["case_00000", "case_00009"], "val": ["case_00001"], "test": []},
            "case case_00009 is not in the data folder",
        ),
        ({"train": ["case_00000"], "val": [], "test": []}, "case case_00001 of the data folder"),
        ({"train": [], "val": ["case_00000"], "test": ["case_00001"]}, "training set is empty"),
        ({"train": ["case_00000"], "val": "case_00001"}, "must be a JSON object with lists"),
        ("{not json", "cannot parse split file"),
    ],
)
def test_bad_split_file(
    content: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    write_case(root, "case_00000")
    write_case(root, "case_00001", seed=1)
    split_file = tmp_path / "my_split.json"
    split_file.write_text(content if isinstance(content, str) else json.dumps(content))
    prep = tmp_path / "prep"
    assert run_cli(str(root), str(prep), "--split-file", str(split_file)) == 2
    err = capsys.readouterr().err
    assert "my_split.json" in err and message in err, err
    assert not prep.exists()


def test_cli_bad_workers_and_help(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preprocess", str(data_dir), str(tmp_path / "p"), "--workers", "0"]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--help"])
    assert exit_info.value.code == 0 and "--split-file" in capsys.readouterr().out


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="nope.json: split file not found"):
        read_split_file(tmp_path / "nope.json", ["case_00000"])
