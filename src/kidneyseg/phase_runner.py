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
   A model with several outputs (phase 2 predicting tumor and cyst) is thresholded on its
   most probable output, which also names the pixel's class (`classify_logits`).

With ``tta`` (``inference.tta``) each batch also runs left-right mirrored (the flip of
training augmentation), and step 3 works on the logit of the two probabilities' mean, each
output on its own (`PhaseRunner._logits`).

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


def classify_logits(
    logits: torch.Tensor, threshold_logit: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks and classes of ``(N, C, H, W)`` logits, one channel per output.

    A pixel is foreground where its most probable output has probability > t, i.e. its highest
    logit > ``threshold_logit`` (`logit_threshold`; the sigmoid is monotonic), and its class is
    that output's index, the first one on ties. For phase 2 with tumor and cyst: a mass where
    max(p_tumor, p_cyst) > t, a tumor where p_tumor >= p_cyst, else a cyst. One output: the
    mask is ``logit > threshold_logit``, the class 0.

    Returns:
        bool ``(N, H, W)`` masks and uint8 ``(N, H, W)`` output indices.

    Example:
        >>> mask, best = classify_logits(torch.tensor([[[[2.0, -1, 1]], [[2.0, -3, 3]]]]), 0.0)
        >>> mask.tolist(), best.tolist()
        ([[[True, False, True]]], [[[0, 0, 1]]])
    """
    best_logit = logits[:, 0]
    best = torch.zeros(best_logit.shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best_logit  # strictly: the first output wins ties
        best[better] = c
        best_logit = torch.maximum(best_logit, logits[:, c])
    return best_logit > threshold_logit, best


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
        """Load a checkpoint and check it is a model of ``phase`` whose input channels are its
        ``data.context_slices`` (1 = the paper's single slice) and with one logit per output the
        phase names (`CheckpointMeta.outputs`: 1, or 2 for tumor and cyst).

        Raises:
            KidneysegError: missing, corrupt or foreign checkpoint, one of another phase,
                input channels that do not match its context slices, or a network whose
                outputs differ from those its config names.
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
        if model_cfg.classes != len(meta.outputs):
            raise KidneysegError(
                f"checkpoint's network has {model_cfg.classes} outputs but its "
                f"{phase} phase predicts {len(meta.outputs)} ({', '.join(meta.outputs)}; "
                f"data.tumor_classes={data_cfg.tumor_classes!r})",
                path=path,
            )
        return cls(model, meta, device, precision, batch_size, threshold, tta)

    # ---------------------------------------------------------------- properties

    @property
    def phase(self) -> str:
        return self.meta.phase

    @property
    def outputs(self) -> tuple[str, ...]:
        """The network's outputs by name, one per channel (``("tumor", "cyst")``...)."""
        return self.meta.outputs

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
        """Float32 logits ``(n, outputs, h, w)`` of a model-size batch ``(n, channels, h, w)``
        (channels: ``data.context_slices``).

        With ``tta`` the batch runs again mirrored left-right (the last axis: the flip of
        training augmentation, `kidneyseg.augmentation.BatchAugment`), the answer is mirrored
        back, and the result is, for each output channel on its own, the logit of the mean of
        the two *probabilities*: ``logit((sigmoid(a) + sigmoid(b)) / 2)``, computed in log space
        so it stays finite where a probability rounds to 0 or 1.
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
        best_output: npt.NDArray[np.uint8] | None = None,
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
            probabilities: uint8 ``(len(outputs), len(slices), y, x)`` (or, for a one-output
                model, ``(len(slices), y, x)``) to fill with each output's sigmoid
                (`quantize_probability`; 0 outside ``box``). None (the default) skips the
                sigmoid entirely.
            best_output: uint8 ``(len(slices), y, x)`` to fill with each pixel's most
                probable output (index into `outputs`, `classify_logits`; 0 outside ``box``).
            spacing_z: the canonical z spacing (mm) of ``ct``; needed by a 2.5D model
                (``data.context_slices > 1``), whose neighbours lie ``data.context_mm`` apart.

        Returns:
            bool ``(len(slices), y, x)``: where the most probable output is above the threshold.

        Raises:
            KidneysegError: bad ``probabilities`` or ``best_output``, or a 2.5D model without
                ``spacing_z``.
        """
        height, width = ct.shape[1:]
        out = np.zeros((len(slices), height, width), dtype=bool)
        probs = None
        if probabilities is not None:
            probs = probabilities[None] if probabilities.ndim == 3 else probabilities
            want = (len(self.outputs), *out.shape)
            if probs.shape != want or probabilities.dtype != np.uint8:
                raise KidneysegError(
                    f"probabilities must be uint8 {want} (got {probabilities.dtype} "
                    f"{probabilities.shape})"
                )
            probs[...] = 0
        if best_output is not None:
            if best_output.shape != out.shape or best_output.dtype != np.uint8:
                raise KidneysegError(f"best_output must be uint8 {out.shape}")
            best_output[...] = 0
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
                where: tuple[slice, ...] = (slice(start, start + len(idx)),)
                if crop is not None and native:
                    y0, y1, x0, x1 = crop
                    where = (*where, slice(y0, y1), slice(x0, x1))
                else:
                    if crop is not None:  # back on the whole model-size slice, then resize
                        canvas = logits.new_full((*logits.shape[:2], size, size), -1e4)
                        canvas[..., crop[0] : crop[1], crop[2] : crop[3]] = logits
                        logits = canvas
                    logits = from_model_size(logits, (height, width))
                masks, best = classify_logits(logits, self._logit_threshold)
                out[where] = masks.cpu().numpy()
                if best_output is not None:
                    best_output[where] = best.cpu().numpy()
                if probs is not None:  # (outputs, slices, y, x)
                    probs[(slice(None), *where)] = quantize_probability(logits).swapaxes(0, 1)
                if progress is not None:
                    progress(len(idx))
        return out
