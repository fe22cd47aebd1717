"""Slice datasets of one phase, foreground oversampling and batched (GPU) augmentation.

Training draws 2D axial slices from the preprocessed folder (``PREP_DIR``, docs/formats.md):
``image.npy`` (int16 HU) and ``label.npy`` are memory-mapped, so a worker reads only the slices
it serves, and ``slices.npy`` says which slices hold kidney/tumor without touching the voxels.

* phase ``kidney``: every slice; input HU clipped to ``data.kidney_window`` and z-scored with
  training-split statistics; target = labels 1, 2, 3 (`kidneyseg.types.PHASE_TARGETS`).
* phase ``tumor``: only slices whose kidney region is non-empty; input = CT x region mask,
  z-scored with the statistics inside the region; target = label 2. The region is the ground
  truth (default) or, with ``data.tumor_region = "predicted"``, phase 1's prediction
  (`predict_kidney_regions` computes it once per case and caches it).

Statistics come from ``hu_histogram.npz`` with the *configured* window, so a window ablation
(``--set data.kidney_window=20,45``) needs no re-preprocessing. Slices are resized to
``data.image_size`` with `kidneyseg.slices.to_model_size`, as inference does.

Sampling: `ForegroundSampler` draws ``data.foreground_fraction`` (default 0.5) of each epoch's
slices from slices that contain the phase target and the rest uniformly over all eligible slices;
an epoch has ``data.samples_per_epoch`` slices (default 0 = as many as there are eligible slices).

Augmentation (paper §4.1: rotation, flip, random crop, Gaussian noise) runs batched on the
training device in `GpuAugment` (one ``affine_grid``/``grid_sample`` per batch), so workers only
copy and normalise slices. Randomness is per epoch: the sampler and the augmentation are seeded
from ``(train.seed, epoch, rank)``, which makes an epoch reproducible whatever the worker count.

Example:
    >>> prep = open_prep_dir("prep")  # doctest: +SKIP
    >>> cfg = DataConfig(image_size=128)
    >>> ds = SliceDataset(prep, prep.split["train"], "kidney", cfg)  # doctest: +SKIP
    >>> image, target = ds[0]; image.shape, target.shape  # doctest: +SKIP
    (torch.Size([1, 128, 128]), torch.Size([1, 128, 128]))
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Sampler

from kidneyseg.config import DataConfig
from kidneyseg.errors import KidneysegError
from kidneyseg.normalization import HIST_BINS, expand_region, normalize, phase_normalization
from kidneyseg.slices import from_model_size, to_model_size
from kidneyseg.types import MAX_LABEL, PHASE_TARGETS, PHASES

PREP_FORMAT = "kidneyseg-prep"
PREP_FORMAT_VERSION = 1
_PREPROCESS_HINT = "run `kidneyseg preprocess DATA_DIR PREP_DIR` to create one"


def _label_lut(labels: Sequence[int]) -> npt.NDArray[np.float32]:
    """Lookup table label id -> 1.0/0.0: one gather per slice instead of np.isin."""
    lut = np.zeros(256, np.float32)
    lut[list(labels)] = 1.0
    return lut


_REGION_LUT = _label_lut(PHASE_TARGETS["kidney"])


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise KidneysegError(f"missing {path.name} ({what}); {_PREPROCESS_HINT}", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KidneysegError(f"cannot read {path.name}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise KidneysegError(f"{path.name} must hold a JSON object", path=path)
    return data


@dataclass(frozen=True)
class PrepDir:
    """A validated preprocessed folder: its metadata, split and HU histograms.

    Example:
        >>> prep = open_prep_dir("prep")  # doctest: +SKIP
        >>> prep.split["train"][:2], prep.case_dir("case_00000").name  # doctest: +SKIP
        (['case_00000', 'case_00003'], 'case_00000')
    """

    root: Path
    meta: dict[str, Any]
    split: dict[str, list[str]]
    histograms: dict[str, npt.NDArray[np.int64]]

    def case_dir(self, case_id: str) -> Path:
        return self.root / "cases" / case_id


def open_prep_dir(path: str | Path) -> PrepDir:
    """Read and check ``meta.json``, ``split.json`` and ``hu_histogram.npz`` of a PREP_DIR.

    Raises:
        KidneysegError: the folder is not a complete preprocessed folder (says what is missing).
    """
    root = Path(path)
    if not root.is_dir():
        raise KidneysegError(f"preprocessed folder not found; {_PREPROCESS_HINT}", path=root)
    if not (root / "meta.json").is_file():
        raise KidneysegError(
            f"not a preprocessed folder (no meta.json); {_PREPROCESS_HINT}", path=root
        )
    meta = _read_json(root / "meta.json", "preprocessing metadata")
    if meta.get("format") != PREP_FORMAT or meta.get("format_version") != PREP_FORMAT_VERSION:
        raise KidneysegError(
            f"meta.json is format {meta.get('format')!r} v{meta.get('format_version')}, expected "
            f"{PREP_FORMAT!r} v{PREP_FORMAT_VERSION}; re-run kidneyseg preprocess",
            path=root / "meta.json",
        )
    raw_split = _read_json(root / "split.json", "the patient-level split")
    split: dict[str, list[str]] = {}
    for key in ("train", "val", "test"):
        ids = raw_split.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise KidneysegError(
                f"split.json: {key!r} must be a list of case ids", path=root / "split.json"
            )
        split[key] = ids
    hist_path = root / "hu_histogram.npz"
    if not hist_path.is_file():
        raise KidneysegError(f"missing hu_histogram.npz; {_PREPROCESS_HINT}", path=hist_path)
    try:
        with np.load(hist_path) as npz:
            histograms = {k: np.asarray(npz[k], np.int64) for k in ("all", "kidney_region")}
    except (OSError, ValueError, KeyError) as exc:
        raise KidneysegError(f"cannot read HU histograms ({exc})", path=hist_path) from exc
    for key, counts in histograms.items():
        if counts.shape != (HIST_BINS,):
            raise KidneysegError(
                f"histogram {key!r} has shape {counts.shape}, expected ({HIST_BINS},)",
                path=hist_path,
            )
    return PrepDir(root, meta, split, histograms)


def phase_norm_record(prep: PrepDir, phase: str, cfg: DataConfig) -> dict[str, Any]:
    """The phase's normalisation record from the training histograms and the configured window."""
    window = cfg.kidney_window if phase == "kidney" else cfg.tumor_window
    try:
        return phase_normalization(prep.histograms, phase, window)
    except ValueError as exc:
        what = "voxels" if phase == "kidney" else "voxels inside the kidney region"
        raise KidneysegError(
            f"hu_histogram.npz: no {phase}-phase statistics: the training split "
            f"has no {what} (the tumor phase trains on slices with kidney)",
            path=prep.root / "hu_histogram.npz",
        ) from exc


def _case_files(prep: PrepDir, case_id: str) -> tuple[Path, Path, Path]:
    d = prep.case_dir(case_id)
    files = (d / "image.npy", d / "label.npy", d / "slices.npy")
    for f in files:
        if not f.is_file():
            raise KidneysegError(
                f"case {case_id!r} of split.json is incomplete (no {f.name}); "
                "re-run kidneyseg preprocess",
                path=f,
            )
    return files


class SliceDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The eligible axial slices of some cases for one phase, as ``(image, target)`` tensors.

    Both are float32 ``(1, S, S)`` with ``S = cfg.image_size``; image z-scored, target 0/1.

    Args:
        prep: the preprocessed folder.
        case_ids: cases to draw from (e.g. ``prep.split["train"]``).
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
        normalization: dict[str, Any] | None = None,
        regions_dir: str | Path | None = None,
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
        cases_meta = prep.meta.get("cases", {})
        self._spacing_yx = [
            tuple(cases_meta.get(c, {}).get("spacing_mm", (1.0, 1.0, 1.0))[1:]) for c in case_ids
        ]
        self._target_lut = _label_lut(PHASE_TARGETS[phase])
        self._files: list[tuple[Path, Path, Path | None]] = []
        items, foreground = [], []
        for index, case_id in enumerate(self.case_ids):
            image_path, label_path, slices_path = _case_files(prep, case_id)
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
                fg = counts.sum(axis=1) > 0
            elif self.regions_dir is not None:
                region_path = self.regions_dir / f"{case_id}.npy"
                eligible = np.load(self.regions_dir / f"{case_id}.slices.npy") > 0
                fg = eligible & (counts[:, 1] > 0)
            else:
                eligible = counts.sum(axis=1) > 0
                fg = counts[:, 1] > 0
            self._files.append((image_path, label_path, region_path))
            zs = np.flatnonzero(eligible)
            items.append(np.stack([np.full(len(zs), index), zs], axis=1))
            foreground.append(fg[zs])
        self.items = np.concatenate(items).astype(np.int64) if items else np.zeros((0, 2), np.int64)
        self.foreground = np.concatenate(foreground) if foreground else np.zeros(0, bool)
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case_index, z = (int(v) for v in self.items[i])
        image, label, region = self._arrays(case_index)
        hu = np.asarray(image[z])
        labels = np.minimum(np.asarray(label[z]), MAX_LABEL)
        mask = None
        if self.phase == "tumor":
            mask = np.asarray(region[z]) if region is not None else _REGION_LUT[labels]
            mask = expand_region(mask, self._spacing_yx[case_index], self.margin_mm)
        x = torch.from_numpy(normalize(hu, self.normalization, region=mask))[None, None]
        y = torch.from_numpy(self._target_lut[labels])[None, None]
        if x.shape[-2:] != (self.size, self.size):
            x = to_model_size(x, self.size)
            # Resample the target like the image (bilinear, then 0.5), so both stay aligned.
            y = (to_model_size(y, self.size) > 0.5).float()
        return x[0], y[0]


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
    shuffles them. Seeded by ``(seed, epoch)``; Lightning calls `set_epoch`. Under DDP each rank
    takes every ``world_size``-th index of the same global draw.

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
    ) -> None:
        self.foreground = np.asarray(foreground, bool)
        self.num_samples = int(num_samples)
        self.fraction = float(fraction)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        everything = np.arange(len(self.foreground), dtype=np.int64)
        fg = np.flatnonzero(self.foreground)
        n_fg = round(self.fraction * self.num_samples) if len(fg) else 0
        draw = np.concatenate(
            [_cycled(rng, fg, n_fg), _cycled(rng, everything, self.num_samples - n_fg)]
        )
        draw = rng.permutation(draw)[self.rank :: self.world_size][: len(self)]
        return iter(draw.tolist())


class GpuAugment(nn.Module):
    """Batched augmentation of ``(image, target)`` pairs on whatever device they are on.

    Per slice: rotation by U(-rotation_degrees, +rotation_degrees), left-right flip with
    ``flip_probability`` (kidneys are bilateral, so a mirrored slice is anatomically plausible),
    a random crop covering U(crop_scale) of the area resized back to the full size, composed
    into one affine map and applied with a single ``grid_sample``; then Gaussian noise of
    ``noise_std`` (z-score units) on the image. The target is resampled with the same grid
    (bilinear, then 0.5) so it stays aligned; the image borders extend the edge values.

    Example:
        >>> aug = GpuAugment(DataConfig(rotation_degrees=0, flip_probability=1.0,
        ...                             crop_scale=(1.0, 1.0), noise_std=0.0))
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> bool((aug(x, (x > 7).float())[0] - x.flip(-1)).abs().max() < 1e-4)
        True
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.rotation = math.radians(cfg.rotation_degrees)
        self.flip_probability = cfg.flip_probability
        self.crop_scale = cfg.crop_scale
        self.noise_std = cfg.noise_std

    def forward(
        self, image: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, device = image.shape[0], image.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)

        angle = uniform(-self.rotation, self.rotation)
        flip = torch.where(uniform(0, 1) < self.flip_probability, -1.0, 1.0)
        side = uniform(*self.crop_scale).sqrt()
        # Crop centre, so that the (unrotated) crop stays inside the slice.
        cx, cy = uniform(-1, 1) * (1 - side), uniform(-1, 1) * (1 - side)
        cos, sin = angle.cos() * side, angle.sin() * side
        # Output (x, y) -> input: centre + side * R(angle) @ diag(flip, 1) @ (x, y).
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, cx], 1), torch.stack([sin * flip, cos, cy], 1)], 1
        )
        grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
        image = F.grid_sample(
            image, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        target = F.grid_sample(
            target.to(image.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        target = (target > 0.5).to(image.dtype)
        if self.noise_std > 0:
            noise = torch.randn(image.shape, device=device, generator=generator, dtype=image.dtype)
            image = image + self.noise_std * noise
        return image, target


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def regions_complete(regions_dir: str | Path, case_ids: Sequence[str]) -> bool:
    """True when ``regions_dir`` holds a predicted region for every case."""
    d = Path(regions_dir)
    return all((d / f"{c}.npy").is_file() and (d / f"{c}.slices.npy").is_file() for c in case_ids)


def regions_ready(regions_dir: str | Path, case_ids: Sequence[str], checkpoint: str | Path) -> bool:
    """True when ``regions_dir`` holds every case's region, predicted by ``checkpoint``."""
    source = Path(regions_dir) / "source.json"
    if not regions_complete(regions_dir, case_ids) or not source.is_file():
        return False
    try:
        recorded = json.loads(source.read_text(encoding="utf-8")).get("sha256")
    except ValueError:
        return False
    return bool(recorded == _file_digest(Path(checkpoint)))


def predict_kidney_regions(
    prep: PrepDir,
    case_ids: Sequence[str],
    checkpoint: str | Path,
    regions_dir: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    threshold: float = 0.5,
) -> Path:
    """Predict phase 1's kidney region of each case once and cache it (for phase-2 training).

    Writes ``regions_dir/<case_id>.npy`` (uint8 0/1, canonical ``(z, y, x)``, the case's shape)
    and ``<case_id>.slices.npy`` (region pixels per slice), each atomically; cases already
    cached are skipped. ``source.json`` records the checkpoint's SHA-256: a different phase-1
    model empties the cache first.

    Example:
        >>> predict_kidney_regions(prep, prep.split["train"], "run/kidney/best.safetensors",
        ...                        "run/tumor/regions")  # doctest: +SKIP
    """
    from kidneyseg.models import load_checkpoint, read_checkpoint_meta
    from kidneyseg.utils import atomic_path, atomic_write_text

    checkpoint, out = Path(checkpoint), Path(regions_dir)
    meta = read_checkpoint_meta(checkpoint)
    if meta.get("phase") != "kidney":
        raise KidneysegError(
            f"predicted regions need a phase-1 (kidney) model, this one is "
            f"phase {meta.get('phase')!r}",
            path=checkpoint,
        )
    source = {"checkpoint": str(checkpoint.resolve()), "sha256": _file_digest(checkpoint)}
    source_file = out / "source.json"
    if (
        source_file.is_file()
        and json.loads(source_file.read_text(encoding="utf-8")).get("sha256") != source["sha256"]
    ):
        shutil.rmtree(out)  # regions of another phase-1 model: stale
    if regions_complete(out, case_ids) and source_file.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(source_file, json.dumps(source, indent=2) + "\n")
    model, meta = load_checkpoint(checkpoint, device)
    size, norm = meta["config_obj"].data.image_size, meta["normalization"]
    for case_id in case_ids:
        if regions_complete(out, [case_id]):
            continue
        image_path = _case_files(prep, case_id)[0]
        image = np.load(image_path, mmap_mode="r")
        region = np.zeros(image.shape, np.uint8)
        with torch.inference_mode():
            for z0 in range(0, image.shape[0], batch_size):
                x = torch.from_numpy(normalize(np.asarray(image[z0 : z0 + batch_size]), norm))
                logits = model(to_model_size(x[:, None].to(device), size))
                prob = torch.sigmoid(from_model_size(logits.float(), image.shape[1:]))
                region[z0 : z0 + len(x)] = (prob[:, 0] > threshold).to("cpu").numpy()
        with atomic_path(out / f"{case_id}.npy") as tmp, tmp.open("wb") as f:
            np.save(f, region)
        with atomic_path(out / f"{case_id}.slices.npy") as tmp, tmp.open("wb") as f:
            np.save(f, region.reshape(len(region), -1).sum(axis=1, dtype=np.int64))
    return out
