"""One phase's training with Lightning (paper §4.2): BCE with logits, Adam, best by val loss.

`train_phase` reads a preprocessed folder and writes ``RUN_DIR/<phase>/`` (docs/formats.md):
``best.safetensors`` (lowest validation loss; highest validation Dice with
``train.checkpoint_metric = "dice"``), ``last.safetensors``, ``last.ckpt`` (Lightning
state for ``resume``), ``metrics.csv``, ``curves.png`` (paper Fig. 6) and ``config.json``.
Validation also measures the phase's Dice (``val_dice``: global over the epoch's validation
slices, `dice_from_counts`; a phase 2 with tumor and cyst outputs pools both outputs' pixel
counts), summed over all processes under DDP.
Only global rank 0 writes. A killed run continues from the last finished epoch with
``resume=True`` (CLI ``--resume``); raise ``train.epochs`` to extend a finished run.
With ``data.planes`` (e.g. ``"axial,coronal,sagittal"``) the phase trains one model per plane,
one after the other, each with the whole budget (``train.epochs`` x ``data.samples_per_epoch``
slices of its own plane) into ``RUN_DIR/<phase>`` (axial) or ``RUN_DIR/<phase>_<plane>``, on
the cached plane view of the data (`kidneyseg.plane_views`).

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

import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch import nn

from kidneyseg.augmentation import BatchAugment
from kidneyseg.config import Config, dump_config, validate
from kidneyseg.errors import KidneysegError
from kidneyseg.formats import run_dir as rd
from kidneyseg.loaders import TrainingData, env_rank, prepare_training
from kidneyseg.losses import build_loss
from kidneyseg.models import build_model, phase_config
from kidneyseg.plane_views import check_planes, prepare_plane_training
from kidneyseg.run_recorder import RunRecorder, check_resume_state
from kidneyseg.utils import package_version


def dice_from_counts(overlap: float, predicted: float, truth: float) -> float:
    """Global Dice ``2 |P & G| / (|P| + |G|)`` from pixel counts; 1.0 when both are empty.

    Example:
        >>> dice_from_counts(3, 4, 6), dice_from_counts(0, 0, 0)
        (0.6, 1.0)
    """
    total = predicted + truth
    return 1.0 if total == 0 else 2.0 * overlap / total


class SegmentationTask(L.LightningModule):
    """The LightningModule of one phase: network, BCE-with-logits loss, Adam, augmentation."""

    def __init__(self, cfg: Config, phase: str, channels_last: bool = False) -> None:
        super().__init__()
        self.cfg, self.phase = cfg, phase
        self.model: nn.Module = build_model(cfg.model)
        self.loss_fn = build_loss(cfg.train.loss)
        self.augment = BatchAugment(cfg.data) if cfg.data.augment else None
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self._generator: torch.Generator | None = None
        self._last_step = 0.0
        #: Validation pixel counts of this process: |P & G|, |P|, |G| (P: logit > 0), summed
        #: over the outputs (tumor and cyst with ``data.tumor_classes = "tumor,cyst"``).
        self._dice_counts = torch.zeros(3, dtype=torch.long)

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

    def on_validation_epoch_start(self) -> None:
        self._dice_counts = torch.zeros(3, dtype=torch.long, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        image, target = batch
        logits = self.model(image).float()
        loss = self.loss_fn(logits, target.float())
        predicted, truth = logits > 0, target > 0.5
        counts = [(predicted & truth).sum(), predicted.sum(), truth.sum()]
        self._dice_counts += torch.stack(counts).to(self._dice_counts)
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch[0]),
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        # Counts summed over every process first: the Dice of all validation slices, not a
        # mean of per-batch or per-process Dice values (which would overweight small ones).
        counts = self.trainer.strategy.reduce(self._dice_counts, reduce_op="sum")
        dice = dice_from_counts(*(float(c) for c in counts))
        self.log("val_dice", dice, on_step=False, on_epoch=True, prog_bar=True)

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
    #: The value of `monitor` at the best epoch.
    best_val_loss: float
    epochs: int
    seconds: float
    #: What chose the best epoch: "val_loss", "val_dice" (``train.checkpoint_metric``), or
    #: "train_loss" when there is no validation set.
    monitor: str = "val_loss"
    #: The slicing plane of this model (`kidneyseg.planes.PLANES`).
    plane: str = "axial"
    #: The results of the phase's other planes (``data.planes``), in training order.
    others: tuple[TrainResult, ...] = ()

    def summary(self) -> str:
        what = {"val_loss": "val loss", "val_dice": "val Dice"}.get(
            self.monitor, "training loss (no validation set)"
        )
        name = self.phase if self.plane == "axial" else f"{self.phase} ({self.plane})"
        return "\n".join(
            [
                f"{name}: best {what} {self.best_val_loss:.4f} at epoch "
                f"{self.best_epoch}/{self.epochs} in {self.seconds:.0f} s; "
                f"checkpoint {self.best_checkpoint}",
                *(other.summary() for other in self.others),
            ]
        )


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
                ".*when logging on epoch level in distributed.*",  # val_dice: reduced already
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
    plane: str | None = None,
) -> TrainResult:
    """Train one phase of the cascade and write ``RUN_DIR/<phase>/``.

    Args:
        prep_dir: preprocessed folder (``kidneyseg preprocess``).
        run_dir: model folder; this phase writes into ``run_dir/<phase>``.
        phase: ``"kidney"`` or ``"tumor"``.
        cfg: resolved config (default: the paper's settings); ``model.classes`` is set to the
            phase's outputs (`kidneyseg.models.phase_config`).
        resume: continue from ``run_dir/<phase>/last.ckpt`` (e.g. after a crash, or with more
            ``train.epochs``).
        kidney_model: phase-1 weights for ``data.tumor_region = "predicted"`` (default
            ``run_dir/kidney/best.safetensors``); regions are cached in ``run_dir/tumor/regions``.
        progress: show Lightning's progress bar and one line per epoch on stderr.
        callbacks: extra Lightning callbacks (e.g. early stopping, custom logging).
        plane: train only this plane's model; None = every plane of ``data.planes`` (with
            ``resume``, a plane without training state yet starts afresh).

    Returns:
        `TrainResult` with the checkpoint paths and the best epoch (the first plane's; the
        others in ``others``).

    Raises:
        KidneysegError: bad input, detected before anything is written.

    Example:
        >>> train_phase("prep", "run", "tumor", resolve_config("fast")).best_epoch  # doctest: +SKIP
        6
    """
    # model.classes = the phase's outputs (tumor and cyst: 2), recorded in config and checkpoints.
    cfg = phase_config(validate(cfg or Config()), phase)
    if plane is None:
        planes = check_planes(cfg, run_dir, phase, resume)
        state = {p: (rd.phase_dir(run_dir, phase, p) / rd.RESUME_FILE).is_file() for p in planes}
        results = []
        for p in planes:
            again = resume and (state[p] or not any(state.values()))
            args = (cfg, again, kidney_model, progress, callbacks, p)
            results.append(train_phase(prep_dir, run_dir, phase, *args))
        return replace(results[0], others=tuple(results[1:]))
    out = rd.phase_dir(run_dir, phase, plane)
    last_ckpt = out / rd.RESUME_FILE
    trained = (out / rd.BEST_FILE).is_file()
    if resume and not last_ckpt.is_file():
        if trained:  # only a run from before last.ckpt was written first can leave this
            raise KidneysegError(
                f"cannot resume: the {phase} phase has weights but no training state "
                "(last.ckpt); choose another RUN_DIR, or delete this folder to train again",
                path=out,
            )
        raise KidneysegError(
            "nothing to resume (no last.ckpt); start without --resume", path=last_ckpt
        )
    if not resume and last_ckpt.is_file():
        raise KidneysegError(
            f"already holds a trained {phase} phase; continue it with --resume "
            "or choose another RUN_DIR",
            path=out,
        )
    if not resume and trained:
        raise KidneysegError(
            f"already holds {phase} weights without their training state (last.ckpt), so "
            "it cannot be resumed; choose another RUN_DIR, or delete this folder to train again",
            path=out,
        )
    if resume:
        check_resume_state(last_ckpt, phase, cfg.train.checkpoint_metric)
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise KidneysegError("RUN_DIR exists and is not a folder", path=run_dir)
    predicted = phase == "tumor" and cfg.data.tumor_region == "predicted"
    if predicted and kidney_model is None:
        kidney_model = rd.best_checkpoint(run_dir, "kidney")
    if plane != "axial":  # train on the plane's view of the data (and of predicted regions)
        rank0 = env_rank() == 0
        prep_dir = prepare_plane_training(
            prep_dir, run_dir, phase, plane, cfg, kidney_model, rank0, progress
        )
    setup = prepare_training(
        prep_dir,
        phase,
        cfg,
        out / rd.REGIONS_DIR if predicted else None,
        kidney_model,
        extra_prep_dir=out / rd.EXTRA_PREP_DIR,
    )
    hw = setup.hardware
    rank0 = env_rank() == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(
            cfg,
            out / rd.CONFIG_FILE,
            kidneyseg_version=package_version(),
            phase=phase,
            plane=plane,
            prep_dir=str(Path(prep_dir).resolve()),
            normalization=setup.normalization.to_dict(),
        )
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    task = SegmentationTask(cfg, phase, channels_last=cfg.train.channels_last)
    # The recorder also writes Lightning's own checkpoint (optimizer, epoch, recorder state)
    # for --resume, before the other files of each epoch (see RunRecorder).
    recorder = RunRecorder(out, cfg, phase, setup.normalization, progress)
    all_callbacks: list[Callback] = [recorder, *callbacks]
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
            enable_checkpointing=False,  # RunRecorder writes last.ckpt itself
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
                datamodule=TrainingData(setup),
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
    rows = rd.read_metrics(out / rd.METRICS_FILE)
    return TrainResult(
        phase=phase,
        directory=out,
        best_checkpoint=out / rd.BEST_FILE,
        last_checkpoint=out / rd.LAST_FILE,
        best_epoch=recorder.best_epoch,
        best_val_loss=recorder.best_value,
        epochs=int(rows[-1]["epoch"]) if rows else 0,
        seconds=time.perf_counter() - start,
        monitor=recorder.monitor if setup.val_set is not None else "train_loss",
        plane=plane,
    )
