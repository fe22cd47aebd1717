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
