"""Tests of kidneyseg.model_card (``kidneyseg info RUN_DIR``) and the model id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kidneyseg.cli import main
from kidneyseg.formats.run_dir import model_id
from kidneyseg.model_card import NO_LICENCE, model_card
from test_inference import make_model_dir


def _fake_prep(root: Path) -> Path:
    cases = {f"case_{i:05d}": {"source_image": f"/data/kits23/case_{i:05d}/imaging.nii.gz"}
             for i in range(10)}  # fmt: skip
    root.mkdir()
    (root / "meta.json").write_text(json.dumps({"cases": cases}), encoding="utf-8")
    split = {"seed": 0, "fractions": [0.8, 0.1, 0.1], "train": sorted(cases)[:8],
             "val": ["case_00008"], "test": ["case_00009"]}  # fmt: skip
    (root / "split.json").write_text(json.dumps(split), encoding="utf-8")
    return root


def test_model_card_and_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_model_dir(tmp_path / "run", ["model.licence=CC BY-NC-SA 4.0"])
    prep = _fake_prep(tmp_path / "prep")
    for phase in ("kidney", "tumor"):
        (run / phase / "config.json").write_text(json.dumps({"prep_dir": str(prep)}), "utf-8")
    card = model_card(run)
    assert card["licence"] == "CC BY-NC-SA 4.0" and card["complete"]
    assert card["model_id"] == model_id(run) and len(card["model_id"]) == 16
    data = card["phases"]["kidney"]["training_data"]
    assert data["cases"] == 10 and data["split"] == {"train": 8, "val": 1, "test": 1}
    assert data["sources"] == ["/data/kits23"]
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert f"model id     {card['model_id']}" in text and "train 8 / val 1 / test 1" in text
    assert main(["info", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == card["model_id"]
    # The id follows the weights, not the folder; other weights, another id.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert model_id(copy) == model_id(run)
    other = make_model_dir(tmp_path / "other")
    assert model_id(other) != model_id(run)
    assert model_card(other)["licence"] == NO_LICENCE
    assert model_card(other)["phases"]["tumor"]["training_data"] is None
    shutil.rmtree(other / "tumor")
    assert model_card(other)["model_id"] is None
    assert main(["info", str(tmp_path / "prep")]) == 2  # neither image nor model
