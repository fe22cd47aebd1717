"""``kidneyseg predict`` end to end: single file, folder mode, shards, statistics, bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.types import Volume
from test_inference import (
    expected_labels,
    make_model_dir,
    phantom_canonical,
    volume_from_canonical,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("run"))


def _ct(seed: int = 0) -> Volume:
    return volume_from_canonical(phantom_canonical((5, 32, 32), seed=seed))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _predict(*args: str | Path) -> int:
    return main(["predict", *(str(a) for a in args), "--device", "cpu", "--no-progress"])


def test_single_file(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_volume(_ct(), tmp_path / "ct.nrrd")
    out = tmp_path / "result" / "labels.nii.gz"
    assert _predict(src, out, "--model", run_dir, "--batch-size", "2") == 0
    ct, labels = read_image(src), read_labels(out)
    assert labels.same_geometry(ct)
    np.testing.assert_array_equal(labels.array, expected_labels(ct.array))
    assert "1 predicted, 0 skipped" in capsys.readouterr().out
    # One CT with an explicit output file: replaced only with --overwrite (issue 13).
    assert _predict(src, out, "--model", run_dir, "--overwrite") == 0
    assert "1 predicted" in capsys.readouterr().out
    assert _predict(src, out, "--model", run_dir) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_kits_folder_bad_case_reported_others_done(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "kits"
    for i in range(3):
        write_volume(_ct(i), data / f"case_0000{i}" / "imaging.nii.gz")
    bad = Volume(np.random.default_rng(0).random((5, 32, 32)).astype(np.float32), (2, 1, 1))
    write_volume(bad, data / "case_00001" / "imaging.nii.gz")  # 0-1 values: not CT
    out, stats = tmp_path / "preds", tmp_path / "stats.json"
    assert _predict(data, out, "--model", run_dir, "--stats", stats) == 1
    captured = capsys.readouterr()
    assert _files(out) == ["case_00000.nii.gz", "case_00002.nii.gz"]
    assert "case_00001/imaging.nii.gz: not CT in HU: values lie in" in captured.err
    assert "2 predicted, 0 skipped (already done), 1 failed" in captured.out
    for case in ("case_00000", "case_00002"):
        ct = read_image(data / case / "imaging.nii.gz")
        np.testing.assert_array_equal(
            read_labels(out / f"{case}.nii.gz").array, expected_labels(ct.array)
        )
    report = json.loads(stats.read_text(encoding="utf-8"))
    assert set(report["cases"]) == {"case_00000", "case_00002"}
    assert "case_00001" in report["failed"]
    exp = expected_labels(read_image(data / "case_00002" / "imaging.nii.gz").array)
    assert report["cases"]["case_00002"]["voxels"]["tumor"] == int((exp == 2).sum())
    # Fix the bad case and run again: the two done cases are skipped, the fixed one predicted.
    write_volume(_ct(1), data / "case_00001" / "imaging.nii.gz")
    before = (out / "case_00000.nii.gz").stat().st_mtime_ns
    assert _predict(data, out, "--model", run_dir) == 0
    assert "1 predicted, 2 skipped" in capsys.readouterr().out
    assert (out / "case_00000.nii.gz").stat().st_mtime_ns == before
    assert len(_files(out)) == 3
    assert _predict(data, out, "--model", run_dir, "--overwrite") == 0
    assert "3 predicted, 0 skipped" in capsys.readouterr().out


def test_plain_folder_shards(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("p3", "p1", "p2"):
        write_volume(_ct(), tmp_path / "in" / f"{name}.mha")
    out = tmp_path / "out"
    assert _predict(tmp_path / "in", out, "--model", run_dir, "--shard", "2/2") == 0
    assert _files(out) == ["p2.mha"]  # folder mode keeps each input's format
    assert _predict(tmp_path / "in", out, "--model", run_dir, "--shard", "1/2") == 0
    assert _files(out) == ["p1.mha", "p2.mha", "p3.mha"]
    capsys.readouterr()
    for bad in ("3/2", "0/1", "half"):
        assert _predict(tmp_path / "in", out, "--model", run_dir, "--shard", bad) == 2
        assert "--shard" in capsys.readouterr().err


def test_dicom_folder(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("kidneyseg.dicom", reason="DICOM reader (kidneyseg.dicom) not available")
    from test_inference import write_dicom_series

    lps = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    series = write_dicom_series(volume_from_canonical(phantom_canonical(), lps), tmp_path / "s1")
    out = tmp_path / "out"
    assert _predict(series, out, "--model", run_dir) == 0
    assert _files(out) == ["s1.nii.gz", "s1.seg.dcm"]  # DICOM in: NIfTI and DICOM SEG out
    assert read_labels(out / "s1.nii.gz").same_geometry(read_image(series))
    nifti_only = tmp_path / "nifti_only"
    assert _predict(series, nifti_only, "--model", run_dir, "--output-format", "nifti") == 0
    assert _files(nifti_only) == ["s1.nii.gz"]


def test_split_subset_selects_cases(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "kits"
    for i in range(4):
        write_volume(_ct(i), data / f"case_0000{i}" / "imaging.nii.gz")
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps(
            {"train": ["case_00000", "case_00001"], "val": ["case_00002"], "test": ["case_00003"]}
        )
    )
    out = tmp_path / "pred"
    assert _predict(data, out, "--model", run_dir, "--split", split) == 0
    assert _files(out) == ["case_00003.nii.gz"]
    assert _predict(data, out, "--model", run_dir, "--split", split, "--subset", "val") == 0
    assert _files(out) == ["case_00002.nii.gz", "case_00003.nii.gz"]
    capsys.readouterr()
    # A split naming a case the input does not hold, an empty subset, a broken file: errors.
    split.write_text(json.dumps({"train": [], "val": [], "test": ["case_00009"]}))
    _assert_fails(capsys, _predict(data, out, "--model", run_dir, "--split", split), "case_00009")
    split.write_text(json.dumps({"train": [], "val": [], "test": []}))
    _assert_fails(capsys, _predict(data, out, "--model", run_dir, "--split", split), "empty")
    split.write_text("{not json")
    _assert_fails(capsys, _predict(data, out, "--model", run_dir, "--split", split), "split")
    _assert_fails(
        capsys,
        _predict(data, out, "--model", run_dir, "--split", tmp_path / "none.json"),
        "not found",
    )
    assert _files(out) == ["case_00002.nii.gz", "case_00003.nii.gz"]


def _assert_fails(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in line, line
    return line


def test_bad_inputs_clear_error_nothing_written(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import SimpleITK as sitk

    good = write_volume(_ct(), tmp_path / "in" / "good.nii.gz")
    out_dir = tmp_path / "out"
    out = out_dir / "x.nii.gz"

    flat = tmp_path / "in2d" / "slice.nii.gz"
    flat.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((32, 32), -500, np.int16)), str(flat))
    _assert_fails(capsys, _predict(flat, out, "--model", run_dir), "slice.nii.gz", "2D")

    unit = write_volume(
        Volume(np.random.default_rng(1).random((4, 32, 32)).astype(np.float32), (1, 1, 1)),
        tmp_path / "in3" / "unit.nii.gz",
    )
    _assert_fails(capsys, _predict(unit, out, "--model", run_dir), "unit.nii.gz", "not CT")

    labels = write_volume(
        Volume(np.tile(np.arange(4, dtype=np.uint8), (4, 32, 8)), (1, 1, 1)),
        tmp_path / "in4" / "seg.nii.gz",
    )
    _assert_fails(capsys, _predict(labels, out, "--model", run_dir), "seg.nii.gz", "label map")

    _assert_fails(
        capsys,
        _predict(tmp_path / "nope.nii.gz", out, "--model", run_dir),
        "nope.nii.gz",
        "no such file",
    )
    truncated = tmp_path / "in5" / "cut.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[:300])
    _assert_fails(capsys, _predict(truncated, out, "--model", run_dir), "cut.nii.gz")

    _assert_fails(capsys, _predict(good, out, "--model", tmp_path / "norun"), "model folder")
    _assert_fails(
        capsys, _predict(good, out_dir / "x.png", "--model", run_dir), "unsupported output format"
    )
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    _assert_fails(
        capsys, _predict(good, blocker / "x.nii.gz", "--model", run_dir), "is a file, not a folder"
    )
    _assert_fails(capsys, _predict(tmp_path / "in", blocker, "--model", run_dir), "not a folder")
    _assert_fails(capsys, _predict(tmp_path / "in", out, "--model", run_dir), "must be a folder")
    _assert_fails(
        capsys, _predict(good, out, "--model", run_dir, "--batch-size", "0"), "batch size"
    )
    _assert_fails(
        capsys,
        _predict(good, out, "--model", run_dir, "--set", "data.image_size=64"),
        "come from the checkpoints",
    )
    _assert_fails(
        capsys,
        _predict(good, out, "--model", run_dir, "--stats", blocker / "s.json"),
        "statistics file",
    )

    assert not out_dir.exists()
    assert _files(tmp_path / "in") == ["good.nii.gz"]
    assert blocker.read_text(encoding="utf-8") == "a file where a folder should be"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_folder(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_volume(_ct(), tmp_path / "ct.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = _predict(src, locked / "labels.nii.gz", "--model", run_dir)
        _assert_fails(capsys, code, "not writable")
        assert _files(locked) == []
    finally:
        locked.chmod(0o700)


def test_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--device",
        "--batch-size",
        "--shard",
        "--stats",
        "--overwrite",
        "--tta",
        "--threads",
    ):
        assert option in text


def test_tta_flag_reaches_both_phases(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kidneyseg.phase_runner import PhaseRunner

    seen: list[bool] = []
    configure = PhaseRunner.configure

    def spy(self: PhaseRunner, *args: object, **kwargs: object) -> PhaseRunner:
        runner = configure(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(runner.tta)
        return runner

    monkeypatch.setattr(PhaseRunner, "configure", spy)
    src = write_volume(_ct(), tmp_path / "ct.nrrd")
    for flags, expected in (((), False), (("--tta",), True)):
        out = tmp_path / f"labels_{expected}.nii.gz"
        assert _predict(src, out, "--model", run_dir, *flags) == 0
        # The last configuration of each phase is the one prediction runs with.
        assert seen[-2:] == [expected, expected]
        np.testing.assert_array_equal(
            read_labels(out).array, expected_labels(read_image(src).array)
        )


def test_threads_flag_sets_the_thread_count(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    # Recorded first, so the variable the CLI sets is undone after the test.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("OMP_NUM_THREADS")
    before = torch.get_num_threads()
    src = write_volume(_ct(), tmp_path / "ct.nrrd")
    try:
        assert _predict(src, tmp_path / "a.nii.gz", "--model", run_dir, "--threads", "1") == 0
        assert torch.get_num_threads() == 1  # not raised back to every core by the Predictor
        np.testing.assert_array_equal(
            read_labels(tmp_path / "a.nii.gz").array, expected_labels(read_image(src).array)
        )
        code = _predict(src, tmp_path / "b.nii.gz", "--model", run_dir, "--threads", "0")
        _assert_fails(capsys, code, "--threads must be >= 1")
        assert not (tmp_path / "b.nii.gz").exists()
    finally:
        torch.set_num_threads(before)
