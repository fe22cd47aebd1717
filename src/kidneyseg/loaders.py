"""What one phase's training reads: checked inputs, datasets and data loaders.

`prepare_training` checks everything before anything is written (phase, preprocessed folder,
split, hardware, normalisation) and builds the slice datasets, predicting and caching phase-1
regions first when ``data.tumor_region = "predicted"``; `make_loaders` builds the foreground-
oversampling training loader and the validation loader for one process; `TrainingData` hands
them to Lightning.

Example:
    >>> setup = prepare_training("prep", "kidney", resolve_config("fast"))  # doctest: +SKIP
    >>> train, val = make_loaders(setup)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import numpy.typing as npt
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from kidneyseg.config import Config, DataConfig, validate
from kidneyseg.dataset import ForegroundSampler, SliceDataset, patch_side, phase_norm_record
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import META_FILE, PrepDir, open_prep_dir
from kidneyseg.hardware import Hardware, resolve_hardware
from kidneyseg.models import read_checkpoint_meta
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.preprocessing import preprocess
from kidneyseg.regions import predict_kidney_regions, regions_ready
from kidneyseg.splitting import patient_id
from kidneyseg.types import PHASES


@dataclass
class TrainingSetup:
    """Everything a fit needs, built and checked before anything is written."""

    prep: PrepDir
    phase: str
    cfg: Config
    hardware: Hardware
    normalization: NormalizationRecord
    train_set: Dataset[Any]
    val_set: Dataset[Any] | None
    #: Per training slice: contains the phase target (for `ForegroundSampler`).
    foreground: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    #: Per training slice: holds the phase's rarer class (``data.rare_fraction``).
    rare: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    #: Per training slice: 0 main cases, 1 extra cases (None: main cases only).
    sources: npt.NDArray[np.int64] | None = None
    source_weights: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not len(self.foreground) and isinstance(self.train_set, SliceDataset):
            self.foreground = self.train_set.foreground
            self.rare = self.train_set.rare


def env_rank() -> int:
    """This process's global rank, from the launcher's variables (0 when launched alone)."""
    # Before Lightning starts, the launcher's variables are the only way to know the rank.
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _wait_for_regions(
    regions_dir: Path,
    case_ids: list[str],
    checkpoint: str | Path,
    cfg: Config,
    timeout_s: float = 86400,
) -> None:
    """Other ranks wait until rank 0 has cached the regions of *this* phase-1 model."""
    start = time.monotonic()
    while not regions_ready(regions_dir, case_ids, checkpoint, cfg.inference):
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
    extra_prep_dir: Path | None = None,
) -> TrainingSetup:
    """Check inputs and build the datasets (predicting phase-1 regions when configured).

    With ``data.extra_cases`` the extra cases' training (validation) slices join the training
    (validation) set; a KiTS-layout folder is preprocessed into ``extra_prep_dir`` first.

    Raises:
        KidneysegError: bad phase, not a preprocessed folder, no training cases or slices,
            bad hardware settings.
    """
    if phase not in PHASES:
        raise KidneysegError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    cfg = validate(cfg)
    prep = open_prep_dir(prep_dir)
    train_ids, val_ids = list(prep.split.train), list(prep.split.val)
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
        if env_rank() == 0:
            device = "cuda" if hardware.cuda else "cpu"
            predict_kidney_regions(
                prep,
                train_ids + val_ids,
                kidney_model,
                regions_dir,
                device=device,
                settings=cfg.inference,
            )
        else:
            _wait_for_regions(regions_dir, train_ids + val_ids, kidney_model, cfg)
    train_set = SliceDataset(prep, train_ids, phase, cfg.data, norm, regions_dir)
    if len(train_set) == 0:
        where = "predicted by the phase-1 model" if predicted else "in the labels"
        raise KidneysegError(
            f"no training slice contains kidney ({where}): the tumor phase "
            "trains on slices inside the kidney region",
            path=prep.root,
        )
    # Validation always scores whole slices, as inference sees them (no data.tumor_patch).
    val_set = (
        SliceDataset(prep, val_ids, phase, cfg.data, norm, regions_dir, train_patches=False)
        if val_ids
        else None
    )
    if val_set is not None and len(val_set) == 0:
        val_set = None
    setup = TrainingSetup(prep, phase, cfg, hardware, norm, train_set, val_set)
    if cfg.data.extra_cases:
        if predicted:
            raise KidneysegError(
                "data.extra_cases cannot be combined with data.tumor_region=predicted yet; "
                "train the tumor phase on ground-truth regions"
            )
        extra = open_extra_cases(cfg.data.extra_cases, prep, cfg, extra_prep_dir)
        add_extra_cases(setup, extra)
    return setup


def open_extra_cases(
    source: str | Path, main: PrepDir, cfg: Config, extra_prep_dir: Path | None
) -> PrepDir:
    """The extra cases as a preprocessed folder, checked to share no patient with ``main``.

    ``source`` is a preprocessed folder (has ``meta.json``) or a KiTS-layout folder, which is
    preprocessed (resumably) into ``extra_prep_dir`` with its own patient-level split.

    Raises:
        KidneysegError: no such folder, nowhere to preprocess into, or a patient in both.
    """
    src = Path(source)
    if not src.is_dir():
        raise KidneysegError("data.extra_cases: folder not found", path=src)
    if (src / META_FILE).is_file():
        extra = open_prep_dir(src)
    else:
        if extra_prep_dir is None:
            raise KidneysegError(
                "data.extra_cases is a data folder: preprocess it first "
                "(kidneyseg preprocess DIR PREP_DIR) and give PREP_DIR",
                path=src,
            )
        preprocess(src, extra_prep_dir, cfg, progress=False)
        extra = open_prep_dir(extra_prep_dir)
    main_patients = {
        patient_id(c) for s in (main.split.train, main.split.val, main.split.test) for c in s
    }
    shared = sorted(
        {patient_id(c) for s in (extra.split.train, extra.split.val, extra.split.test) for c in s}
        & main_patients
    )
    if shared:
        raise KidneysegError(
            f"data.extra_cases shares patient {shared[0]} with the main cases "
            f"({len(shared)} shared); the patient-level split would leak",
            path=src,
        )
    return extra


def _window_covers(window: tuple[float, float] | None, lo: float, hi: float) -> bool:
    """True when clipping to ``window`` makes HU clipped to ``[lo, hi]`` look the same."""
    return window is not None and lo <= window[0] and window[1] <= hi


def add_extra_cases(setup: TrainingSetup, extra: PrepDir) -> None:
    """Join the extra cases' training and validation slices to ``setup`` (in place).

    The extra slices are normalised with the main cases' record. Cases whose stored HU were
    clipped (e.g. real slices published with HU in [0, 255]) must lie inside the phase's
    window, or the network would see them differently from the main cases: the error says
    which window to set.
    """
    cfg, phase = setup.cfg, setup.phase
    window = setup.normalization.window
    ids = {name: list(extra.split.subset(name)) for name in ("train", "val")}
    ranges = np.array([extra.hu_range(c) for c in ids["train"] + ids["val"]]).reshape(-1, 2)
    lo, hi = (float(ranges[:, 0].min()), float(ranges[:, 1].max())) if len(ranges) else (0, 0)
    # Every abdominal CT slice holds air (about -1000 HU) around the body: extra cases whose
    # minimum is far above that were windowed to [lo, hi] before they reached us.
    if len(ranges) and lo > -500 and not _window_covers(window, lo, hi):
        key = "kidney_window" if phase == "kidney" else "tumor_window"
        raise KidneysegError(
            f"data.extra_cases hold HU only in [{lo:g}, {hi:g}] (clipped), but the {phase} "
            f"phase's window is {window}; set --set data.{key}={max(lo, 0):g},{hi:g} (or a "
            "window inside that range) so every input is clipped alike",
            path=extra.root,
        )
    extra_train = SliceDataset(extra, ids["train"], phase, cfg.data, setup.normalization)
    if len(extra_train) == 0:
        raise KidneysegError(
            f"data.extra_cases: no {phase}-phase training slices among the extra cases",
            path=extra.root,
        )
    n_main = len(setup.foreground)
    setup.train_set = ConcatDataset([setup.train_set, extra_train])
    setup.foreground = np.concatenate([setup.foreground, extra_train.foreground])
    setup.rare = np.concatenate([setup.rare, extra_train.rare])
    setup.sources = np.concatenate(
        [np.zeros(n_main, np.int64), np.ones(len(extra_train), np.int64)]
    )
    weight = cfg.data.extra_weight
    setup.source_weights = (1.0 - weight, weight)
    extra_val = SliceDataset(
        extra, ids["val"], phase, cfg.data, setup.normalization, train_patches=False
    )
    if len(extra_val):
        parts = [d for d in (setup.val_set, extra_val) if d is not None]
        setup.val_set = ConcatDataset(parts) if len(parts) > 1 else extra_val


def foreground_fraction(cfg: DataConfig, phase: str) -> float:
    """The share of each epoch's slices drawn from slices holding the phase's target."""
    if phase == "tumor" and cfg.tumor_foreground_fraction is not None:
        return cfg.tumor_foreground_fraction
    return cfg.foreground_fraction


def patch_scale(cfg: DataConfig, phase: str) -> int:
    """How many training patches stand for one whole slice in a batch and an epoch:
    ``round((image_size / side) ** 2)`` for a phase that trains on patches (`patch_side`), else
    1, so that a step costs about the same pixels and a budget of epochs x samples the same time.

    Example:
        >>> patch_scale(DataConfig(image_size=128, tumor_patch=64), "tumor")
        4
    """
    side = patch_side(cfg, phase)
    return max(1, round((cfg.image_size / side) ** 2)) if side else 1


def make_loaders(
    setup: TrainingSetup, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
    """Training loader (foreground sampler, per-process batch) and validation loader.

    Workers only copy and normalise slices (augmentation runs on the device); memory is pinned
    for CUDA and workers persist across epochs.
    """
    cfg, hw = setup.cfg, setup.hardware
    scale = patch_scale(cfg.data, setup.phase)
    global_batch = cfg.train.batch_size * scale
    batch = global_batch // world_size
    samples = max(cfg.data.samples_per_epoch or len(setup.foreground), cfg.train.batch_size)
    samples *= scale
    samples -= samples % global_batch  # whole global batches (BatchNorm needs > 1)
    sampler = ForegroundSampler(
        setup.foreground,
        samples,
        foreground_fraction(cfg.data, setup.phase),
        cfg.train.seed,
        rank,
        world_size,
        sources=setup.sources,
        source_weights=setup.source_weights,
        rare=setup.rare,
        rare_fraction=cfg.data.rare_fraction,
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
        order = np.random.default_rng(cfg.train.seed).permutation(len(setup.val_set))  # type: ignore[arg-type]
        val = DataLoader(
            setup.val_set,
            batch_size=cfg.train.batch_size // world_size,  # whole slices, unscaled
            sampler=order[rank::world_size].tolist(),
            **common,
        )
    return train, val


class TrainingData(L.LightningDataModule):
    """The loaders of a `TrainingSetup`, built once Lightning knows the rank and world size."""

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
