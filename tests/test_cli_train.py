"""``kidneyseg train`` end to end, and every bad input: clear error, exit 2, nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kidneyseg.cli import main
from test_dataset import write_prep_dir

TINY = [
    "--set",
    "data.image_size=32",
    "--set",
    "model.architecture=unet_plain",
    "--set",
    "model.base_channels=4",
    "--set",
    "train.batch_size=4",
    "--set",
    "data.samples_per_epoch=8",
    "--set",
    "data.num_workers=0",
    "--set",
    "train.epochs=1",
    "--accelerator",
    "cpu",
]


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prep_dir(tmp_path_factory.mktemp("prep") / "prep", size=32)


def test_train_cli_writes_the_phase_folder(prep_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    code = main(
        ["train", str(prep_dir), str(run), "--phase", "tumor", "--preset", "fast", "--quiet", *TINY]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "tumor: best val loss" in out.out and "best.safetensors" in out.out
    stored = json.loads((run / "tumor" / "config.json").read_text(encoding="utf-8"))
    # fast preset < --set: the preset's lr stays, --set values win.
    assert stored["config"]["train"]["batch_size"] == 4
    assert stored["config"]["train"]["accelerator"] == "cpu"
    assert stored["config"]["model"]["encoder_weights"] == "none"
    assert (run / "tumor" / "best.safetensors").is_file()
    assert not (run / "kidney").exists()


def _broken(tmp_path: Path, kind: str) -> Path:
    if kind == "no_meta":
        root = write_prep_dir(tmp_path / "p", size=32)
        (root / "meta.json").unlink()
    elif kind == "no_split":
        root = write_prep_dir(tmp_path / "p", size=32)
        (root / "split.json").unlink()
    elif kind == "empty_train":
        root = write_prep_dir(tmp_path / "p", size=32)
        split = json.loads((root / "split.json").read_text(encoding="utf-8"))
        split["test"] += split["train"]
        split["train"] = []
        (root / "split.json").write_text(json.dumps(split))
    else:  # no kidney anywhere
        root = write_prep_dir(tmp_path / "p", size=32, kidney=False)
    return root


@pytest.mark.parametrize(
    ("kind", "phase", "message"),
    [
        ("no_meta", "kidney", "not a preprocessed folder .no meta.json"),
        ("no_split", "kidney", "missing split.json"),
        ("empty_train", "kidney", "no training cases"),
        ("no_kidney", "tumor", "kidney"),
    ],
)
def test_bad_prep_dirs(tmp_path: Path, capsys, kind: str, phase: str, message: str) -> None:  # noqa: ANN001
    root, run = _broken(tmp_path, kind), tmp_path / "run"
    code = main(["train", str(root), str(run), "--phase", phase, "--quiet", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.nope=1"], "unknown key train.nope"),
        (["--set", "train.batch_size=four"], "expected int"),
        (["--set", "train.lr=0"], "train.lr must be > 0"),
        (["--set", "train.batch_size=0"], "train.batch_size must be >= 1"),
        (["--devices", "3"], "divide evenly over 3 processes"),
        (["--devices", "zero"], "train.devices"),
        (["--resume"], "nothing to resume"),
        (["--config", "missing.toml"], "config file not found"),
    ],
)
def test_bad_config_and_flags(prep_dir: Path, tmp_path: Path, capsys, args, message) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    code = main(["train", str(prep_dir), str(run), "--phase", "kidney", "--quiet", *TINY, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert not run.exists()


def test_missing_prep_dir_and_phase(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert (
        main(["train", str(tmp_path / "nowhere"), str(tmp_path / "run"), "--phase", "kidney"]) == 2
    )
    assert "preprocessed folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", str(tmp_path), str(tmp_path / "run")])  # --phase is required
    assert exc.value.code == 2
    assert not (tmp_path / "run").exists()
