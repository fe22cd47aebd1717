"""Configuration: frozen dataclasses whose defaults reproduce the paper.

Precedence: defaults < preset(s) < config file (JSON, YAML or TOML) < ``--set section.key=value``.
The resolved config is written next to every output (``config.json``) and into checkpoints.

Paper references ("paper §x") are to the published two-phase U-Net/ResNet34 system on KiTS21.

Example:
    >>> cfg = resolve_config(preset="fast", overrides=["train.lr=0.0005"])
    >>> cfg.train.lr, cfg.model.architecture
    (0.0005, 'unet_resnet34')
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kidneyseg.config_files import load_config_file
from kidneyseg.errors import KidneysegError
from kidneyseg.planes import check_plane_settings
from kidneyseg.presets import PRESETS as PRESETS  # re-exported (the presets' own module)
from kidneyseg.presets import preset_names
from kidneyseg.utils import atomic_write_text


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing of cases into the on-disk form training reads."""

    #: Patient-level split fractions train/val/test (paper §4: 80/10/10 of 300 KiTS21 cases).
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    #: Seed of the patient-level split.
    seed: int = 0
    #: Parallel processes over cases.
    workers: int = 2


@dataclass(frozen=True)
class DataConfig:
    """How 2D training slices are drawn and transformed for each phase."""

    #: HU window of phase 1 before z-scoring (paper §4.1: [0, 200]; Table 1 ablation: [20, 45]).
    kidney_window: tuple[float, float] = (0.0, 200.0)
    #: Phase-2 HU window; ``None`` = unclipped HU inside the kidney region (paper §4.1).
    tumor_window: tuple[float, float] | None = None
    #: After clipping: "zscore" (training-split statistics) or "window" (window onto [0, 1]).
    normalization: str = "zscore"
    #: In-plane size the slices are resized to (paper: native 512x512).
    image_size: int = 512
    #: Fraction of slices drawn from slices that contain the phase's target (the rest uniform).
    #: 0.5 keeps training balanced while still showing every slice (nnU-Net draws 1/3).
    foreground_fraction: float = 0.5
    #: The tumor phase's own fraction; ``None`` = ``foreground_fraction``. (Phase 2 draws only
    #: slices with kidney, most of which hold no tumor; a high share makes it over-call.)
    tumor_foreground_fraction: float | None = None
    #: Share of those foreground draws taken from slices holding the phase's rarer class (phase
    #: 1: masses, labels 2/3; ``tumor,cyst`` phase 2: cysts), as nnU-Net samples each class's
    #: foreground alike; 0 = the paper (no class is preferred).
    rare_fraction: float = 0.0
    #: Phase-2 input region: "ground_truth" kidney region (default) or "predicted" by phase 1.
    tumor_region: str = "ground_truth"
    #: Phase-2 classes, one network output each: "tumor" (paper §3: one sigmoid output, label 2;
    #: cysts count as kidney) or "tumor,cyst" (the ``kits`` preset: a second output for label 3;
    #: a voxel is a mass where max(p_tumor, p_cyst) > inference.threshold, a tumor where
    #: p_tumor >= p_cyst and a cyst otherwise), so predictions hold all three KiTS labels.
    tumor_classes: str = "tumor"
    #: In-plane margin (mm) grown around the kidney region before phase 2, in training and at
    #: inference alike; 0 = the paper's tight region. See normalization.expand_region.
    region_margin_mm: float = 0.0
    #: Phase 2 (1) trains on patches this side (model px) around region (target), not whole
    #: slices (0, >= image_size); (image_size / patch)^2 more per batch/epoch (README "Patches").
    tumor_patch: int = 0
    kidney_patch: int = 0
    #: 2.5D input (not in the paper): this many axial slices as channels, odd; 1 = the paper's
    #: single slice, 3 fills the ImageNet encoder's RGB stem. ``model.in_channels`` follows.
    context_slices: int = 1
    #: Distance (mm) between neighbouring channels, interpolated (`kidneyseg.context`). 3 mm sits
    #: inside KiTS's 0.5-5 mm slices: a 5 mm scan blends its next slice in, a 0.5 mm scan looks
    #: 6 slices away; k = 3 spans 6 mm, within a 1 cm tumor, far below a kidney's ~11 cm.
    context_mm: float = 3.0
    #: Augmentation (paper §4.1): rotation, flip, random crop, Gaussian noise.
    augment: bool = True
    rotation_degrees: float = 15.0
    flip_probability: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)
    noise_std: float = 0.1
    #: DataLoader worker processes (0 = in the main process).
    num_workers: int = 2
    #: Slices per epoch (0 = one pass over all eligible training slices).
    samples_per_epoch: int = 0
    #: Extra training cases (not in the paper): a KiTS-layout folder or a preprocessed folder,
    #: e.g. real slices next to phantoms. They keep their own patient-level split: their
    #: training cases join training, their validation cases validation, their test cases stay
    #: out. "" = none. Normalised with the main cases' statistics.
    extra_cases: str = ""
    #: Fraction of each epoch's slices drawn from ``extra_cases`` (the rest from the main ones).
    extra_weight: float = 0.25
    #: Slicing planes, one model each (the paper's future work), e.g. "axial,coronal,sagittal";
    #: each gets the whole budget (epochs x samples of its own plane; README "Planes").
    planes: str = "axial"


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build (`kidneyseg.models.build_model`)."""

    #: "unet_resnet34" (paper §3) or "unet_plain" (the paper's baseline, Table 1).
    architecture: str = "unet_resnet34"
    #: "imagenet" (paper §3), "none", or a path to a local encoder state dict.
    encoder_weights: str = "imagenet"
    #: Input channels: set to ``data.context_slices`` whenever that is set (must equal it).
    in_channels: int = 1
    #: Network outputs. Training sets it from the phase (kidney 1; tumor one per entry of
    #: ``data.tumor_classes``) and checkpoints record it, so leave it at 1.
    classes: int = 1
    #: Width of the first level of `unet_plain` (doubles at each of its 5 levels).
    base_channels: int = 64
    #: Licence of the trained weights, shown by the model card (``kidneyseg info RUN_DIR``).
    #: Weights trained on KiTS data should say "CC BY-NC-SA 4.0" (the data's licence).
    licence: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """One phase's optimisation (paper §4.2)."""

    #: Loss: binary cross-entropy on logits (paper §4.2); "bce_dice" adds a batch soft Dice.
    loss: str = "bce"
    #: Adam, learning rate 1e-3 (paper §4.2).
    optimizer: str = "adam"
    lr: float = 1e-3
    #: "constant" (paper §4.2: plain Adam) or "cosine" (decay to 0 over the epochs).
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    #: Batch size 128 (paper §4.2).
    batch_size: int = 128
    #: 100 epochs (paper §4.2).
    epochs: int = 100
    seed: int = 0
    #: "auto" = bf16 autocast on a GPU that supports it and on CPUs with native bf16
    #: (AVX512-BF16/AMX), else fp32; or any Lightning precision ("32-true", "bf16-mixed", ...).
    precision: str = "auto"
    #: Lightning accelerator ("auto", "cpu", "gpu") and device count.
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    channels_last: bool = True
    compile: bool = False
    #: Validation batches per epoch (0 = all).
    limit_val_batches: int = 0
    #: best.safetensors: "loss" = lowest val_loss (paper §4.2), "dice" = highest val_dice.
    checkpoint_metric: str = "loss"


@dataclass(frozen=True)
class InferenceConfig:
    """Running the cascade on whole volumes."""

    batch_size: int = 16
    device: str = "auto"
    #: "auto" = bf16 autocast on a CUDA GPU with bf16 and on CPUs with native bf16
    #: (AVX512-BF16/AMX), else fp32; or "fp32" / "bf16" explicitly.
    precision: str = "auto"
    #: Probability threshold on the sigmoid outputs.
    threshold: float = 0.5
    #: "naive": every axial slice, whole (the paper's cascade; default until fast is shown equal
    #: with full-size models). "fast": a coarse pass finds the kidneys, both phases run only near
    #: them (README "Speed": 2.4x faster; with 128-px models kidney Dice 0.81 between modes).
    mode: str = "naive"
    #: Fast mode: axial step (mm) of the coarse pass; a kidney is longer than 40 mm.
    coarse_step_mm: float = 10.0
    #: Fast mode: margin (mm) kept around the kidneys found, in-plane and along the axial axis.
    crop_margin_mm: float = 30.0
    #: Fast mode: what is cut. "axial": whole slices over the kidneys' axial range (the naive
    #: answer on each slice it runs); "box": also in-plane per side (faster; edges change answers).
    fast_crop: str = "axial"
    #: Flip test-time augmentation: mean probability of each slice and its left-right mirror.
    tta: bool = False
    #: Plane models averaged: "all" the model folder has, or a list ("axial": fast mode's).
    planes: str = "all"
    #: "torch", "onnx" (ONNX Runtime, CPU fp32; exports on first use) or "auto": ONNX when it
    #: can run here and the model is already exported (`kidneyseg.onnx_backend`; README "Speed").
    backend: str = "auto"


@dataclass(frozen=True)
class PostprocessConfig:
    """Postprocessing of the assembled 3D label map (paper §4.3)."""

    #: Keep tumor (and cyst) only inside the predicted kidney region (paper §4.3).
    tumor_inside_kidney: bool = True
    #: Remove 3D connected components smaller than this (mL); 0 = off (paper preset).
    min_component_ml: float = 0.0
    #: Keep only the N largest 3D components of kidney + masses (labels >= 1); 0 = off.
    kidney_components: int = 0


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


#: ``data.tumor_classes`` values: phase 2's output classes, in output order.
TUMOR_CLASSES = ("tumor", "tumor,cyst")


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise a message saying how to fix."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise KidneysegError(f"config {where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):  # inf, nan, or 1e400 (which parses as inf)
                raise KidneysegError(f"config {where}: expected a finite number, got {value!r}")
            return number
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise KidneysegError(f"config {where}: expected {name}, got {value!r}")


def _apply(cfg: Config, updates: dict[str, Any], source: str) -> Config:
    sections = _fields(Config)
    new_sections: dict[str, Any] = {}
    for section, values in updates.items():
        if section not in sections:
            raise KidneysegError(
                f"{source}: unknown config section {section!r}; known: {', '.join(sections)}"
            )
        if not isinstance(values, dict):
            raise KidneysegError(f"{source}: section {section!r} must be a mapping of keys")
        current = getattr(cfg, section)
        hints = typing.get_type_hints(type(current))
        known = _fields(type(current))
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise KidneysegError(
                    f"{source}: unknown key {section}.{key}; known: {', '.join(known)}"
                )
            changes[key] = _coerce(value, hints[key], f"{section}.{key} ({source})")
        new_sections[section] = dataclasses.replace(current, **changes)
    data, model = updates.get("data", {}), updates.get("model", {})
    if "context_slices" in data and "in_channels" not in model:  # the input follows the context
        k = new_sections["data"].context_slices
        new_sections["model"] = dataclasses.replace(
            new_sections.get("model", cfg.model), in_channels=k
        )
    return dataclasses.replace(cfg, **new_sections)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """Turn ``["train.lr=1e-4", ...]`` into ``{"train": {"lr": "1e-4"}}`` (values typed later)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise KidneysegError(f"--set {item!r}: use section.key=value, e.g. train.lr=1e-4")
        out.setdefault(section, {})[name] = value.strip()
    return out


def validate(cfg: Config) -> Config:
    """Check value ranges; raise one message that says how to fix the first problem."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise KidneysegError(f"config {msg}")

    t, d, m = cfg.train, cfg.data, cfg.model
    need(t.lr > 0, f"train.lr must be > 0 (got {t.lr}); the paper uses 1e-3")
    need(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
    need(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs})")
    need(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    need(t.loss in ("bce", "bce_dice"), f"train.loss must be bce or bce_dice (got {t.loss!r})")
    need(
        t.optimizer in ("adam", "adamw"), f"train.optimizer must be adam or adamw ({t.optimizer!r})"
    )
    need(t.num_nodes >= 1, "train.num_nodes must be >= 1")
    need(t.checkpoint_metric in ("loss", "dice"), "train.checkpoint_metric must be loss or dice")
    need(
        t.lr_schedule in ("constant", "cosine"),
        f"train.lr_schedule must be constant or cosine (got {t.lr_schedule!r})",
    )
    need(
        d.image_size >= 32 and d.image_size % 32 == 0,
        f"data.image_size must be a multiple of 32 and >= 32 (got {d.image_size}); try 128/256/512",
    )
    kw, tw = d.kidney_window, d.tumor_window
    need(kw[0] < kw[1], "data.kidney_window must be (low, high) with low < high")
    need(tw is None or tw[0] < tw[1], "data.tumor_window must be none or (low, high), low < high")
    need(
        d.normalization == "zscore" or (d.normalization == "window" and bool(d.tumor_window)),
        f"data.normalization must be zscore or window (got {d.normalization!r}); window "
        "needs data.tumor_window too (phase 2 is unclipped by default), e.g. 0,400",
    )
    for name, may_be in (("foreground", ""), ("rare", ""), ("tumor_foreground", "none or ")):
        f = getattr(d, f"{name}_fraction")  # None only for tumor_foreground_fraction
        need(f is None or 0.0 <= f <= 1.0, f"data.{name}_fraction must be {may_be}in [0, 1]")
    need(d.region_margin_mm >= 0, "data.region_margin_mm must be >= 0")
    for name in ("tumor_patch", "kidney_patch"):
        ok = (p := getattr(d, name)) == 0 or (p % 32 == 0 and p >= 32)
        need(ok, f"data.{name} must be 0 or a multiple of 32, e.g. 64 (got {p})")
    need(
        d.tumor_region in ("ground_truth", "predicted"),
        f"data.tumor_region must be ground_truth or predicted (got {d.tumor_region!r})",
    )
    need(
        ",".join(c.strip() for c in d.tumor_classes.split(",")) in TUMOR_CLASSES,
        f"data.tumor_classes must be tumor (the paper) or tumor,cyst (got {d.tumor_classes!r})",
    )
    k = d.context_slices
    need(k >= 1 and k % 2 == 1, f"data.context_slices must be odd and >= 1 (got {k}), e.g. 3")
    need(d.context_mm > 0, f"data.context_mm must be > 0 (got {d.context_mm}); e.g. 3.0")
    need(
        m.in_channels == k,
        f"model.in_channels ({m.in_channels}) must equal data.context_slices ({k}); leave "
        "model.in_channels unset, it follows data.context_slices",
    )
    need(d.noise_std >= 0 and 0 <= d.flip_probability <= 1, "data.noise_std >= 0, flip in [0, 1]")
    need(0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "data.crop_scale must be 0 < lo <= hi <= 1")
    need(d.num_workers >= 0 and d.samples_per_epoch >= 0, "data.num_workers/samples >= 0")
    need(
        0.0 < d.extra_weight < 1.0,
        f"data.extra_weight must be in (0, 1) (got {d.extra_weight}); e.g. 0.25",
    )
    need(
        m.architecture in ("unet_resnet34", "unet_plain"),
        f"model.architecture must be unet_resnet34 or unet_plain (got {m.architecture!r})",
    )
    need(m.in_channels >= 1 and m.classes >= 1 and m.base_channels >= 1, "model sizes must be >= 1")
    s = cfg.preprocess.split
    need(
        all(x >= 0 for x in s) and abs(sum(s) - 1) < 1e-6 and s[0] > 0,
        f"preprocess.split must be three fractions summing to 1 with train > 0 (got {s})",
    )
    need(cfg.preprocess.workers >= 1, "preprocess.workers must be >= 1")
    for name, seed in (("preprocess.seed", cfg.preprocess.seed), ("train.seed", t.seed)):
        need(0 <= seed < 2**32, f"{name} must be in 0 .. 2**32 - 1 (got {seed})")
    i = cfg.inference
    need(i.batch_size >= 1, "inference.batch_size must be >= 1")
    need(0 < i.threshold < 1, "inference.threshold must be in (0, 1)")
    need(i.mode in ("fast", "naive"), f"inference.mode must be fast or naive (got {i.mode!r})")
    c = i.fast_crop
    need(c in ("axial", "box"), f"inference.fast_crop must be axial or box (got {c!r})")
    b = i.backend
    need(b in ("auto", "torch", "onnx"), f"inference.backend must be auto, torch or onnx ({b!r})")
    need(cfg.inference.coarse_step_mm > 0, "inference.coarse_step_mm must be > 0")
    need(cfg.inference.crop_margin_mm >= 0, "inference.crop_margin_mm must be >= 0")
    need(
        cfg.inference.precision in ("auto", "fp32", "bf16", "fp16"),
        f"inference.precision must be auto, fp32, bf16 or fp16 (got {cfg.inference.precision!r})",
    )
    need(cfg.postprocess.min_component_ml >= 0, "postprocess.min_component_ml must be >= 0")
    need(cfg.postprocess.kidney_components >= 0, "postprocess.kidney_components must be >= 0")
    check_plane_settings(d.planes, cfg.inference.planes)
    return cfg


def resolve_config(
    preset: str = "paper",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    base: Config | dict[str, Any] | None = None,
) -> Config:
    """Build the config: defaults (or ``base``) < preset(s) < file < ``--set`` overrides.

    ``preset`` is one name of `PRESETS` or several joined by commas (`preset_names`), e.g.
    ``"fast,kits"``: the fast CPU settings with phase 2 predicting tumor and cyst.
    """
    names = preset_names(preset)
    if isinstance(base, dict):
        cfg = config_from_dict(base)
    else:
        cfg = base or Config()
    for name in names:
        cfg = _apply(cfg, PRESETS[name], f"preset {name}")
    if config_file is not None:
        cfg = _apply(cfg, load_config_file(config_file), str(config_file))
    if overrides:
        cfg = _apply(cfg, parse_overrides(overrides), "--set")
    return validate(cfg)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A JSON-ready dict of the config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a `Config` from `config_to_dict` output (unknown keys are errors)."""
    return validate(_apply(Config(), data, "stored config"))


def dump_config(cfg: Config, path: str | Path, **extra: Any) -> None:
    """Write the resolved config (plus e.g. the package version) as JSON, atomically."""
    payload = {"config": config_to_dict(cfg), **extra}
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")
