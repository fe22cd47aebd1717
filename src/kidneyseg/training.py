"""One phase's training with Lightning (paper §4.2): BCE with logits, Adam, best by val loss.

`train_phase` reads a preprocessed folder and writes ``RUN_DIR/<phase>/`` (docs/formats.md):
``best.safetensors`` (lowest validation loss), ``last.safetensors``, ``last.ckpt`` (Lightning
state for ``resume``), ``metrics.csv``, ``curves.png`` (paper Fig. 6) and ``config.json``.
Only global rank 0 writes. A killed run continues from the last finished epoch with
``resume=True`` (CLI ``--resume``); raise ``train.epochs`` to extend a finished run.

Hardware comes from the config: ``train.accelerator`` / ``train.devices`` /
``train.num_nodes`` (CLI ``--accelerator`` / ``--devices`` / ``--num-nodes``).
``train.precision = "auto"`` is bf16 autocast on a CUDA GPU that supports it (fp16 autocast on
older GPUs), and on CPUs with native bf16 (AVX512-BF16/AMX; ~2x faster per step), else fp32.
``train.channels_last`` applies on CPU too (measured ~10 % faster per step for the ResNet34
U-Net at 128 px on 2 cores).
``train.batch_size`` is the *global* batch (paper: 128), split evenly over the processes.

Multi-GPU / multi-node runs use DDP (strategy ``"ddp"``) when more than one process results:

* one node, N GPUs: ``kidneyseg train PREP RUN --phase kidney --devices N`` (Lightning starts
  the N processes itself), or ``torchrun --nproc-per-node N -m kidneyseg train ... --devices N``.
* several nodes with torchrun: on every node ``torchrun --nnodes M --nproc-per-node N
  --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m kidneyseg train ... --devices N
  --num-nodes M``.
* SLURM: ``#SBATCH --nodes=M --ntasks-per-node=N --gpus-per-node=N`` and
  ``srun kidneyseg train ... --devices N --num-nodes M`` (Lightning reads the SLURM variables).

Example:
    >>> from kidneyseg.config import resolve_config
    >>> result = train_phase("prep", "run", "kidney", resolve_config("fast"))  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    kidney: best val loss 0.0412 at epoch 6/6 in 141 s; checkpoint run/kidney/best.safetensors
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader

from kidneyseg.config import Config, dump_config, validate
from kidneyseg.dataset import (
    ForegroundSampler,
    GpuAugment,
    PrepDir,
    SliceDataset,
    open_prep_dir,
    phase_norm_record,
    predict_kidney_regions,
)
from kidneyseg.errors import KidneysegError
from kidneyseg.models import build_model, read_checkpoint_meta, save_checkpoint
from kidneyseg.types import PHASES
from kidneyseg.utils import atomic_path, atomic_write_text, package_version

METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "slices_per_s")
_PRECISIONS = {"32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"}


@dataclass(frozen=True)
class Hardware:
    """What Lightning runs on, resolved from ``train.*`` (see `resolve_hardware`)."""

    accelerator: str
    devices: int | list[int] | str
    num_nodes: int
    world_size: int
    strategy: str
    precision: str

    @property
    def cuda(self) -> bool:
        return self.accelerator == "gpu"


def _parse_devices(value: str, accelerator: str) -> tuple[int | list[int] | str, int]:
    text = value.strip().lower()
    available = torch.cuda.device_count() if accelerator == "gpu" else os.cpu_count() or 1
    if text in ("auto", "-1"):
        return (1, 1) if accelerator == "cpu" else ("auto" if text == "auto" else -1, available)
    try:
        if "," in text:
            ids = [int(v) for v in text.split(",") if v.strip()]
            return ids, len(ids)
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise KidneysegError(
            f"config train.devices must be auto, a count >= 1 or a list of ids "
            f"like 0,1 (got {value!r})"
        )
    if accelerator == "gpu" and n > available:
        raise KidneysegError(f"train.devices={n} but only {available} CUDA GPU(s) are visible")
    return n, n


def resolve_hardware(cfg: Config) -> Hardware:
    """Accelerator, devices, DDP strategy and precision for ``cfg.train`` on this machine.

    Example:
        >>> resolve_hardware(Config()).precision in ("32-true", "bf16-mixed", "16-mixed")
        True
    """
    t = cfg.train
    accelerator = t.accelerator.lower()
    if accelerator == "cuda":
        accelerator = "gpu"
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator not in ("cpu", "gpu", "mps"):
        raise KidneysegError(
            f"config train.accelerator must be auto, cpu or gpu (got {t.accelerator!r})"
        )
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise KidneysegError(
            "train.accelerator=gpu but no CUDA GPU is available; use --accelerator cpu"
        )
    devices, count = _parse_devices(t.devices, accelerator)
    world_size = count * t.num_nodes
    precision = t.precision
    if precision == "auto":
        if accelerator == "gpu":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            from kidneyseg.utils import cpu_has_native_bf16

            precision = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    elif precision not in _PRECISIONS:
        raise KidneysegError(
            f"config train.precision must be auto or one of "
            f"{', '.join(sorted(_PRECISIONS))} (got {precision!r})"
        )
    if t.batch_size % world_size:
        raise KidneysegError(
            f"train.batch_size={t.batch_size} (global) must divide evenly over "
            f"{world_size} processes"
        )
    strategy = "ddp" if world_size > 1 else "auto"
    return Hardware(accelerator, devices, t.num_nodes, world_size, strategy, precision)


class BceDiceLoss(nn.Module):
    """BCE with logits plus soft Dice over the whole batch (nnU-Net's "batch Dice").

    Not the paper's loss (that is plain BCE, the default): an option for short runs, where
    plain BCE on rare tumor pixels can settle on predicting background everywhere.

    Example:
        >>> loss = BceDiceLoss()(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
        >>> round(float(loss), 4)
        1.0197
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits)
        dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        return bce + 1 - dice


class SegmentationTask(L.LightningModule):
    """The LightningModule of one phase: network, BCE-with-logits loss, Adam, augmentation."""

    def __init__(self, cfg: Config, phase: str, channels_last: bool = False) -> None:
        super().__init__()
        self.cfg, self.phase = cfg, phase
        self.model: nn.Module = build_model(cfg.model)
        self.loss_fn = BceDiceLoss() if cfg.train.loss == "bce_dice" else nn.BCEWithLogitsLoss()
        self.augment = GpuAugment(cfg.data) if cfg.data.augment else None
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self._generator: torch.Generator | None = None
        self._last_step = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        # Augmentation randomness per (seed, epoch, rank): reproducible whatever the workers.
        self._generator = torch.Generator(device=self.device)
        seed = (self.cfg.train.seed * 1_000_003 + self.current_epoch) * 1009 + self.global_rank
        self._generator.manual_seed(seed)
        self._last_step = time.perf_counter()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        image, target = batch
        if self.augment is not None and self.trainer.training:
            image, target = self.augment(image, target, self._generator)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, target

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, target = batch
        return self.loss_fn(self.model(image).float(), target.float())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        loss = self._loss(batch)
        n = len(batch[0])
        now = time.perf_counter()
        rate = n * self.trainer.world_size / max(now - self._last_step, 1e-9)
        self._last_step = now
        # Step values for the progress bar only (no cross-process sync per step); the epoch
        # mean is synced once at the end of the epoch.
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self.log("slices/s", rate, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch[0]),
            sync_dist=True,
        )

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        opt = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        if t.lr_schedule == "constant":  # the paper's plain Adam
            return optimizer
        # Cosine decay to 0 over the whole run, stepped per epoch (so resume stays exact).
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Training and validation loss per epoch as a PNG (paper Fig. 6), written atomically.

    Example:
        >>> rows = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4}]
        >>> plot_curves(rows, "curves.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure + Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = [int(r["epoch"]) for r in rows]
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        values = [float(r[key]) if str(r[key]) not in ("", "nan") else math.nan for r in rows]
        if not all(math.isnan(v) for v in values):
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


class RunRecorder(Callback):
    """Writes the run folder at the end of each epoch (rank 0): safetensors, CSV, curves.

    The best checkpoint follows the validation loss (training loss when there is no validation
    split). Its state (best loss/epoch) travels in ``last.ckpt``, so a resumed run keeps it.
    """

    def __init__(
        self,
        directory: Path,
        cfg: Config,
        phase: str,
        normalization: dict[str, Any],
        progress: bool,
    ) -> None:
        self.directory, self.cfg, self.phase = directory, cfg, phase
        self.normalization, self.progress = normalization, progress
        self.best_loss = math.inf
        self.best_epoch = 0
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = self._train_end = 0.0
        self._slices = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_loss = float(state_dict["best_loss"])
        self.best_epoch = int(state_dict["best_epoch"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Rows of epochs after the restored one belong to a run that died before saving them.
        done = trainer.current_epoch
        self.rows = [
            r for r in _read_metrics(self.directory / "metrics.csv") if int(r["epoch"]) <= done
        ]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._train_end = time.perf_counter()
        self._slices = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._slices += len(batch[0]) * trainer.world_size
        self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch + 1
        train_loss = float(metrics["train_loss"]) if "train_loss" in metrics else math.nan
        val_loss = float(metrics["val_loss"]) if "val_loss" in metrics else math.nan
        monitored = val_loss if not math.isnan(val_loss) else train_loss
        improved = monitored < self.best_loss
        if improved:
            self.best_loss, self.best_epoch = monitored, epoch
        if not trainer.is_global_zero:
            return
        train_seconds = max(self._train_end - self._epoch_start, 1e-9)
        row = {
            "epoch": epoch,
            "train_loss": f"{train_loss:.6g}",
            "val_loss": f"{val_loss:.6g}",
            "lr": f"{trainer.optimizers[0].param_groups[0]['lr']:.6g}",
            "seconds": f"{time.perf_counter() - self._epoch_start:.2f}",
            "slices_per_s": f"{self._slices / train_seconds:.1f}",
        }
        extra = {"epoch": epoch, "val_loss": val_loss, "train_loss": train_loss}
        model: nn.Module = pl_module.model  # type: ignore[assignment]
        save_checkpoint(
            self.directory / "last.safetensors",
            model,
            self.cfg,
            self.phase,
            self.normalization,
            extra,
        )
        if improved:
            save_checkpoint(
                self.directory / "best.safetensors",
                model,
                self.cfg,
                self.phase,
                self.normalization,
                extra,
            )
        self.rows.append(row)
        _write_metrics(self.directory / "metrics.csv", self.rows)
        plot_curves(self.rows, self.directory / "curves.png", f"phase {self.phase}")
        if self.progress:
            from tqdm import tqdm

            tqdm.write(
                f"epoch {epoch}/{trainer.max_epochs}: train {train_loss:.4f}  val {val_loss:.4f}"
                f"{'  (best)' if improved else ''}  {row['seconds']} s  "
                f"{row['slices_per_s']} slices/s",
                file=sys.stderr,
            )


class _ProgressBar(TQDMProgressBar):
    """Lightning's bar without the version number ('v_num') it adds by default."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


@dataclass(frozen=True)
class TrainResult:
    """What `train_phase` produced.

    Example:
        >>> result.best_checkpoint.name, result.best_epoch  # doctest: +SKIP
        ('best.safetensors', 5)
    """

    phase: str
    directory: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val_loss: float
    epochs: int
    seconds: float
    #: What chose the best epoch: "val_loss", or "train_loss" when there is no validation set.
    monitor: str = "val_loss"

    def summary(self) -> str:
        what = "val loss" if self.monitor == "val_loss" else "training loss (no validation set)"
        return (
            f"{self.phase}: best {what} {self.best_val_loss:.4f} at epoch "
            f"{self.best_epoch}/{self.epochs} in {self.seconds:.0f} s; "
            f"checkpoint {self.best_checkpoint}"
        )


@dataclass
class TrainingSetup:
    """Everything a fit needs, built and checked before anything is written."""

    prep: PrepDir
    phase: str
    cfg: Config
    hardware: Hardware
    normalization: dict[str, Any]
    train_set: SliceDataset
    val_set: SliceDataset | None


def _env_rank() -> int:
    # Before Lightning starts, the launcher's variables are the only way to know the rank.
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _wait_for_regions(
    regions_dir: Path, case_ids: list[str], checkpoint: str | Path, timeout_s: float = 86400
) -> None:
    """Other ranks wait until rank 0 has cached the regions of *this* phase-1 model."""
    from kidneyseg.dataset import regions_ready

    start = time.monotonic()
    while not regions_ready(regions_dir, case_ids, checkpoint):
        if time.monotonic() - start > timeout_s:
            raise KidneysegError(
                "timed out waiting for rank 0's predicted regions", path=regions_dir
            )
        time.sleep(2.0)


def prepare_training(
    prep_dir: str | Path,
    phase: str,
    cfg: Config,
    regions_dir: Path | None = None,
    kidney_model: str | Path | None = None,
) -> TrainingSetup:
    """Check inputs and build the datasets (predicting phase-1 regions when configured).

    Raises:
        KidneysegError: bad phase, not a preprocessed folder, no training cases or slices,
            bad hardware settings.
    """
    if phase not in PHASES:
        raise KidneysegError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    cfg = validate(cfg)
    prep = open_prep_dir(prep_dir)
    train_ids, val_ids = prep.split["train"], prep.split["val"]
    if not train_ids:
        raise KidneysegError(
            "split.json lists no training cases; re-run preprocessing with "
            "more cases or a larger train fraction",
            path=prep.root / "split.json",
        )
    hardware = resolve_hardware(cfg)
    norm = phase_norm_record(prep, phase, cfg.data)
    predicted = phase == "tumor" and cfg.data.tumor_region == "predicted"
    if kidney_model is not None and not predicted:
        raise KidneysegError(
            "a phase-1 model is only used with --phase tumor and --set data.tumor_region=predicted",
            path=kidney_model,
        )
    if predicted:
        if kidney_model is None or regions_dir is None:
            raise KidneysegError(
                "data.tumor_region=predicted needs the phase-1 model "
                "(RUN_DIR/kidney/best.safetensors or --kidney-model)"
            )
        read_checkpoint_meta(kidney_model)  # fail early on a missing or foreign file
        # Check the split's case files before spending time on predictions.
        SliceDataset(prep, train_ids + val_ids, "kidney", cfg.data, norm)
        if _env_rank() == 0:
            device = "cuda" if hardware.cuda else "cpu"
            predict_kidney_regions(
                prep,
                train_ids + val_ids,
                kidney_model,
                regions_dir,
                device=device,
                threshold=cfg.inference.threshold,
            )
        else:
            _wait_for_regions(regions_dir, train_ids + val_ids, kidney_model)
    train_set = SliceDataset(prep, train_ids, phase, cfg.data, norm, regions_dir)
    if len(train_set) == 0:
        where = "predicted by the phase-1 model" if predicted else "in the labels"
        raise KidneysegError(
            f"no training slice contains kidney ({where}): the tumor phase "
            "trains on slices inside the kidney region",
            path=prep.root,
        )
    val_set = SliceDataset(prep, val_ids, phase, cfg.data, norm, regions_dir) if val_ids else None
    if val_set is not None and len(val_set) == 0:
        val_set = None
    return TrainingSetup(prep, phase, cfg, hardware, norm, train_set, val_set)


def make_loaders(
    setup: TrainingSetup, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
    """Training loader (foreground sampler, per-process batch) and validation loader.

    Workers only copy and normalise slices (augmentation runs on the device); memory is pinned
    for CUDA and workers persist across epochs.
    """
    cfg, hw = setup.cfg, setup.hardware
    batch = cfg.train.batch_size // world_size
    samples = max(cfg.data.samples_per_epoch or len(setup.train_set), cfg.train.batch_size)
    samples -= samples % cfg.train.batch_size  # whole global batches (BatchNorm needs > 1)
    sampler = ForegroundSampler(
        setup.train_set.foreground,
        samples,
        cfg.data.foreground_fraction,
        cfg.train.seed,
        rank,
        world_size,
    )
    workers = cfg.data.num_workers
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": hw.cuda,
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        common["prefetch_factor"] = 4
    train = DataLoader(setup.train_set, batch_size=batch, sampler=sampler, drop_last=True, **common)
    val = None
    if setup.val_set is not None:
        # A fixed shuffled order: a capped number of validation batches still covers all cases.
        order = np.random.default_rng(cfg.train.seed).permutation(len(setup.val_set))
        val = DataLoader(
            setup.val_set, batch_size=batch, sampler=order[rank::world_size].tolist(), **common
        )
    return train, val


class _DataModule(L.LightningDataModule):
    def __init__(self, setup: TrainingSetup) -> None:
        super().__init__()
        self.setup_ = setup
        self._loaders: tuple[DataLoader[Any], DataLoader[Any] | None] | None = None

    def _get(self) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
        if self._loaders is None:
            trainer = self.trainer
            assert trainer is not None  # Lightning attaches it before asking for loaders
            self._loaders = make_loaders(self.setup_, trainer.global_rank, trainer.world_size)
        return self._loaders

    def train_dataloader(self) -> DataLoader[Any]:
        return self._get()[0]

    def val_dataloader(self) -> Any:
        return self._get()[1] or []


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's banners and tips (GPU available..., 💡 Tip) and known-harmless warnings."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in (
                ".*does not have many workers.*",
                ".*Checkpoint directory.*",
                ".*exists and is not empty.*",
                ".*number of training batches.*",
                ".*val_dataloader.*",
                ".*overridden `on_after_batch_transfer`.*",
                ".*LeafSpec.*",
                ".*dirpath has changed.*",
            ):
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def train_phase(
    prep_dir: str | Path,
    run_dir: str | Path,
    phase: str,
    cfg: Config | None = None,
    resume: bool = False,
    kidney_model: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train one phase of the cascade and write ``RUN_DIR/<phase>/``.

    Args:
        prep_dir: preprocessed folder (``kidneyseg preprocess``).
        run_dir: model folder; this phase writes into ``run_dir/<phase>``.
        phase: ``"kidney"`` or ``"tumor"``.
        cfg: resolved config (default: the paper's settings).
        resume: continue from ``run_dir/<phase>/last.ckpt`` (e.g. after a crash, or with more
            ``train.epochs``).
        kidney_model: phase-1 weights for ``data.tumor_region = "predicted"`` (default
            ``run_dir/kidney/best.safetensors``); regions are cached in ``run_dir/tumor/regions``.
        progress: show Lightning's progress bar and one line per epoch on stderr.
        callbacks: extra Lightning callbacks (e.g. early stopping, custom logging).

    Returns:
        `TrainResult` with the checkpoint paths and the best epoch.

    Raises:
        KidneysegError: bad input, detected before anything is written.

    Example:
        >>> train_phase("prep", "run", "tumor", resolve_config("fast")).best_epoch  # doctest: +SKIP
        6
    """
    cfg = validate(cfg or Config())
    out = Path(run_dir) / phase
    last_ckpt = out / "last.ckpt"
    if resume and not last_ckpt.is_file():
        raise KidneysegError(
            "nothing to resume (no last.ckpt); start without --resume", path=last_ckpt
        )
    if not resume and (last_ckpt.is_file() or (out / "best.safetensors").is_file()):
        raise KidneysegError(
            f"already holds a trained {phase} phase; continue it with --resume "
            "or choose another RUN_DIR",
            path=out,
        )
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise KidneysegError("RUN_DIR exists and is not a folder", path=run_dir)
    predicted = phase == "tumor" and cfg.data.tumor_region == "predicted"
    if predicted and kidney_model is None:
        kidney_model = Path(run_dir) / "kidney" / "best.safetensors"
    setup = prepare_training(
        prep_dir, phase, cfg, out / "regions" if predicted else None, kidney_model
    )
    hw = setup.hardware
    rank0 = _env_rank() == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(
            cfg,
            out / "config.json",
            kidneyseg_version=package_version(),
            phase=phase,
            prep_dir=str(Path(prep_dir).resolve()),
            normalization=setup.normalization,
        )
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    task = SegmentationTask(cfg, phase, channels_last=cfg.train.channels_last)
    recorder = RunRecorder(out, cfg, phase, setup.normalization, progress)
    # Lightning's own checkpoint (optimizer, epoch, recorder state) for --resume: one file,
    # overwritten at the end of every epoch (fsspec transaction: never half-written).
    resumable = ModelCheckpoint(
        dirpath=out,
        filename="last",
        monitor=None,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    all_callbacks: list[Callback] = [recorder, resumable, *callbacks]
    # The step bar only on a terminal: in logs (CI, nohup) it would print a line per refresh;
    # the one-line-per-epoch summary is printed either way.
    step_bar = progress and sys.stderr.isatty()
    if step_bar:
        all_callbacks.append(_ProgressBar())
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator=hw.accelerator,
            devices=hw.devices,
            num_nodes=hw.num_nodes,
            strategy=hw.strategy,
            precision=hw.precision,  # type: ignore[arg-type]
            max_epochs=cfg.train.epochs,
            logger=False,
            callbacks=all_callbacks,
            default_root_dir=out,
            enable_progress_bar=step_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            benchmark=hw.cuda,
            limit_val_batches=cfg.train.limit_val_batches or 1.0,
            log_every_n_steps=1,
        )
        start = time.perf_counter()
        try:
            trainer.fit(
                task,
                datamodule=_DataModule(setup),
                ckpt_path=str(last_ckpt) if resume else None,
                weights_only=True,
            )
        except SystemExit:
            # Lightning turns Ctrl+C into a graceful shutdown + sys.exit(1) and ignores SIGINT
            # from then on; give the caller a KeyboardInterrupt and Ctrl+C back instead.
            if not trainer.interrupted:
                raise
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.default_int_handler)
            print(
                f"training interrupted; continue with --resume (state in {last_ckpt})",
                file=sys.stderr,
            )
            raise KeyboardInterrupt from None
    rows = _read_metrics(out / "metrics.csv")
    return TrainResult(
        phase=phase,
        directory=out,
        best_checkpoint=out / "best.safetensors",
        last_checkpoint=out / "last.safetensors",
        best_epoch=recorder.best_epoch,
        best_val_loss=recorder.best_loss,
        epochs=int(rows[-1]["epoch"]) if rows else 0,
        seconds=time.perf_counter() - start,
        monitor="val_loss" if setup.val_set is not None else "train_loss",
    )
