"""Networks and their checkpoints.

* ``unet_resnet34`` (paper §3): U-Net with an ImageNet-pretrained ResNet34 encoder, from
  segmentation_models_pytorch, 1 input channel (``data.context_slices`` with 2.5D context;
  3 uses the RGB stem as it is), 1 output logit per output (`phase_config`; 2 for a
  ``kits`` phase 2).
* ``unet_plain`` (the paper's baseline, Table 1): a plain 5-level U-Net, two 3x3 convs per
  level, max-pool down, channels doubling, transposed-conv up, skip concatenation.

A checkpoint is one ``.safetensors`` file: tensors only (loading never unpickles), with a JSON
header entry ``kidneyseg`` holding the resolved config, the phase, the label map, the names of
the network's outputs (``outputs``, one per channel: ``["tumor", "cyst"]`` for a ``kits`` phase
2), the normalisation record and the package version, so the file alone rebuilds its model.
`phase_config` gives a phase the config it trains with (``model.classes`` = its outputs).

Example:
    >>> from kidneyseg.config import ModelConfig
    >>> net = build_model(ModelConfig(encoder_weights="none"))
    >>> type(net).__name__
    'Unet'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kidneyseg.config import Config, ModelConfig, config_from_dict, config_to_dict
from kidneyseg.errors import KidneysegError
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.types import LABEL_NAMES, PHASES, phase_outputs
from kidneyseg.utils import atomic_path, package_version

CHECKPOINT_FORMAT = "kidneyseg-checkpoint"
#: Bump when the checkpoint layout changes incompatibly; loaders refuse other versions.
CHECKPOINT_VERSION = 1


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(True),
        )


class PlainUNet(nn.Module):
    """The classic 5-level U-Net (Ronneberger et al. 2015), the paper's baseline."""

    def __init__(self, in_channels: int = 1, classes: int = 1, base: int = 64) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(5)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_DoubleConv(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
            self.merge.append(_DoubleConv(w * 2, w))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def _adapt_stem(stem: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``C``-input stem (ImageNet: RGB) for ``channels`` inputs, as smp adapts its ImageNet
    weights: summed for one channel, else the filters cycled and scaled by ``C / channels``
    (the response keeps its scale; ``C`` channels: unchanged)."""
    if channels == 1:
        return stem.sum(1, keepdim=True)
    cycled = stem[:, torch.arange(channels) % stem.shape[1]]
    return cycled * (stem.shape[1] / channels)


def _load_local_encoder(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise KidneysegError("encoder weights file not found", path=path)
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KidneysegError(f"cannot read encoder weights: {exc}", path=path) from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    stem = state.get("conv1.weight")
    own = encoder.state_dict().get("conv1.weight")
    if stem is not None and own is not None and stem.shape[1] != own.shape[1]:
        state = {**state, "conv1.weight": _adapt_stem(stem, own.shape[1])}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # smp's encoder overrides load_state_dict (and returns nothing); call the base method so the
    # missing/unexpected keys can be checked.
    missing, unexpected = nn.Module.load_state_dict(encoder, state, strict=False)
    if unexpected or len(missing) == len(encoder.state_dict()):
        raise KidneysegError(
            f"encoder weights do not fit a ResNet34 (unexpected keys: {list(unexpected)[:3]})",
            path=path,
        )


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network a `ModelConfig` describes (one factory for every architecture)."""
    if cfg.architecture == "unet_plain":
        return PlainUNet(cfg.in_channels, cfg.classes, cfg.base_channels)
    if cfg.architecture != "unet_resnet34":
        raise KidneysegError(f"unknown model.architecture {cfg.architecture!r}")
    import segmentation_models_pytorch as smp

    weights = cfg.encoder_weights
    local = weights.lower() not in ("imagenet", "none", "")
    smp_weights = "imagenet" if weights.lower() == "imagenet" else None
    try:
        model = smp.Unet(
            encoder_name="resnet34",
            encoder_weights=smp_weights,
            in_channels=cfg.in_channels,
            classes=cfg.classes,
        )
    except Exception as exc:  # network errors surface as many types (URLError, HF errors, ...)
        if smp_weights is None:
            raise
        raise KidneysegError(
            "cannot download the ImageNet ResNet34 encoder weights "
            f"({type(exc).__name__}). Pre-fetch them on a machine with internet "
            '(python -c "import segmentation_models_pytorch as s; '
            "s.Unet('resnet34', encoder_weights='imagenet')\"), pass a local file with "
            "--set model.encoder_weights=PATH, or train from scratch with "
            "--set model.encoder_weights=none"
        ) from exc
    if local:
        _load_local_encoder(model, Path(weights))
    return model


def phase_config(cfg: Config, phase: str) -> Config:
    """``cfg`` with ``model.classes`` set to the phase's number of outputs (`phase_outputs`:
    kidney 1; tumor one per ``data.tumor_classes`` entry), as the phase trains and records it.

    Example:
        >>> from kidneyseg.config import resolve_config
        >>> phase_config(resolve_config("kits"), "tumor").model.classes
        2
    """
    if phase not in PHASES:
        raise KidneysegError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    classes = len(phase_outputs(phase, cfg.data.tumor_classes))
    return replace(cfg, model=replace(cfg.model, classes=classes))


@dataclass(frozen=True)
class CheckpointMeta:
    """The JSON header of a checkpoint, parsed and checked.

    Attributes:
        phase: ``"kidney"`` or ``"tumor"``.
        config: the resolved config the model was trained with.
        normalization: how the phase's input is normalised.
        labels: label id (as a string) -> name.
        kidneyseg_version: the package version that wrote it.
        extra: anything else the writer added (``epoch``, ``val_loss``, ``val_dice``,
            ``train_loss``).
        digest: `checkpoint_digest` of header and weights: the header's (checked) by
            `load_checkpoint`, computed there for files written before it existed; "" from
            `read_checkpoint_meta` of such a file. Names these weights wherever they lie
            (the ONNX export cache, `kidneyseg.onnx_backend`).
        outputs: the network's outputs by name, one per channel (`phase_outputs`; files from
            before the header recorded them get the config's).
    """

    phase: str
    config: Config
    normalization: NormalizationRecord
    labels: dict[str, str]
    kidneyseg_version: str
    extra: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    outputs: tuple[str, ...] = ("kidney",)


#: Header key holding the hash that binds the header to the weights (see `checkpoint_digest`).
DIGEST_KEY = "digest"


def checkpoint_digest(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """BLAKE2b of the header (without its digest) and every tensor (name, dtype, shape, bytes).

    Stored in the header when saving and recomputed when loading, so a header edited after
    the fact (an ``image_size``, a window, a normalisation statistic) or weights swapped under
    it are detected instead of giving different masks. Costs about 0.1 s per 100 MB.

    Example:
        >>> len(checkpoint_digest({"phase": "kidney"}, {"w": torch.zeros(2)}))
        64
    """
    import hashlib

    h = hashlib.blake2b(digest_size=32)
    body = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    cfg: Config,
    phase: str,
    normalization: NormalizationRecord,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights and everything needed to rebuild it, atomically.

    The header carries `checkpoint_digest` of itself and the weights, and the phase's
    ``outputs`` (`phase_outputs` of ``cfg``).

    Raises:
        KidneysegError: the file cannot be written (full disk...); nothing is left then; or
            ``cfg.model.classes`` is not the phase's number of outputs (see `phase_config`).
    """
    from safetensors.torch import save_file

    outputs = phase_outputs(phase, cfg.data.tumor_classes)
    if cfg.model.classes != len(outputs):
        raise KidneysegError(
            f"model.classes={cfg.model.classes} but the {phase} phase has {len(outputs)} "
            f"output(s) ({', '.join(outputs)}); build the model from phase_config(cfg, phase)",
            path=path,
        )
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "kidneyseg_version": package_version(),
        "phase": phase,
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "outputs": list(outputs),
        "config": config_to_dict(cfg),
        "normalization": normalization.to_dict(),
        **(extra or {}),
    }
    meta = json.loads(json.dumps(meta))  # the digest covers exactly what a reader parses
    meta[DIGEST_KEY] = checkpoint_digest(meta, state)
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata={"kidneyseg": json.dumps(meta)})
        except Exception as exc:  # safetensors reports I/O errors as its own type
            if isinstance(exc, OSError):
                raise
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise KidneysegError(f"cannot write checkpoint: {reason}", path=path) from exc


_KNOWN_KEYS = {
    "format",
    "format_version",
    "kidneyseg_version",
    "phase",
    "labels",
    "outputs",
    "config",
    "normalization",
    DIGEST_KEY,
}


def _header(p: Path) -> dict[str, Any]:
    """The parsed ``kidneyseg`` header of a checkpoint file."""
    from safetensors import safe_open

    if not p.is_file():
        raise KidneysegError("checkpoint not found", path=p)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("kidneyseg")
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise KidneysegError(f"corrupt or unreadable checkpoint ({reason})", path=p) from exc
    if raw is None:
        raise KidneysegError("not a kidneyseg checkpoint (no 'kidneyseg' metadata)", path=p)
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise KidneysegError(f"corrupt checkpoint metadata: not JSON ({exc})", path=p) from exc
    if not isinstance(meta, dict):
        raise KidneysegError("corrupt checkpoint metadata: not a JSON object", path=p)
    return meta


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint, validated, without loading the weights.

    The header's digest is checked by `load_checkpoint`, which reads the weights.

    Raises:
        KidneysegError: missing, corrupt, foreign or incompatible file, or a header whose
            config or normalisation record is not valid (one line naming the file).
    """
    p = Path(path)
    meta = _header(p)
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_VERSION:
        raise KidneysegError(
            f"checkpoint format {meta.get('format')} v{meta.get('format_version')} from kidneyseg "
            f"{meta.get('kidneyseg_version')} is incompatible with this version (needs "
            f"v{CHECKPOINT_VERSION}); retrain or use the matching kidneyseg release",
            path=p,
        )
    try:
        norm = NormalizationRecord.from_dict(meta.get("normalization") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise KidneysegError(
            f"checkpoint has no valid normalisation record ({str(exc)[:200]})", path=p
        ) from exc
    if not isinstance(meta.get("config"), dict):
        raise KidneysegError("checkpoint header has no config", path=p)
    try:
        cfg = config_from_dict(meta["config"])
    except KidneysegError as exc:
        raise KidneysegError(f"checkpoint holds an invalid config: {exc.message}", path=p) from None
    phase = str(meta.get("phase"))
    if phase not in ("kidney", "tumor"):
        raise KidneysegError(f"checkpoint names an unknown phase {phase!r}", path=p)
    labels = meta.get("labels") or {}
    extra = {k: v for k, v in meta.items() if k not in _KNOWN_KEYS}
    outputs = phase_outputs(phase, cfg.data.tumor_classes)
    recorded = meta.get("outputs", list(outputs))  # absent in files from before it was recorded
    if recorded != list(outputs):
        raise KidneysegError(
            f"checkpoint header names outputs {recorded!r} but its config "
            f"(data.tumor_classes={cfg.data.tumor_classes!r}) gives {list(outputs)!r}",
            path=p,
        )
    return CheckpointMeta(
        phase=phase,
        config=cfg,
        normalization=norm,
        labels=dict(labels) if isinstance(labels, dict) else {},
        kidneyseg_version=str(meta.get("kidneyseg_version")),
        extra=extra,
        digest=str(meta.get(DIGEST_KEY) or ""),
        outputs=outputs,
    )


def _check_weights(path: Path, state: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Finite tensors, and the header's digest (when it has one) matches header + weights."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise KidneysegError(
                f"checkpoint weights hold NaN or infinite values (tensor {name}); the training "
                "diverged or the file is damaged",
                path=path,
            )
    stored = header.get(DIGEST_KEY)
    # Files written before the digest existed have none; they load as before.
    if stored is not None and stored != checkpoint_digest(header, state):
        raise KidneysegError(
            "checkpoint header does not match its weights (digest differs): the file was edited "
            "or damaged after it was written; use the file training wrote",
            path=path,
        )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    Raises:
        KidneysegError: as `read_checkpoint_meta`; weights that are damaged, not finite, do not
            match the header's digest, or do not fit the architecture the header names.
    """
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_checkpoint_meta(p)
    model_cfg = ModelConfig(**{**config_to_dict(meta.config)["model"], "encoder_weights": "none"})
    model = build_model(model_cfg)
    try:
        state = load_file(str(p), device="cpu")
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise KidneysegError(f"corrupt checkpoint weights ({reason})", path=p) from exc
    header = _header(p)
    _check_weights(p, state, header)
    if not meta.digest:  # written before the digest existed
        meta = replace(meta, digest=checkpoint_digest(header, state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise KidneysegError(
            f"weights do not fit the model the header describes (model.architecture="
            f"{model_cfg.architecture}): {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} wrongly shaped tensors (e.g. {example})",
            path=p,
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta
