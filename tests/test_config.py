"""Config: presets, precedence defaults < preset < file < --set, validation, round trips."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kidneyseg.config import (
    PRESETS,
    Config,
    config_from_dict,
    config_to_dict,
    dump_config,
    resolve_config,
)
from kidneyseg.errors import KidneysegError


def test_defaults_are_the_paper_settings() -> None:
    cfg = resolve_config()
    assert cfg == Config()
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == (128, 100, 1e-3)
    assert cfg.data.kidney_window == (0.0, 200.0) and cfg.data.image_size == 512
    assert cfg.model.architecture == "unet_resnet34"
    # Issue 12's switches are off: best by val loss, no TTA, no component filter.
    assert cfg.train.checkpoint_metric == "loss" and cfg.inference.tta is False
    assert cfg.postprocess.kidney_components == 0


def test_fast_preset_applies_its_values() -> None:
    cfg = resolve_config("fast")
    for section, values in PRESETS["fast"].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
def test_precedence_defaults_file_set(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"train": {"lr": 0.01, "epochs": 7}}))
    elif suffix == ".toml":
        path.write_text("[train]\nlr = 0.01\nepochs = 7\n")
    else:
        path.write_text("train:\n  lr: 0.01\n  epochs: 7\n")
    from_file = resolve_config("fast", path)
    assert (from_file.train.lr, from_file.train.epochs) == (0.01, 7)
    assert from_file.train.batch_size == PRESETS["fast"]["train"]["batch_size"]  # preset kept
    both = resolve_config("fast", path, ["train.lr=0.02", "data.kidney_window=20,45"])
    assert (both.train.lr, both.train.epochs) == (0.02, 7)  # --set wins, file value kept
    assert both.data.kidney_window == (20.0, 45.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.nope=1", "unknown key train.nope"),
        ("nosection.lr=1", "unknown config section"),
        ("train.batch_size=abc", "expected int"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.lr=-1e-3", "train.lr must be > 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("data.image_size=100", "multiple of 32"),
        ("data.kidney_window=200,0", "low < high"),
        ("data.augment=maybe", "expected bool"),
        ("data.normalization=minmax", "data.normalization must be zscore or window"),
        ("data.normalization=window", "window needs data.tumor_window"),
        ("train.loss=dice", "train.loss must be bce or bce_dice"),
        ("train.lr_schedule=step", "train.lr_schedule must be constant or cosine"),
        ("inference.precision=fp8", "inference.precision must be auto"),
        ("train.checkpoint_metric=f1", "train.checkpoint_metric must be loss or dice"),
        ("postprocess.kidney_components=-1", "postprocess.kidney_components must be >= 0"),
        ("postprocess.kidney_components=1.5", "expected int"),
        ("inference.tta=sometimes", "expected bool"),
        ("trainlr=1", "use section.key=value"),
        ("data.tumor_classes=cyst", "data.tumor_classes must be tumor"),
        ("data.tumor_classes=cyst,tumor", "data.tumor_classes must be tumor"),
    ],
)
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(KidneysegError, match=message):
        resolve_config(overrides=[override])


def test_bad_files_and_presets(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="unknown preset"):
        resolve_config("slow")
    with pytest.raises(KidneysegError, match="config file not found"):
        resolve_config(config_file=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KidneysegError, match="cannot parse config"):
        resolve_config(config_file=bad)


def test_dump_and_rebuild(tmp_path: Path) -> None:
    cfg = resolve_config("fast", overrides=["data.tumor_window=-100,300"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    dump_config(cfg, tmp_path / "config.json", kidneyseg_version="0.1.0")
    stored = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert stored["kidneyseg_version"] == "0.1.0"
    assert config_from_dict(stored["config"]) == cfg


def test_kits_preset_and_composed_presets() -> None:
    assert Config().data.tumor_classes == "tumor"  # the paper: phase 2 predicts tumor alone
    assert "tumor_classes" not in PRESETS["fast"].get("data", {})  # fast stays tumor-only
    kits = resolve_config("kits")
    assert kits.data.tumor_classes == "tumor,cyst"
    assert kits == replace(Config(), data=replace(Config().data, tumor_classes="tumor,cyst"))
    # Presets compose left to right: the fast settings, and phase 2 with cysts.
    fast_kits = resolve_config("fast,kits")
    assert fast_kits == resolve_config("fast", overrides=["data.tumor_classes=tumor,cyst"])
    assert resolve_config("kits, fast") == fast_kits  # no key in common: order is free here
    assert fast_kits.data.image_size == 128 and fast_kits.train.loss == "bce_dice"
    with pytest.raises(KidneysegError, match="unknown preset 'nope'.*fast,kits"):
        resolve_config("fast,nope")


def test_rare_fraction_is_checked_and_only_the_fast_preset_sets_it() -> None:
    assert resolve_config().data.rare_fraction == 0.0  # the paper: no class preferred
    assert resolve_config("fast").data.rare_fraction == 0.5
    with pytest.raises(KidneysegError, match="rare_fraction"):
        resolve_config(overrides=["data.rare_fraction=1.5"])
