"""The whole pipeline through the CLI, stage by stage, on tiny phantoms and tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.io import read_volume

#: A model and schedule small enough for seconds on one CPU core (not for accuracy).
TINY = [
    "model.architecture=unet_plain",
    "model.base_channels=4",
    "model.encoder_weights=none",
    "data.image_size=32",
    "data.num_workers=0",
    "data.samples_per_epoch=16",
    "train.batch_size=4",
    "train.epochs=1",
    "train.precision=32-true",
]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    paths = {name: root / name for name in ("data", "prep", "run", "pred", "eval", "report")}
    assert (
        main(
            [
                "phantoms",
                str(paths["data"]),
                "--cases",
                "5",
                "--seed",
                "3",
                "--shape",
                "12",
                "48",
                "48",
            ]
        )
        == 0
    )
    assert main(["preprocess", str(paths["data"]), str(paths["prep"]), "--workers", "1"]) == 0
    for phase in ("kidney", "tumor"):
        code = main(
            [
                "train",
                str(paths["prep"]),
                str(paths["run"]),
                "--phase",
                phase,
                "--quiet",
                *_sets(TINY),
            ]
        )
        assert code == 0
    assert (
        main(
            [
                "predict",
                str(paths["data"]),
                str(paths["pred"]),
                "--model",
                str(paths["run"]),
                "--no-progress",
                "--stats",
                str(root / "stats.json"),
            ]
        )
        == 0
    )
    assert main(["evaluate", str(paths["pred"]), str(paths["data"]), str(paths["eval"])]) == 0
    assert main(["report", str(paths["run"]), str(paths["eval"]), str(paths["report"])]) == 0
    paths["stats"] = root / "stats.json"
    return paths


def test_training_wrote_both_phases(pipeline: dict[str, Path]) -> None:
    for phase in ("kidney", "tumor"):
        folder = pipeline["run"] / phase
        for name in (
            "best.safetensors",
            "last.safetensors",
            "metrics.csv",
            "curves.png",
            "config.json",
        ):
            assert (folder / name).is_file(), f"{phase}/{name} missing"
        rows = list(csv.DictReader((folder / "metrics.csv").open(encoding="utf-8")))
        assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0


def test_predictions_keep_each_input_geometry(pipeline: dict[str, Path]) -> None:
    cases = sorted(p.name for p in pipeline["data"].iterdir() if p.name.startswith("case_"))
    preds = sorted(p.name.removesuffix(".nii.gz") for p in pipeline["pred"].glob("*.nii.gz"))
    assert preds == cases
    orientations = set()
    for case in cases:
        ct = read_volume(pipeline["data"] / case / "imaging.nii.gz")
        pred = read_volume(pipeline["pred"] / f"{case}.nii.gz")
        assert pred.same_geometry(ct, atol=1e-6), case
        assert set(np.unique(pred.array)) <= {0, 1, 2}
        orientations.add(ct.axcodes)
    # The phantoms are written in random orientations, so this checks several of them.
    assert len(orientations) > 1


def test_stats_match_written_labels(pipeline: dict[str, Path]) -> None:
    stats = json.loads(pipeline["stats"].read_text(encoding="utf-8"))
    text = json.dumps(stats)
    for case in (p.name.removesuffix(".nii.gz") for p in pipeline["pred"].glob("*.nii.gz")):
        assert case in text


def test_evaluation_and_report(pipeline: dict[str, Path]) -> None:
    rows = list(csv.DictReader((pipeline["eval"] / "per_case.csv").open(encoding="utf-8")))
    assert len(rows) == 5
    for row in rows:
        assert 0.0 <= float(row["dice_kidney_and_mass"]) <= 1.0
    summary = json.loads((pipeline["eval"] / "summary.json").read_text(encoding="utf-8"))
    assert Path(summary["pred_dir"]).resolve() == pipeline["pred"].resolve()
    assert summary["n_cases"] == 5 and summary["missing"] == []
    html = (pipeline["report"] / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in html and "case_0000" in html


def test_demo_command_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--cases", "5", "--seed", "5", *_sets(TINY)]) == 0
    for name in ("phantoms", "prep", "run", "pred", "eval", "report"):
        assert (out / name).is_dir(), name
    test_cases = json.loads((out / "prep" / "split.json").read_text(encoding="utf-8"))["test"]
    assert sorted(p.name for p in (out / "pred").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in test_cases
    )
    # The demo evaluates exactly the test split it predicted, with no case scored as missing.
    summary = json.loads((out / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == len(test_cases) and summary["missing"] == []
    printed = capsys.readouterr().out
    assert "report:" in printed and str(out / "report") in printed


def test_demo_rejects_too_few_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", str(tmp_path / "d"), "--cases", "4"]) == 2
    assert "--cases" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
