"""The stage-folder contracts: one reader per file, errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.errors import KidneysegError
from kidneyseg.formats import pred_dir, prep_dir, run_dir
from kidneyseg.stats import label_statistics
from kidneyseg.types import Volume
from kidneyseg.utils import package_version


def test_split_round_trip_and_subsets(tmp_path: Path) -> None:
    split = prep_dir.Split(train=("a", "b"), val=("c",), test=("d",), seed=4)
    prep_dir.write_split(tmp_path, split)
    back = prep_dir.read_split(tmp_path / prep_dir.SPLIT_FILE)
    assert back == split and back.subset("test") == ("d",)
    with pytest.raises(KidneysegError, match="unknown subset"):
        back.subset("holdout")


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "cannot parse"),
        (json.dumps({"train": ["a"], "val": "b", "test": []}), "lists of case ids"),
        (json.dumps([1, 2]), "lists of case ids"),
    ],
    ids=["broken", "not-a-list", "not-an-object"],
)
def test_bad_split_files_name_the_file(tmp_path: Path, payload: str, message: str) -> None:
    path = tmp_path / "split.json"
    path.write_text(payload, encoding="utf-8")
    with pytest.raises(KidneysegError, match=message) as info:
        prep_dir.read_split(path)
    assert "split.json" in str(info.value)


def test_metrics_csv_round_trip(tmp_path: Path) -> None:
    path = run_dir.phase_dir(tmp_path, "kidney") / run_dir.METRICS_FILE
    path.parent.mkdir(parents=True)
    assert run_dir.read_metrics(path) == []
    rows = [
        dict.fromkeys(run_dir.METRICS_COLUMNS, "1"),
        dict.fromkeys(run_dir.METRICS_COLUMNS, "2"),
    ]
    run_dir.write_metrics(path, rows)
    assert run_dir.read_metrics(path) == rows
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(run_dir.METRICS_COLUMNS)
    assert not run_dir.phase_trained(tmp_path, "kidney")  # no best checkpoint yet
    with pytest.raises(KidneysegError, match="kidney/best.safetensors"):
        run_dir.require_best_checkpoint(tmp_path, "kidney")
    with pytest.raises(KidneysegError, match="unknown phase"):
        run_dir.phase_dir(tmp_path, "liver")


def test_stats_file(tmp_path: Path) -> None:
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, :2, :2] = 1
    labels[1, 0, 0] = 2
    stats = {"c1": label_statistics(Volume(labels, (2.0, 1.0, 1.0)))}
    out = tmp_path / "stats.json"
    prov = pred_dir.provenance("0123abcd", "run", "cpu", "fp32")
    pred_dir.write_stats(out, stats, {"c2": "bad file"}, prov)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["format"] == pred_dir.STATS_FORMAT and doc["failed"] == {"c2": "bad file"}
    assert doc["format_version"] == 2 and doc["model"]["model_id"] == "0123abcd"
    assert doc["cases"]["c1"]["voxels"] == {"kidney": 4, "tumor": 1, "cyst": 0}
    assert doc["cases"]["c1"]["total"]["volume_with_masses_ml"] == 0.01
    assert pred_dir.seg_path(tmp_path / "c1.nii.gz").name == "c1.seg.dcm"
    assert (
        pred_dir.header_description(prov)
        == f"kidneyseg {package_version()} model 0123abcd cpu fp32"
    )
    assert pred_dir.output_path(tmp_path, "c1").name == "c1" + pred_dir.OUTPUT_SUFFIX
