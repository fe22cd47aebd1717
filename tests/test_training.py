"""One phase's training: learning, run folder, resume, predicted regions, hardware resolution.

Tiny settings throughout (32-px slices, plain U-Net of width 4, batch 4, a few steps).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import make_phantom
from kidneyseg.config import Config, resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.run_dir import METRICS_COLUMNS
from kidneyseg.hardware import resolve_hardware
from kidneyseg.inference import Predictor
from kidneyseg.models import load_checkpoint, read_checkpoint_meta
from kidneyseg.training import train_phase
from test_dataset import write_prep_dir

TINY = [
    "data.image_size=32",
    "model.architecture=unet_plain",
    "model.base_channels=4",
    "model.encoder_weights=none",
    "train.batch_size=4",
    "data.samples_per_epoch=16",
    "data.num_workers=0",
    "train.limit_val_batches=2",
    "train.accelerator=cpu",
]


def tiny(*overrides: str) -> Config:
    return resolve_config("paper", overrides=[*TINY, *overrides])


def rows(run: Path, phase: str) -> list[dict[str, str]]:
    with (run / phase / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prep_dir(tmp_path_factory.mktemp("prep") / "prep", size=32)


@pytest.fixture(scope="module")
def kidney_run(prep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of phase 1 with augmentation on (shared by several tests)."""
    run = tmp_path_factory.mktemp("run") / "run"
    train_phase(prep_dir, run, "kidney", tiny("train.epochs=2"), progress=False)
    return run


def test_run_folder_contents(kidney_run: Path, prep_dir: Path) -> None:
    out = kidney_run / "kidney"
    names = {p.name for p in out.iterdir()}
    assert {
        "best.safetensors",
        "last.safetensors",
        "last.ckpt",
        "metrics.csv",
        "curves.png",
        "config.json",
    } <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary leftovers
    assert not list(kidney_run.rglob("lightning_logs"))
    table = rows(kidney_run, "kidney")
    assert [int(r["epoch"]) for r in table] == [1, 2]
    assert tuple(table[0]) == METRICS_COLUMNS
    assert all(float(r["slices_per_s"]) > 0 and float(r["val_loss"]) > 0 for r in table)
    best = read_checkpoint_meta(out / "best.safetensors")
    val = [float(r["val_loss"]) for r in table]
    assert best.extra["epoch"] == int(np.argmin(val)) + 1
    assert best.extra["val_loss"] == pytest.approx(min(val), rel=1e-4)
    assert best.phase == "kidney" and best.normalization.window == (0.0, 200.0)
    assert read_checkpoint_meta(out / "last.safetensors").extra["epoch"] == 2
    stored = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert stored["config"]["data"]["image_size"] == 32 and stored["kidneyseg_version"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, meta = load_checkpoint(out / "best.safetensors")
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("phase", ["kidney", "tumor"])
def test_loss_goes_down_overfitting(prep_dir: Path, tmp_path: Path, phase: str) -> None:
    cfg = tiny("train.epochs=5", "data.augment=false", "train.lr=0.01", "model.base_channels=8")
    result = train_phase(prep_dir, tmp_path / "run", phase, cfg, progress=False)
    losses = [float(r["train_loss"]) for r in rows(tmp_path / "run", phase)]
    assert len(losses) == 5
    assert losses[-1] < 0.6 * losses[0]
    assert result.best_checkpoint.is_file() and 1 <= result.best_epoch <= 5
    assert phase in result.summary() and str(result.best_checkpoint) in result.summary()


def test_resume_extends_a_finished_run(kidney_run: Path, prep_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(kidney_run, run)
    before = rows(run, "kidney")
    result = train_phase(
        prep_dir, run, "kidney", tiny("train.epochs=3"), resume=True, progress=False
    )
    after = rows(run, "kidney")
    assert [int(r["epoch"]) for r in after] == [1, 2, 3]  # continued, not restarted
    assert after[:2] == before
    assert result.epochs == 3
    assert read_checkpoint_meta(run / "kidney" / "last.safetensors").extra["epoch"] == 3


class _Crash(L.Callback):
    """Simulates a killed run: fails in the middle of the second epoch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")


def test_forced_stop_then_resume(prep_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny("train.epochs=3")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_phase(prep_dir, run, "kidney", cfg, progress=False, callbacks=[_Crash()])
    assert [int(r["epoch"]) for r in rows(run, "kidney")] == [1]
    assert (run / "kidney" / "last.ckpt").is_file()
    with pytest.raises(KidneysegError, match="--resume"):
        train_phase(prep_dir, run, "kidney", cfg, progress=False)
    train_phase(prep_dir, run, "kidney", cfg, resume=True, progress=False)
    assert [int(r["epoch"]) for r in rows(run, "kidney")] == [1, 2, 3]


def _constant_kidney_model(path: Path, prep_dir: Path, logit: float) -> Path:
    """A phase-1 checkpoint that predicts kidney everywhere (logit > 0) or nowhere."""
    from kidneyseg.dataset import phase_norm_record
    from kidneyseg.formats.prep_dir import open_prep_dir
    from kidneyseg.models import build_model, save_checkpoint

    cfg = tiny()
    model = build_model(cfg.model)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(logit)
    norm = phase_norm_record(open_prep_dir(prep_dir), "kidney", cfg.data)
    save_checkpoint(path, model, cfg, "kidney", norm)
    return path


def test_tumor_phase_on_predicted_regions(prep_dir: Path, tmp_path: Path) -> None:
    cfg = tiny("train.epochs=1", "data.tumor_region=predicted")
    everywhere = _constant_kidney_model(tmp_path / "all.safetensors", prep_dir, 10.0)
    run = tmp_path / "run"
    train_phase(prep_dir, run, "tumor", cfg, kidney_model=everywhere, progress=False)
    assert (run / "tumor" / "best.safetensors").is_file()
    regions = run / "tumor" / "regions"
    assert json.loads((regions / "source.json").read_text(encoding="utf-8"))["checkpoint"] == str(
        everywhere
    )
    split = json.loads((prep_dir / "split.json").read_text(encoding="utf-8"))
    for case_id in split["train"] + split["val"]:
        region = np.load(regions / f"{case_id}.npy")
        assert region.shape == np.load(prep_dir / "cases" / case_id / "image.npy").shape
        assert region.all()
    # A phase-1 model that finds no kidney leaves the tumor phase nothing to learn from.
    nowhere = _constant_kidney_model(tmp_path / "none.safetensors", prep_dir, -10.0)
    with pytest.raises(KidneysegError, match="no training slice contains kidney .predicted"):
        train_phase(prep_dir, tmp_path / "run2", "tumor", cfg, kidney_model=nowhere, progress=False)
    assert not (tmp_path / "run2" / "tumor" / "best.safetensors").exists()


def test_bad_training_requests(prep_dir: Path, kidney_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(KidneysegError, match="nothing to resume"):
        train_phase(prep_dir, run, "kidney", tiny(), resume=True, progress=False)
    with pytest.raises(KidneysegError, match="tumor_region=predicted"):
        train_phase(
            prep_dir,
            run,
            "tumor",
            tiny(),
            progress=False,
            kidney_model=kidney_run / "kidney" / "best.safetensors",
        )
    with pytest.raises(KidneysegError, match="checkpoint not found"):
        train_phase(prep_dir, run, "tumor", tiny("data.tumor_region=predicted"), progress=False)
    with pytest.raises(KidneysegError, match="unknown phase"):
        train_phase(prep_dir, run, "liver", tiny(), progress=False)
    assert not run.exists()


def test_resolve_hardware_on_cpu() -> None:
    from kidneyseg.utils import cpu_has_native_bf16

    hw = resolve_hardware(tiny())
    # "auto" precision: bf16 autocast only where the CPU computes bf16 natively.
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert (hw.accelerator, hw.precision, hw.strategy, hw.world_size) == (
        "cpu",
        expected,
        "auto",
        1,
    )
    assert resolve_hardware(tiny("train.precision=32-true")).precision == "32-true"
    ddp = resolve_hardware(tiny("train.devices=2", "train.num_nodes=2"))
    assert (ddp.strategy, ddp.world_size, ddp.devices) == ("ddp", 4, 2)
    assert resolve_hardware(tiny("train.precision=bf16-mixed")).precision == "bf16-mixed"
    with pytest.raises(KidneysegError, match="divide evenly over 3"):
        resolve_hardware(tiny("train.devices=3"))
    with pytest.raises(KidneysegError, match="train.devices"):
        resolve_hardware(tiny("train.devices=many"))
    with pytest.raises(KidneysegError, match="train.precision"):
        resolve_hardware(tiny("train.precision=fp8"))
    if not torch.cuda.is_available():
        with pytest.raises(KidneysegError, match="no CUDA GPU"):
            resolve_hardware(tiny("train.accelerator=gpu"))
        assert resolve_hardware(Config()).precision == expected  # "auto" on a CPU machine


def test_loaders_with_workers_and_whole_batches(prep_dir: Path) -> None:
    from kidneyseg.loaders import make_loaders, prepare_training

    setup = prepare_training(
        prep_dir, "kidney", tiny("data.num_workers=1", "data.samples_per_epoch=10")
    )
    train, val = make_loaders(setup)
    assert len(train) == 2  # 10 samples -> 8: whole batches only (BatchNorm needs > 1)
    image, target = next(iter(train))  # served by a worker process (memory maps reopened there)
    assert image.shape == target.shape == (4, 1, 32, 32)
    assert val is not None and len(val.dataset) == 12  # all slices of the one validation case
    # Two processes share the epoch's draw without overlap (DDP).
    shards = [make_loaders(setup, rank=r, world_size=2)[0].sampler for r in (0, 1)]
    assert len(list(shards[0])) == len(list(shards[1])) == 4


class _CtrlC(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_ctrl_c_is_a_keyboard_interrupt_and_resumable(prep_dir: Path, tmp_path: Path) -> None:
    import signal

    run, cfg = tmp_path / "run", tiny("train.epochs=2")
    # Lightning itself would sys.exit(1) and leave SIGINT ignored.
    with pytest.raises(KeyboardInterrupt):
        train_phase(prep_dir, run, "kidney", cfg, progress=False, callbacks=[_CtrlC()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    train_phase(prep_dir, run, "kidney", cfg, resume=True, progress=False)
    assert [int(r["epoch"]) for r in rows(run, "kidney")] == [1, 2]


def test_bce_dice_loss_values_and_gradient() -> None:
    import math

    from kidneyseg.losses import BceDiceLoss

    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1.0
    # Logit 0: BCE = log 2; soft Dice = (2 * 0.5 * 16 + 1) / (0.5 * 32 + 16 + 1) = 17 / 33.
    loss = BceDiceLoss()(torch.zeros(2, 1, 4, 4), target)
    assert float(loss) == pytest.approx(math.log(2) + 1 - 17 / 33, abs=1e-6)
    # A confident, correct prediction costs almost nothing; a confident wrong one a lot.
    good = BceDiceLoss()(torch.where(target > 0, 20.0, -20.0), target)
    bad = BceDiceLoss()(torch.where(target > 0, -20.0, 20.0), target)
    assert float(good) < 1e-3 < 1.0 < float(bad)
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    BceDiceLoss()(logits, target).backward()
    assert logits.grad is not None
    assert (logits.grad[target > 0] < 0).all() and (logits.grad[target == 0] > 0).all()


def test_cosine_schedule_decays_lr(tmp_path: Path) -> None:
    from kidneyseg.training import SegmentationTask

    cfg = tiny("train.lr_schedule=cosine", "train.epochs=4")
    out = SegmentationTask(cfg, "kidney").configure_optimizers()
    scheduler = out["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(out["optimizer"].param_groups[0]["lr"])
        out["optimizer"].step()
        scheduler.step()
    assert lrs[0] == pytest.approx(cfg.train.lr) and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < lrs[0] / 2
    constant = SegmentationTask(tiny(), "kidney").configure_optimizers()
    assert isinstance(constant, torch.optim.Optimizer)  # the paper's plain Adam


def test_val_dice_is_global_over_the_epochs_validation_slices() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from kidneyseg.training import SegmentationTask, dice_from_counts

    task = SegmentationTask(tiny("data.augment=false"), "kidney")
    task.model = torch.nn.Identity()  # logit = input: a pixel is predicted where image > 0
    image = -torch.ones(4, 1, 2, 2)
    target = torch.zeros(4, 1, 2, 2)
    image[0, 0, 0, :] = 1.0  # slice 0: 2 predicted, 1 of them right, 3 true
    target[0, 0, 0, 0] = 1.0
    target[0, 0, 1, :] = 1.0
    image[2, 0, 0, 0] = 1.0  # slice 2: 1 predicted, 1 true, overlapping
    target[2, 0, 0, 0] = 1.0  # slices 1 and 3 empty in both
    loader = DataLoader(TensorDataset(image, target), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (logged,) = trainer.validate(task, dataloaders=loader, verbose=False)
    # Global over the epoch: 2 * (1 + 1) / (3 + 4) = 4/7, not the mean of the batches'
    # Dice ((2/5 + 1) / 2 = 0.7) nor of the slices'.
    assert logged["val_dice"] == pytest.approx(4 / 7)
    assert "val_loss" in logged
    assert dice_from_counts(0, 0, 0) == 1.0 and dice_from_counts(0, 2, 0) == 0.0
    empty = DataLoader(TensorDataset(-torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)))
    (logged,) = trainer.validate(task, dataloaders=empty, verbose=False)
    assert logged["val_dice"] == 1.0  # nothing predicted, nothing there: a perfect answer


@pytest.mark.slow
def test_val_dice_sums_the_counts_of_every_ddp_process() -> None:
    """Two CPU processes (DDP, gloo), each seeing half the validation slices: the logged Dice
    is the global one, not either process's own (rank 0: 2/5, rank 1: 1) nor their mean."""
    from torch.utils.data import DataLoader, TensorDataset

    from kidneyseg.training import SegmentationTask

    task = SegmentationTask(tiny("data.augment=false"), "kidney")
    task.model = torch.nn.Identity()
    image, target = -torch.ones(4, 1, 2, 2), torch.zeros(4, 1, 2, 2)
    image[0, 0, 0, :] = 1.0  # rank 0 sees slices 0 and 2, rank 1 slices 1 and 3
    target[0, 0, 0, 0] = 1.0
    target[0, 0, 1, :] = 1.0
    image[1, 0, 0, 0] = 1.0
    target[1, 0, 0, 0] = 1.0
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(TensorDataset(image, target), batch_size=1)
    (logged,) = trainer.validate(task, dataloaders=loader, verbose=False)
    assert logged["val_dice"] == pytest.approx(4 / 7)


@pytest.mark.parametrize("metric", ["dice", "loss"])
def test_checkpoint_metric_picks_the_best_epoch(
    prep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    import kidneyseg.training as training

    # The Dice of each epoch set by hand (its computation is tested above), peaking in
    # epoch 2, while the validation loss of this run falls every epoch (lowest in epoch 3).
    schedule = iter([0.2, 0.9, 0.5])
    monkeypatch.setattr(training, "dice_from_counts", lambda *counts: next(schedule))
    cfg = tiny("train.epochs=3", f"train.checkpoint_metric={metric}", "train.lr=0.01")
    result = train_phase(prep_dir, tmp_path / "run", "kidney", cfg, progress=False)
    table = rows(tmp_path / "run", "kidney")
    dice = [float(r["val_dice"]) for r in table]
    loss = [float(r["val_loss"]) for r in table]
    assert dice == [0.2, 0.9, 0.5] and int(np.argmin(loss)) + 1 == 3
    best = read_checkpoint_meta(tmp_path / "run" / "kidney" / "best.safetensors")
    if metric == "dice":
        assert best.extra["epoch"] == int(np.argmax(dice)) + 1 == result.best_epoch == 2
        assert best.extra["val_dice"] == pytest.approx(0.9)
        assert result.monitor == "val_dice" and "best val Dice 0.9000" in result.summary()
    else:  # the paper's rule, unchanged
        assert best.extra["epoch"] == result.best_epoch == 3
        assert result.monitor == "val_loss" and "best val loss" in result.summary()


def test_resume_refuses_another_checkpoint_metric(
    prep_dir: Path, kidney_run: Path, tmp_path: Path
) -> None:
    cfg = tiny("train.epochs=3", "train.checkpoint_metric=dice")
    # A run that chose its best checkpoint by loss is not resumed under another metric.
    run = tmp_path / "run"
    shutil.copytree(kidney_run, run)
    with pytest.raises(KidneysegError, match="checkpoint_metric=loss"):
        train_phase(prep_dir, run, "kidney", cfg, resume=True, progress=False)


def test_three_context_slices_train_and_predict_end_to_end(prep_dir: Path, tmp_path: Path) -> None:
    """2.5D: tiny k = 3 models of both phases train a few steps (neighbours 4 mm apart on the
    3 mm prep grid: interpolated), and the cascade runs them on the conftest phantom (2.5 mm
    slices along its third file axis, flipped in-plane)."""
    cfg = tiny("train.epochs=1", "data.context_slices=3", "data.context_mm=4.0")
    run = tmp_path / "run"
    for phase in ("kidney", "tumor"):
        train_phase(prep_dir, run, phase, cfg, progress=False)
        meta = read_checkpoint_meta(run / phase / "best.safetensors")
        assert meta.config.data.context_slices == meta.config.model.in_channels == 3
        assert meta.config.data.context_mm == 4.0
        model, _ = load_checkpoint(run / phase / "best.safetensors")
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
        assert np.isfinite([float(r["train_loss"]) for r in rows(run, phase)]).all()
    image = make_phantom().image
    for mode in ("naive", "fast"):
        overrides = ["inference.precision=fp32", f"inference.mode={mode}"]
        predictor = Predictor(run, device="cpu", batch_size=4, progress=False, overrides=overrides)
        labels = predictor.predict_volume(image)
        assert labels.same_geometry(image) and set(np.unique(labels.array)) <= {0, 1, 2}
    ct, spacing = image.to_canonical(), image.canonical_spacing
    assert spacing[0] == 2.5
    runner = predictor.phases["kidney"]
    kidney = runner.segment(ct, np.arange(len(ct)), spacing_z=spacing[0])
    assert kidney.shape == ct.shape
    with pytest.raises(KidneysegError, match="spacing_z"):
        runner.segment(ct, np.arange(len(ct)))
