"""One phase of the cascade, loaded from its checkpoint and run on axial slices.

The single place that turns a checkpoint into masks: `kidneyseg.inference.Predictor` uses it
for both phases, and `kidneyseg.regions` uses it to make the phase-1 regions that phase-2
training sees with ``data.tumor_region=predicted``, so both sides segment exactly alike:

1. HU of the canonical slices (with ``data.context_slices > 1``, each with its neighbours at
   ``data.context_mm`` steps, `kidneyseg.context.context_stack`, as training drew them)
   normalised with the checkpoint's `NormalizationRecord` (phase 2: CT x kidney region);
2. resized to the checkpoint's ``data.image_size`` (`kidneyseg.resize`), batched, channels_last
   (not on MPS), autocast at the resolved precision (`kidneyseg.hardware`);
3. logits resized back to the slice and thresholded: ``logit > log(t / (1 - t))``, the same as
   ``sigmoid > t`` without a sigmoid over every pixel. Only when asked (``probabilities=``, for
   ``predict --save-probabilities``) is the sigmoid taken too, stored as uint8
   ``round(p x 255)`` (`PROBABILITY_SCALE`); the masks are the same either way.

With ``tta`` (``inference.tta``) each batch also runs left-right mirrored (the flip of
training augmentation), and step 3 works on the logit of the two probabilities' mean
(`PhaseRunner._logits`).

Example:
    >>> runner = PhaseRunner.load("run/kidney/best.safetensors", "kidney")  # doctest: +SKIP
    >>> masks = runner.segment(ct, np.arange(len(ct)))  # doctest: +SKIP
    >>> masks.shape == ct.shape, masks.dtype  # doctest: +SKIP
    (True, dtype('bool'))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from kidneyseg.config import Config
from kidneyseg.context import context_stack
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.pred_dir import PROBABILITY_SCALE
from kidneyseg.hardware import autocast, resolve_precision
from kidneyseg.models import CheckpointMeta, load_checkpoint
from kidneyseg.normalization import NormalizationRecord, normalize
from kidneyseg.resize import from_model_size, to_model_size


def quantize_probability(logits: torch.Tensor) -> npt.NDArray[np.uint8]:
    """``round(sigmoid(logits) * 255)`` as uint8 on the CPU (the scale of the probability
    files, `kidneyseg.formats.pred_dir.PROBABILITY_SCALE`).

    Example:
        >>> quantize_probability(torch.tensor([-1e4, 0.0, 1e4])).tolist()
        [0, 128, 255]
    """
    scaled = torch.sigmoid(logits.float()).mul_(PROBABILITY_SCALE).round_()
    return scaled.to(torch.uint8).cpu().numpy()


def logit_threshold(threshold: float) -> float:
    """The logit equivalent of a probability threshold: ``sigmoid(z) > t <=> z > logit(t)``.

    Example:
        >>> logit_threshold(0.5)
        0.0
    """
    if not 0.0 < threshold < 1.0:
        raise KidneysegError(f"threshold must be in (0, 1) (got {threshold})")
    return math.log(threshold / (1.0 - threshold))


class PhaseRunner:
    """A phase's network with its checkpoint metadata, ready to segment canonical slices.

    Args:
        model: the network (eval mode).
        meta: the checkpoint's metadata.
        device: where to run.
        precision: ``auto``/``fp32``/``bf16``/``fp16`` (resolved for ``device``).
        batch_size: slices per forward pass.
        threshold: probability threshold on the sigmoid output.
        tta: flip test-time augmentation (`_logits`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: CheckpointMeta,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        batch_size: int = 16,
        threshold: float = 0.5,
        tta: bool = False,
    ) -> None:
        self.meta = meta
        self.model = model
        self.configure(torch.device(device), precision, batch_size, threshold, tta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        phase: str,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        batch_size: int = 16,
        threshold: float = 0.5,
        tta: bool = False,
    ) -> PhaseRunner:
        """Load a checkpoint and check it is a 1-logit model of ``phase`` whose input channels
        are its ``data.context_slices`` (1 = the paper's single slice).

        Raises:
            KidneysegError: missing, corrupt or foreign checkpoint, one of another phase, or
                input channels that do not match its context slices.
        """
        model, meta = load_checkpoint(path, device="cpu")
        if meta.phase != phase:
            raise KidneysegError(
                f"checkpoint is for phase {meta.phase!r}, expected {phase!r}", path=path
            )
        if meta.normalization.phase != phase:
            raise KidneysegError(f"checkpoint has no valid {phase} normalisation record", path=path)
        model_cfg, data_cfg = meta.config.model, meta.config.data
        if model_cfg.in_channels != data_cfg.context_slices:
            raise KidneysegError(
                f"checkpoint has {model_cfg.in_channels} input channels but "
                f"data.context_slices={data_cfg.context_slices}",
                path=path,
            )
        if model_cfg.classes != 1:
            raise KidneysegError("checkpoint is not a 1-logit model", path=path)
        return cls(model, meta, device, precision, batch_size, threshold, tta)

    # ---------------------------------------------------------------- properties

    @property
    def phase(self) -> str:
        return self.meta.phase

    @property
    def config(self) -> Config:
        return self.meta.config

    @property
    def normalization(self) -> NormalizationRecord:
        return self.meta.normalization

    @property
    def image_size(self) -> int:
        return self.meta.config.data.image_size

    def configure(
        self,
        device: torch.device,
        precision: str,
        batch_size: int,
        threshold: float,
        tta: bool = False,
    ) -> PhaseRunner:
        """Set how to run: move the network to ``device`` (channels_last except on MPS), resolve
        ``precision`` for it, and set the batch size, probability threshold and flip TTA."""
        if batch_size < 1:
            raise KidneysegError(f"batch size must be >= 1 (got {batch_size})")
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.threshold = float(threshold)
        self._logit_threshold = logit_threshold(threshold)
        self.device = device
        self.precision = resolve_precision(precision, device.type)
        model = self.model.to(device)
        if device.type != "mps":  # MPS convolutions do not all support channels_last
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        return self

    # ---------------------------------------------------------------- running

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a model-size batch ``(n, 1, h, w)``.

        With ``tta`` the batch runs again mirrored left-right (the last axis: the flip of
        training augmentation, `kidneyseg.augmentation.BatchAugment`), the answer is mirrored
        back, and the result is the logit of the mean of the two *probabilities*:
        ``logit((sigmoid(a) + sigmoid(b)) / 2)``, computed in log space so it stays finite
        where a probability rounds to 0 or 1.
        """
        with autocast(self.device, self.precision):
            logits = self.model(batch).float()
            if not self.tta:
                return logits
            mirrored = batch.flip(-1)
            if self.device.type != "mps":
                mirrored = mirrored.contiguous(memory_format=torch.channels_last)
            other = self.model(mirrored).float().flip(-1)
        log_sigmoid = torch.nn.functional.logsigmoid
        log_2p = torch.logaddexp(log_sigmoid(logits), log_sigmoid(other))  # p: mean probability
        log_2q = torch.logaddexp(log_sigmoid(-logits), log_sigmoid(-other))  # q = 1 - p
        return log_2p - log_2q

    def model_box(
        self, box: tuple[int, int, int, int], shape: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """A slice-pixel box ``(y0, y1, x0, x1)`` in model pixels, grown to the network's
        32-pixel grid (so a crop sees the same downsampling lattice as the whole slice)."""
        size = self.image_size
        sy, sx = size / shape[0], size / shape[1]
        y0, y1 = int(math.floor(box[0] * sy)) // 32 * 32, int(math.ceil(box[1] * sy))
        x0, x1 = int(math.floor(box[2] * sx)) // 32 * 32, int(math.ceil(box[3] * sx))
        y1 = min(size, -(-y1 // 32) * 32)
        x1 = min(size, -(-x1 // 32) * 32)
        return y0, max(y1, y0 + 32), x0, max(x1, x0 + 32)

    def segment(
        self,
        ct: npt.NDArray[Any],
        slices: npt.NDArray[np.intp],
        region: npt.NDArray[np.bool_] | None = None,
        progress: Callable[[int], object] | None = None,
        box: tuple[int, int, int, int] | None = None,
        probabilities: npt.NDArray[np.uint8] | None = None,
        spacing_z: float | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Binary masks of this phase on the given canonical axial slices.

        Args:
            ct: canonical ``(z, y, x)`` HU (any dtype; a memory map is fine).
            slices: indices along z to segment.
            region: phase 2's kidney region, canonical like ``ct`` (required for the tumor
                phase).
            progress: called with the number of slices done after each batch.
            box: ``(y0, y1, x0, x1)`` slice pixels: run the network only on this part of each
                slice (grown to its 32-pixel grid, `model_box`); outside it the mask is False.
                The network is fully convolutional, so a crop with a margin gives the whole
                slice's answer inside it; ``None`` = the whole slice.
            probabilities: uint8 ``(len(slices), y, x)`` to fill with the sigmoid
                (`quantize_probability`; 0 outside ``box``). None (the default) skips the
                sigmoid entirely.
            spacing_z: the canonical z spacing (mm) of ``ct``; needed by a 2.5D model
                (``data.context_slices > 1``), whose neighbours lie ``data.context_mm`` apart.

        Returns:
            bool ``(len(slices), y, x)``.

        Raises:
            KidneysegError: bad ``probabilities``, or a 2.5D model without ``spacing_z``.
        """
        height, width = ct.shape[1:]
        out = np.zeros((len(slices), height, width), dtype=bool)
        if probabilities is not None:
            if probabilities.shape != out.shape or probabilities.dtype != np.uint8:
                raise KidneysegError(
                    f"probabilities must be uint8 {out.shape} (got {probabilities.dtype} "
                    f"{probabilities.shape})"
                )
            probabilities[...] = 0
        if len(slices) == 0:
            return out
        data = self.config.data
        if data.context_slices > 1 and spacing_z is None:
            raise KidneysegError(
                f"this {self.phase} model reads {data.context_slices} slices "
                f"{data.context_mm} mm apart: segment() needs the z spacing (spacing_z)"
            )
        size = self.image_size
        native = (height, width) == (size, size)
        crop = None if box is None else self.model_box(box, (height, width))
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            for start in range(0, len(slices), self.batch_size):
                idx = slices[start : start + self.batch_size]
                # Native size: model pixels are slice pixels, so cut the crop when reading.
                hu, mask = context_stack(
                    ct,
                    idx,
                    1.0 if spacing_z is None else spacing_z,  # 2.5D models only (checked)
                    data.context_slices,
                    data.context_mm,
                    region,
                    box=crop if native else None,
                )
                x = normalize(hu, self.normalization, mask)
                batch = torch.from_numpy(np.ascontiguousarray(x))
                batch = batch.to(self.device, non_blocking=cuda)
                if not native:
                    batch = to_model_size(batch, size)
                if crop is not None and not native:
                    batch = batch[..., crop[0] : crop[1], crop[2] : crop[3]]
                if self.device.type != "mps":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                logits = self._logits(batch)
                rows = slice(start, start + len(idx))
                if crop is not None and native:
                    y0, y1, x0, x1 = crop
                    masks = (logits[:, 0] > self._logit_threshold).cpu().numpy()
                    out[rows, y0:y1, x0:x1] = masks
                    if probabilities is not None:
                        probabilities[rows, y0:y1, x0:x1] = quantize_probability(logits[:, 0])
                else:
                    if crop is not None:  # back on the whole model-size slice, then resize
                        canvas = logits.new_full((len(idx), 1, size, size), -1e4)
                        canvas[..., crop[0] : crop[1], crop[2] : crop[3]] = logits
                        logits = canvas
                    logits = from_model_size(logits, (height, width))
                    out[rows] = (logits[:, 0] > self._logit_threshold).cpu().numpy()
                    if probabilities is not None:
                        probabilities[rows] = quantize_probability(logits[:, 0])
                if progress is not None:
                    progress(len(idx))
        return out
