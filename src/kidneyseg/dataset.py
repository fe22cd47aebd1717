"""Slice datasets of one phase and foreground oversampling.

Training draws 2D axial slices from the preprocessed folder (``PREP_DIR``, docs/formats.md):
``image.npy`` (int16 HU) and ``label.npy`` are memory-mapped, so a worker reads only the slices
it serves, and ``slices.npy`` says which slices hold kidney/tumor without touching the voxels.

* phase ``kidney``: every slice; input HU clipped to ``data.kidney_window`` and z-scored with
  training-split statistics; target = labels 1, 2, 3 (`kidneyseg.types.PHASE_TARGETS`).
* phase ``tumor``: only slices whose kidney region is non-empty; input = CT x region mask,
  z-scored with the statistics inside the region; target = label 2, or with
  ``data.tumor_classes = "tumor,cyst"`` two channels, label 2 and label 3
  (`kidneyseg.types.phase_outputs`; foreground slices then hold either). The region is the ground
  truth (default) or, with ``data.tumor_region = "predicted"``, phase 1's prediction
  (`kidneyseg.regions.predict_kidney_regions` computes it once per case and caches it).
* patches (``data.kidney_patch`` / ``data.tumor_patch`` = P, `patch_side`): the model-size
  slice is cut to a ``P x P`` window around the target or, without one, around phase 2's region
  (`patch_origin`), so an epoch of the same pixels shows (image_size / P)^2 times as many
  (`kidneyseg.loaders.patch_scale` scales the batch and epoch); validation and inference keep
  whole slices.
* 2.5D (``data.context_slices = k > 1``): the input has ``k`` channels, the slice and its
  neighbours ``data.context_mm`` apart, interpolated (`kidneyseg.context.context_stack`, the
  function inference uses too; phase 2 masks each neighbour by its own region); the target is
  the centre slice's.

Statistics come from ``hu_histogram.npz`` with the *configured* window, so a window ablation
(``--set data.kidney_window=20,45``) needs no re-preprocessing. Slices are resized to
``data.image_size`` with `kidneyseg.resize.to_model_size`, as inference does.

Sampling: `ForegroundSampler` draws ``data.foreground_fraction`` (default 0.5) of each epoch's
slices from slices that contain the phase target and the rest uniformly over all eligible slices;
an epoch has ``data.samples_per_epoch`` slices (default 0 = as many as there are eligible slices).

Augmentation (paper §4.1: rotation, flip, random crop, Gaussian noise) runs batched on the
training device in `kidneyseg.augmentation.BatchAugment`, so workers only copy and normalise
slices. Randomness is per epoch: the sampler and the augmentation are seeded
from ``(train.seed, epoch, rank)``, which makes an epoch reproducible whatever the worker count.

Example:
    >>> prep = open_prep_dir("prep")  # doctest: +SKIP
    >>> cfg = DataConfig(image_size=128)
    >>> ds = SliceDataset(prep, prep.split.train, "kidney", cfg)  # doctest: +SKIP
    >>> image, target = ds[0]; image.shape, target.shape  # doctest: +SKIP
    (torch.Size([1, 128, 128]), torch.Size([1, 128, 128]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, Sampler

from kidneyseg.config import DataConfig
from kidneyseg.context import context_stack
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import SLICE_LABELS, PrepDir
from kidneyseg.normalization import NormalizationRecord, expand_region, normalize
from kidneyseg.regions import region_files
from kidneyseg.resize import to_model_size
from kidneyseg.types import MAX_LABEL, OUTPUT_TARGETS, PHASE_TARGETS, PHASES, phase_outputs


def _label_lut(labels: Sequence[int]) -> npt.NDArray[np.float32]:
    """Lookup table label id -> 1.0/0.0: one gather per slice instead of np.isin."""
    lut = np.zeros(256, np.float32)
    lut[list(labels)] = 1.0
    return lut


_REGION_LUT = _label_lut(PHASE_TARGETS["kidney"])


def phase_norm_record(prep: PrepDir, phase: str, cfg: DataConfig) -> NormalizationRecord:
    """The phase's normalisation record for the configured window (`PrepDir.normalization`)."""
    window = cfg.kidney_window if phase == "kidney" else cfg.tumor_window
    return prep.normalization(phase, window, cfg.normalization)


class SliceDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The eligible axial slices of some cases for one phase, as ``(image, target)`` tensors.

    Float32 image ``(k, S, S)`` (z-scored; ``k = cfg.context_slices``, the slice and its
    neighbours) and target ``(C, S, S)`` (0/1, the centre slice's) with one channel per network
    output of the phase (`phase_outputs`: 1, or 2 for phase 2 with
    ``data.tumor_classes = "tumor,cyst"``), ``S = cfg.image_size``.

    Args:
        prep: the preprocessed folder.
        case_ids: cases to draw from (e.g. ``prep.split.train``).
        phase: ``"kidney"`` or ``"tumor"``.
        cfg: data settings (windows, image size, region source).
        normalization: the phase's record; default `phase_norm_record` of ``prep``.
        regions_dir: folder of predicted kidney regions (`predict_kidney_regions`); required
            for the tumor phase when ``cfg.tumor_region == "predicted"``.

    Attributes:
        items: ``(n, 2)`` int64 rows ``(case index, z)``.
        foreground: ``(n,)`` bool, the slice contains the phase target.

    Example:
        >>> cfg = DataConfig(image_size=64)
        >>> ds = SliceDataset(prep, ["case_00000"], "tumor", cfg)  # doctest: +SKIP
        >>> len(ds), int(ds.foreground.sum())  # doctest: +SKIP
        (41, 12)
    """

    def __init__(
        self,
        prep: PrepDir,
        case_ids: Sequence[str],
        phase: str,
        cfg: DataConfig,
        normalization: NormalizationRecord | None = None,
        regions_dir: str | Path | None = None,
        train_patches: bool = True,
    ) -> None:
        if phase not in PHASES:
            raise KidneysegError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
        self.phase = phase
        self.size = cfg.image_size
        self.case_ids = list(case_ids)
        self.normalization = normalization or phase_norm_record(prep, phase, cfg)
        self.predicted = phase == "tumor" and cfg.tumor_region == "predicted"
        if self.predicted and regions_dir is None:
            raise KidneysegError(
                "data.tumor_region=predicted needs predicted kidney regions (pass a phase-1 model)"
            )
        self.regions_dir = Path(regions_dir) if self.predicted and regions_dir else None
        self.margin_mm = cfg.region_margin_mm if phase == "tumor" else 0.0
        self.context = (cfg.context_slices, cfg.context_mm)
        #: The training patch side (model pixels; 0 = whole slices), `patch_origin`.
        self.patch = patch_side(cfg, phase) if train_patches else 0
        spacing = [prep.spacing_mm(c) for c in case_ids]
        self._spacing_z = [s[0] for s in spacing]
        self._spacing_yx = [s[1:] for s in spacing]
        outputs = phase_outputs(phase, cfg.tumor_classes)
        self._target_lut = np.stack([_label_lut(OUTPUT_TARGETS[name]) for name in outputs])
        # Columns of the slice index holding the outputs' labels: foreground = any of them.
        targets = {label for name in outputs for label in OUTPUT_TARGETS[name]}
        target_columns = [i for i, label in enumerate(SLICE_LABELS) if label in targets]
        # The phase's rarer class (`rare_labels`): its slices can be drawn more often.
        rarer = rare_labels(outputs)
        rare_columns = [i for i, label in enumerate(SLICE_LABELS) if label in rarer]
        self._files: list[tuple[Path, Path, Path | None]] = []
        items, foreground, rare = [], [], []
        for index, case_id in enumerate(self.case_ids):
            image_path, label_path, slices_path = prep.case_files(case_id)
            counts = np.load(slices_path)
            depth = np.load(image_path, mmap_mode="r").shape[0]
            if counts.ndim != 2 or counts.shape != (depth, 3):
                raise KidneysegError(
                    f"slice index has shape {counts.shape}, expected ({depth}, 3) for this case",
                    path=slices_path,
                )
            region_path = None
            if phase == "kidney":
                eligible = np.ones(depth, bool)
                fg = counts[:, target_columns].sum(axis=1) > 0
            elif self.regions_dir is not None:
                region_path, region_slices = region_files(self.regions_dir, case_id)
                eligible = np.load(region_slices) > 0
                fg = eligible & (counts[:, target_columns].sum(axis=1) > 0)
            else:
                eligible = counts.sum(axis=1) > 0
                fg = counts[:, target_columns].sum(axis=1) > 0
            self._files.append((image_path, label_path, region_path))
            zs = np.flatnonzero(eligible)
            items.append(np.stack([np.full(len(zs), index), zs], axis=1))
            foreground.append(fg[zs])
            rare.append((counts[:, rare_columns].sum(axis=1) > 0)[zs])
        self.items = np.concatenate(items).astype(np.int64) if items else np.zeros((0, 2), np.int64)
        self.foreground = np.concatenate(foreground) if foreground else np.zeros(0, bool)
        #: Per slice: holds the phase's rarer class (`rare_labels`; `ForegroundSampler`).
        self.rare = np.concatenate(rare) if rare else np.zeros(0, bool)
        self._open: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        # Workers reopen the memory maps themselves; pickling a memmap would copy the array.
        return {**self.__dict__, "_open": {}}

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if index not in self._open:
            image_path, label_path, region_path = self._files[index]
            region = None if region_path is None else np.load(region_path, mmap_mode="r")
            self._open[index] = (
                np.load(image_path, mmap_mode="r"),
                np.load(label_path, mmap_mode="r"),
                region,
            )
        return self._open[index]

    def _region_mask(self, case_index: int, from_labels: bool) -> Callable[[Any], Any]:
        """Raw region slices (labels, or phase 1's region) -> phase 2's grown bool mask."""
        spacing_yx = self._spacing_yx[case_index]

        def mask(raw: Any) -> Any:
            region = _REGION_LUT[np.minimum(raw, MAX_LABEL)] if from_labels else raw
            return expand_region(region, spacing_yx, self.margin_mm)

        return mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case_index, z = (int(v) for v in self.items[i])
        image, label, region = self._arrays(case_index)
        labels = np.minimum(np.asarray(label[z]), MAX_LABEL)
        source, masker = None, None
        if self.phase == "tumor":  # each context slice masked by its own region
            source = region if region is not None else label
            masker = self._region_mask(case_index, from_labels=region is None)
        k, mm = self.context
        hu, mask = context_stack(image, [z], self._spacing_z[case_index], k, mm, source, masker)
        x = torch.from_numpy(normalize(hu, self.normalization, region=mask))
        y = torch.from_numpy(self._target_lut[:, labels])[None]
        if x.shape[-2:] != (self.size, self.size):
            x = to_model_size(x, self.size)
            # Resample the target like the image (bilinear, then 0.5), so both stay aligned.
            y = (to_model_size(y, self.size) > 0.5).float()
        if self.patch:  # a patch around the target or the region (`patch_origin`)
            target = np.asarray(y[0].numpy().any(axis=0), bool)
            region = np.zeros_like(target)
            if mask is not None:
                centre = torch.from_numpy(np.ascontiguousarray(mask[:, k // 2, None], np.float32))
                region = to_model_size(centre, self.size)[0, 0].numpy() > 0.5
            y0, x0 = patch_origin(target, region, self.patch, case_index, z)
            x = x[..., y0 : y0 + self.patch, x0 : x0 + self.patch]
            y = y[..., y0 : y0 + self.patch, x0 : x0 + self.patch]
        return x[0], y[0]


def patch_side(cfg: DataConfig, phase: str) -> int:
    """The side of the patches a phase trains on (``data.kidney_patch`` / ``data.tumor_patch``),
    or 0 for whole slices: when unset, or when the patch would cover the whole slice.

    Example:
        >>> patch_side(DataConfig(image_size=128, tumor_patch=64), "tumor")
        64
        >>> patch_side(DataConfig(image_size=64, kidney_patch=64), "kidney")
        0
    """
    side = cfg.tumor_patch if phase == "tumor" else cfg.kidney_patch
    return side if side < cfg.image_size else 0


def patch_origin(
    target: npt.NDArray[np.bool_], region: npt.NDArray[np.bool_], patch: int, case: int, z: int
) -> tuple[int, int]:
    """Top-left corner ``(y, x)`` of the ``patch`` x ``patch`` window a phase trains on
    (`patch_side`), in model pixels of one slice.

    The window is centred on the target's bounding box when the slice holds target, otherwise on
    the region's (phase 2; phase 1 has none); when that box is wider or taller than the window
    (two kidneys), on the pixels of one half of it, the half alternating with ``z``. The centre
    is then shifted by up to a quarter of the window along each axis, pseudo-randomly but fixed
    per ``(case, z)`` (so an epoch stays reproducible; the batched augmentation adds its own
    crops), and the window is kept inside the slice. With neither, the window lies anywhere.

    Example:
        >>> target = np.zeros((128, 128), bool); target[100:104, 20:24] = True
        >>> y, x = patch_origin(target, target, 64, case=0, z=0)
        >>> y <= 100 and 104 <= y + 64 and x <= 20 and 24 <= x + 64
        True
    """
    height, width = target.shape
    if patch >= min(height, width):
        return 0, 0
    focus = target if target.any() else region
    ys, xs = np.nonzero(focus)
    rng = np.random.default_rng([case, z])
    if not len(ys):  # nothing to centre on (a phase-1 slice without kidney): anywhere
        return int(rng.integers(0, height - patch + 1)), int(rng.integers(0, width - patch + 1))
    if max(np.ptp(ys), np.ptp(xs)) >= patch:
        # Two kidneys (or one long one): one half, split along the longer extent.
        coords = xs if np.ptp(xs) >= np.ptp(ys) else ys
        half = coords < (coords.min() + coords.max()) / 2
        keep = half if z % 2 == 0 else ~half
        ys, xs = ys[keep], xs[keep]
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    jy, jx = rng.uniform(-patch / 4, patch / 4, size=2)
    y0 = int(np.clip(round(cy + jy - patch / 2), 0, height - patch))
    x0 = int(np.clip(round(cx + jx - patch / 2), 0, width - patch))
    return y0, x0


def rare_labels(outputs: Sequence[str]) -> tuple[int, ...]:
    """The labels of a phase's rarer class, whose slices ``data.rare_fraction`` favours:
    the masses (tumor, cyst) inside phase 1's kidney; the cyst when phase 2 predicts tumor and
    cyst; none for the paper's tumor-only phase 2.

    Example:
        >>> rare_labels(("kidney",)), rare_labels(("tumor", "cyst")), rare_labels(("tumor",))
        ((2, 3), (3,), ())
    """
    if tuple(outputs) == ("kidney",):
        return (*OUTPUT_TARGETS["tumor"], *OUTPUT_TARGETS["cyst"])
    return tuple(OUTPUT_TARGETS["cyst"]) if "cyst" in outputs else ()


def _cycled(rng: np.random.Generator, pool: npt.NDArray[np.int64], k: int) -> np.ndarray:
    """``k`` draws from ``pool``: whole shuffled passes, so every element comes up evenly."""
    if k <= 0 or len(pool) == 0:
        return np.zeros(0, np.int64)
    reps = math.ceil(k / len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:k]


class ForegroundSampler(Sampler[int]):
    """Epoch sampler: a fixed share of slices containing the target, the rest uniform.

    Each epoch draws ``num_samples`` indices: ``round(fraction * num_samples)`` from the
    foreground slices, the rest from all slices (shuffled passes, so no slice is starved), then
    shuffles them. Of the foreground draws, ``rare_fraction`` come from the slices flagged
    ``rare`` (those holding the phase's rarer class, `rare_labels`; ``data.rare_fraction``).
    Seeded by ``(seed, epoch)``; Lightning calls `set_epoch`. Under DDP each rank takes every
    ``world_size``-th index of the same global draw.

    Example:
        >>> s = ForegroundSampler(np.array([True, False, False, False]), 8, 0.5, seed=0)
        >>> len(list(s)), sum(i == 0 for i in s) >= 4
        (8, True)
    """

    def __init__(
        self,
        foreground: npt.NDArray[np.bool_],
        num_samples: int,
        fraction: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        sources: npt.NDArray[np.integer[Any]] | None = None,
        source_weights: Sequence[float] | None = None,
        rare: npt.NDArray[np.bool_] | None = None,
        rare_fraction: float = 0.0,
    ) -> None:
        self.foreground = np.asarray(foreground, bool)
        self.rare = None if rare is None else np.asarray(rare, bool) & self.foreground
        self.rare_fraction = float(rare_fraction)
        self.num_samples = int(num_samples)
        self.fraction = float(fraction)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.sources = None if sources is None else np.asarray(sources, np.int64)
        self.source_weights = None if source_weights is None else [float(w) for w in source_weights]
        if self.sources is not None and (
            self.source_weights is None
            or len(self.source_weights) <= int(self.sources.max(initial=0))
            or abs(sum(self.source_weights) - 1.0) > 1e-6
        ):
            raise ValueError("source_weights must give every source a weight, summing to 1")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def _draw(
        self, rng: np.random.Generator, pool: npt.NDArray[np.int64], k: int
    ) -> npt.NDArray[np.int64]:
        """``k`` draws from ``pool``: the foreground share from its foreground, the rest uniform."""
        fg = pool[self.foreground[pool]]
        n_fg = round(self.fraction * k) if len(fg) else 0
        rare = pool[self.rare[pool]] if self.rare is not None else pool[:0]
        n_rare = round(self.rare_fraction * n_fg) if len(rare) else 0
        return np.concatenate(
            [
                _cycled(rng, rare, n_rare),
                _cycled(rng, fg, n_fg - n_rare),
                _cycled(rng, pool, k - n_fg),
            ]
        )

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        everything = np.arange(len(self.foreground), dtype=np.int64)
        if self.sources is None or self.source_weights is None:
            draw = self._draw(rng, everything, self.num_samples)
        else:
            # Each source (e.g. phantoms, real slices) gets its weight's share of the epoch.
            parts, left = [], self.num_samples
            for source, weight in enumerate(self.source_weights):
                pool = everything[self.sources == source]
                last = source == len(self.source_weights) - 1
                k = left if last else min(round(weight * self.num_samples), left)
                parts.append(self._draw(rng, pool, k) if len(pool) else np.zeros(0, np.int64))
                left -= k
            draw = np.concatenate(parts)
        draw = rng.permutation(draw)[self.rank :: self.world_size][: len(self)]
        return iter(draw.tolist())
