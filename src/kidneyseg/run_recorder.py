"""The run folder of one phase while it trains: `RunRecorder`, and the resume-state check.

At the end of every epoch `RunRecorder` writes ``last.ckpt`` (Lightning's state for
``--resume``) first, then ``last.safetensors``, ``best.safetensors``, ``metrics.csv`` and
``curves.png`` (`kidneyseg.formats.run_dir`). Everything after ``last.ckpt`` can be made again
from it, and a resumed run does so (`RunRecorder.on_train_start`): a run killed at any point
resumes. `check_resume_state` refuses a ``last.ckpt`` that cannot resume the phase.

Example:
    >>> check_resume_state(Path("run/kidney/last.ckpt"), "kidney")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from kidneyseg.config import Config
from kidneyseg.errors import KidneysegError
from kidneyseg.figures import plot_loss_curves
from kidneyseg.formats import run_dir as rd
from kidneyseg.models import read_checkpoint_meta, save_checkpoint
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.utils import atomic_path


class RunRecorder(Callback):
    """Writes the run folder at the end of each epoch: ``last.ckpt`` first, then (rank 0) the
    safetensors, CSV and curves.

    The best checkpoint follows the validation loss, or the validation Dice with
    ``train.checkpoint_metric = "dice"`` (`monitor`; the training loss when there is no
    validation split). ``last.ckpt`` is the one source of truth: it is written first, and
    carries the recorder's state (phase, metric, best value/epoch, the metrics rows), so every
    other file can be made again from it. A run killed at any point between two files
    therefore resumes cleanly: `on_train_start` rewrites ``last.safetensors``, a missing
    ``best.safetensors`` of the restored epoch, and ``metrics.csv``.
    """

    def __init__(
        self,
        directory: Path,
        cfg: Config,
        phase: str,
        normalization: NormalizationRecord,
        progress: bool,
    ) -> None:
        self.directory, self.cfg, self.phase = directory, cfg, phase
        self.normalization, self.progress = normalization, progress
        self.checkpoint_metric = cfg.train.checkpoint_metric
        #: The metrics.csv column that picks best.safetensors when there is a validation split.
        self.monitor = "val_dice" if self.checkpoint_metric == "dice" else "val_loss"
        #: The monitored value at `best_epoch` (0: no best yet).
        self.best_value = math.nan
        self.best_epoch = 0
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = self._train_end = 0.0
        self._slices = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "checkpoint_metric": self.checkpoint_metric,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "rows": list(self.rows),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # "best_loss": a state from before train.checkpoint_metric (always the loss then).
        self.best_value = float(state_dict.get("best_value", state_dict.get("best_loss", math.nan)))
        self.best_epoch = int(state_dict["best_epoch"])
        self._restored_rows = state_dict.get("rows")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch
        restored = getattr(self, "_restored_rows", None)
        if restored is not None:
            self.rows = [dict(r) for r in restored]
        else:  # a last.ckpt written before the rows travelled in it
            # Rows of epochs after the restored one belong to a run that died before saving.
            self.rows = [
                r
                for r in rd.read_metrics(self.directory / rd.METRICS_FILE)
                if int(r["epoch"]) <= done
            ]
        if done == 0 or not trainer.is_global_zero:
            return
        # Resumed: make again what a kill between last.ckpt and the other files left out.
        model: nn.Module = pl_module.model  # type: ignore[assignment]
        extra = {"epoch": done}
        save_checkpoint(
            self.directory / rd.LAST_FILE, model, self.cfg, self.phase, self.normalization, extra
        )
        best = self.directory / rd.BEST_FILE
        if self.best_epoch == done and _checkpoint_epoch(best) != done:
            save_checkpoint(best, model, self.cfg, self.phase, self.normalization, extra)
        if self.rows:
            rd.write_metrics(self.directory / rd.METRICS_FILE, self.rows)

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
        val_dice = float(metrics["val_dice"]) if "val_dice" in metrics else math.nan
        if math.isnan(val_loss):  # no validation split
            monitored, higher = train_loss, False
        elif self.monitor == "val_dice":
            monitored, higher = val_dice, True
        else:
            monitored, higher = val_loss, False
        improved = not math.isnan(monitored) and (
            self.best_epoch == 0
            or (monitored > self.best_value if higher else monitored < self.best_value)
        )
        if improved:
            self.best_value, self.best_epoch = monitored, epoch
        train_seconds = max(self._train_end - self._epoch_start, 1e-9)
        row = {
            "epoch": epoch,
            "train_loss": f"{train_loss:.6g}",
            "val_loss": f"{val_loss:.6g}",
            "val_dice": f"{val_dice:.6g}",
            "lr": f"{trainer.optimizers[0].param_groups[0]['lr']:.6g}",
            "seconds": f"{time.perf_counter() - self._epoch_start:.2f}",
            "slices_per_s": f"{self._slices / train_seconds:.1f}",
        }
        extra = {
            "epoch": epoch,
            "val_loss": val_loss,
            "val_dice": val_dice,
            "train_loss": train_loss,
        }
        self.rows.append(row)
        # The resume state first (every process takes part; rank 0 writes): each file below
        # can be made again from it, so a kill anywhere after this line loses nothing.
        last_ckpt = self.directory / rd.RESUME_FILE
        if trainer.is_global_zero:
            with atomic_path(last_ckpt) as tmp:
                trainer.save_checkpoint(tmp)
        else:
            trainer.save_checkpoint(last_ckpt)
        if not trainer.is_global_zero:
            return
        model: nn.Module = pl_module.model  # type: ignore[assignment]
        save_checkpoint(
            self.directory / rd.LAST_FILE,
            model,
            self.cfg,
            self.phase,
            self.normalization,
            extra,
        )
        if improved:
            save_checkpoint(
                self.directory / rd.BEST_FILE,
                model,
                self.cfg,
                self.phase,
                self.normalization,
                extra,
            )
        rd.write_metrics(self.directory / rd.METRICS_FILE, self.rows)
        plot_loss_curves(
            self.rows,
            self.directory / rd.CURVES_FILE,
            f"phase {self.phase}",
            self.cfg.train.loss,
            self.checkpoint_metric,
        )
        if self.progress:
            from tqdm import tqdm

            tqdm.write(
                f"epoch {epoch}/{trainer.max_epochs}: train {train_loss:.4f}  val {val_loss:.4f}"
                f"  Dice {val_dice:.4f}"
                f"{'  (best)' if improved else ''}  {row['seconds']} s  "
                f"{row['slices_per_s']} slices/s",
                file=sys.stderr,
            )


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch a safetensors checkpoint was written at (None: missing or unreadable)."""
    try:
        return int(read_checkpoint_meta(path).extra.get("epoch"))  # type: ignore[arg-type]
    except (KidneysegError, TypeError, ValueError):
        return None


def check_resume_state(path: Path, phase: str, checkpoint_metric: str = "loss") -> None:
    """Refuse a ``last.ckpt`` that cannot resume this phase, before Lightning reads it.

    Loaded with ``weights_only=True`` (never unpickles code): a truncated or damaged file, a
    pickle with code in it, a file that is not a Lightning training state, the state of the
    other phase, or one whose best checkpoint follows another ``train.checkpoint_metric`` (its
    ``best.safetensors`` was chosen by that one) each give one line.

    Raises:
        KidneysegError: names the file and the problem.
    """
    how = "delete it to start this phase again, or restore it from a copy"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a cut zip, or a pickle weights_only refuses (code, classes)
        raise KidneysegError(
            f"cannot resume: the training state is damaged or not a training state "
            f"({type(exc).__name__}); {how}",
            path=path,
        ) from None
    if not isinstance(state, dict) or not {"state_dict", "epoch", "loops"} <= set(state):
        raise KidneysegError(f"cannot resume: not a Lightning training state; {how}", path=path)
    for key, value in (state.get("callbacks") or {}).items():
        if "RunRecorder" in str(key) and isinstance(value, dict):
            found = value.get("phase")
            if found is not None and found != phase:
                raise KidneysegError(
                    f"cannot resume: this is the training state of the {found} phase, not "
                    f"{phase}; put it back in {found}/ or {how}",
                    path=path,
                )
            metric = value.get("checkpoint_metric", "loss")
            if metric != checkpoint_metric:
                raise KidneysegError(
                    f"cannot resume: this run keeps its best checkpoint by validation {metric}, "
                    f"not {checkpoint_metric}; resume with --set train.checkpoint_metric={metric}",
                    path=path,
                )
