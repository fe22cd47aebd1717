"""``kidneyseg evaluate`` end to end on tiny label maps, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.io import write_volume
from kidneyseg.types import Volume

SPACING = (0.8, 0.7, 2.5)


def _labels(shift: int = 0, shape: tuple[int, int, int] = (12, 10, 6)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[3 + shift : 9 + shift, 2:8, 1:5] = 1
    labels[4 + shift : 6 + shift, 3:5, 2:4] = 2
    return labels


def _write(path: Path, labels: np.ndarray, spacing=SPACING) -> Path:
    return write_volume(Volume(labels, spacing, case_id=path.name), path)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(pred_dir, gt_dir, out_dir) with two good cases in the KiTS layout; out_dir not created."""
    preds, gts = tmp_path / "preds", tmp_path / "gt"
    for case, shift in (("case_00001", 0), ("case_00002", 1)):
        _write(gts / case / "segmentation.nii.gz", _labels())
        _write(preds / f"{case}.nii.gz", _labels(shift))
    return preds, gts, tmp_path / "eval"


def test_cli_evaluate_prints_table_and_writes_files(dirs, capsys) -> None:
    preds, gts, out = dirs
    assert main(["evaluate", str(preds), str(gts), str(out), "--workers", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "| metric | column | mean | median | std | n |" in stdout
    assert str(out.resolve() / "per_case.csv") in stdout
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "summary.json", "summary.md"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == 2
    # case 1 is perfect, case 2 is shifted: the mean Dice is between them.
    assert 0.5 < summary["metrics"]["dice_kidney_and_mass"]["mean"] < 1.0
    assert summary["metrics"]["dice_kidney_and_mass"]["n"] == 2


def test_cli_evaluate_keeps_other_files_in_out_dir(dirs, capsys) -> None:
    preds, gts, out = dirs
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["evaluate", str(preds), str(gts), str(out), "--workers", "1"]) == 0
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def _shape_mismatch(preds: Path, gts: Path) -> str:
    _write(preds / "case_00002.nii.gz", _labels(shape=(12, 10, 7)))
    return "case_00002.nii.gz"


def _geometry_mismatch(preds: Path, gts: Path) -> str:
    _write(preds / "case_00002.nii.gz", _labels(), spacing=(0.8, 0.7, 5.0))
    return "case_00002.nii.gz"


def _missing_reference(preds: Path, gts: Path) -> str:
    _write(preds / "case_00003.nii.gz", _labels())
    return "case_00003"


def _missing_prediction(preds: Path, gts: Path) -> str:
    _write(gts / "case_00003" / "segmentation.nii.gz", _labels())
    return "1 of 3 case(s) to evaluate have no prediction <case>.nii.gz (first: case_00003)"


def _empty_predictions(preds: Path, gts: Path) -> str:
    for p in preds.iterdir():
        p.unlink()
    return str(preds)


def _corrupt_prediction(preds: Path, gts: Path) -> str:
    (preds / "case_00002.nii.gz").write_bytes(b"not a nifti file")
    return "case_00002.nii.gz"


def _labels_out_of_range(preds: Path, gts: Path) -> str:
    _write(preds / "case_00001.nii.gz", _labels() * 3)  # 6 is not a label
    return "case_00001.nii.gz"


def _missing_gt_dir(preds: Path, gts: Path) -> str:
    import shutil

    shutil.rmtree(gts)
    return str(gts)


@pytest.mark.parametrize(
    ("make_bad", "words", "workers"),
    [
        (_shape_mismatch, "shape", 1),
        (_geometry_mismatch, "geometry", 1),
        (_geometry_mismatch, "geometry", 2),  # the error comes back from a worker process
        (_missing_reference, "no reference", 1),
        (_missing_prediction, "--allow-missing", 1),
        (_empty_predictions, "no predictions", 1),
        (_corrupt_prediction, "image", 1),  # wording is io.read_volume's
        (_labels_out_of_range, "labels outside", 1),
        (_missing_gt_dir, "not found", 1),
    ],
)
def test_cli_evaluate_bad_input(dirs, capsys, make_bad, words: str, workers: int) -> None:
    preds, gts, out = dirs
    named = make_bad(preds, gts)
    argv = ["evaluate", str(preds), str(gts), str(out), "--workers", str(workers)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert words in err and named in err
    assert not out.exists()  # nothing written, not even the folder


def test_cli_evaluate_failure_leaves_previous_results(dirs, capsys) -> None:
    preds, gts, out = dirs
    assert main(["evaluate", str(preds), str(gts), str(out), "--workers", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _geometry_mismatch(preds, gts)
    assert main(["evaluate", str(preds), str(gts), str(out), "--workers", "1"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _split(path: Path, test: list[str], train: list[str] | None = None) -> Path:
    payload = {"train": train or ["case_00001"], "val": [], "test": test}
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_cli_evaluate_missing_prediction_message(dirs, capsys) -> None:
    preds, gts, out = dirs
    _missing_prediction(preds, gts)
    assert main(["evaluate", str(preds), str(gts), str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {preds}: 1 of 3 case(s) to evaluate have no prediction <case>.nii.gz "
        "(first: case_00003); pass --split/--subset to evaluate a subset, or --allow-missing "
        "to score missing cases as empty predictions"
    )


def test_cli_evaluate_allow_missing_says_so(dirs, capsys) -> None:
    preds, gts, out = dirs
    _missing_prediction(preds, gts)
    argv = ["evaluate", str(preds), str(gts), str(out), "--workers", "1", "--allow-missing"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "warning: 1 of 3 case(s) had no prediction" in captured.err
    assert "case_00003" in captured.err and "scored as empty" in captured.out
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == 3 and summary["missing"] == ["case_00003"]
    assert summary["metrics"]["dice_kidney_and_mass"]["n"] == 3
    rows = (out / "per_case.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].endswith(",missing") and rows[3].startswith("case_00003,0,0,")
    assert rows[3].endswith(",1") and rows[1].endswith(",0")


@pytest.mark.parametrize("subset", [None, "test", "train"])
def test_cli_evaluate_split_subset(dirs, capsys, tmp_path: Path, subset) -> None:
    preds, gts, out = dirs
    _missing_prediction(preds, gts)  # not in the split's test set: not expected
    split = _split(tmp_path / "split.json", test=["case_00002"])
    argv = ["evaluate", str(preds), str(gts), str(out), "--workers", "1", "--split", str(split)]
    assert main(argv + (["--subset", subset] if subset else [])) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    expected = ["case_00001"] if subset == "train" else ["case_00002"]
    assert summary["n_cases"] == 1 and summary["missing"] == []
    rows = (out / "per_case.csv").read_text(encoding="utf-8").splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == expected
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--subset", "test"], "--subset needs --split"),
        (["--split", "{tmp}/nope.json"], "split file not found"),
        (["--split", "{tmp}/split.json", "--subset", "val"], "'val' subset is empty"),
        (["--split", "{tmp}/split.json", "--subset", "train"], "no reference segmentation"),
        (["--split", "{tmp}/split.json"], "have no prediction"),
    ],
)
def test_cli_evaluate_bad_split(dirs, capsys, tmp_path: Path, extra, words) -> None:
    preds, gts, out = dirs
    _split(tmp_path / "split.json", test=["case_00001", "case_00002", "case_00009"],
           train=["case_00004"])  # fmt: skip
    _write(gts / "case_00009" / "segmentation.nii.gz", _labels())
    argv = ["evaluate", str(preds), str(gts), str(out), "--workers", "1"]
    assert main(argv + [arg.format(tmp=tmp_path) for arg in extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert words in err
    assert not out.exists()
