"""CPU inference with ONNX Runtime (``inference.backend``): export, cache and run one phase.

ONNX Runtime runs the ResNet34 U-Net about 1.3-1.7x faster than torch fp32 on a 2-core AVX2
CPU (README "Speed"). A phase's network is exported once (`export_onnx`, ``kidneyseg export
RUN_DIR --format onnx``, or the first ``predict --backend onnx``) and then loaded as an
`OnnxNetwork`, which `kidneyseg.phase_runner.PhaseRunner` calls like the torch network.

* **Export**: torch's TorchScript-based exporter (``dynamo=False``, opset `OPSET`), traced on a
  ``1 x C x 96 x 64`` batch with dynamic batch, height and width (C = the checkpoint's
  ``model.in_channels``; outputs: its ``model.classes`` logits). The file's metadata names the
  format (`ONNX_FORMAT`, `ONNX_FORMAT_VERSION`), the phase and the checkpoint's digest
  (`kidneyseg.models.CheckpointMeta.digest`: header and weights).
* **Verification**: before the file is renamed into place, ONNX Runtime and torch run the same
  fixed random batch (``2 x C x S x S``, S = ``data.image_size``, so batch and size differ from
  the traced ones); the export is refused unless ``max |sigmoid(onnx) - sigmoid(torch)| <=``
  `VERIFY_ATOL` (1e-3, an *absolute* tolerance on probabilities, not on logits: fp32 rounding
  grows with a logit's magnitude, while masks and probability files only see the sigmoid; the
  demo models differ by about 1e-5 in logits).
* **Cache**: ``best.onnx`` beside ``best.safetensors`` when the model was given as a writable
  folder; otherwise (an installed model id, a ``.zip`` package unpacked to a temporary folder,
  a read-only folder) ``$KIDNEYSEG_HOME/onnx/<digest>.onnx`` (default ``~/.cache/kidneyseg``,
  `kidneyseg.model_package.kidneyseg_home`). A cached file is used only when its metadata names
  the checkpoint's digest and it loads; otherwise it is exported again (written atomically).
* **Backends** (`use_backend`, the `kidneyseg.inference.Predictor` hook): ``torch``; ``onnx``
  (CPU and fp32 only, exports on first use; a clear error without onnxruntime or on another
  device); ``auto`` (the default): ONNX only on the CPU at fp32 precision with onnxruntime
  installed *and* every phase already exported, so a fresh model's first prediction never pays
  for an export it did not ask for; torch otherwise.

Example:
    >>> export_onnx("run/kidney/best.safetensors")  # doctest: +SKIP
    PosixPath('run/kidney/best.onnx')
    >>> runner.model = OnnxNetwork.load("run/kidney/best.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kidneyseg.config import InferenceConfig
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.run_dir import BEST_FILE
from kidneyseg.hardware import canonical_precision
from kidneyseg.model_package import kidneyseg_home, open_model
from kidneyseg.models import CheckpointMeta, load_checkpoint
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.utils import atomic_path

#: ``inference.backend`` words.
BACKENDS = ("auto", "torch", "onnx")
ONNX_SUFFIX = ".onnx"
#: Folder of the user cache under `kidneyseg.model_package.kidneyseg_home`.
CACHE_DIR = "onnx"
ONNX_FORMAT = "kidneyseg-onnx"
#: Bump when the export changes (opset, names): older files are then exported again.
ONNX_FORMAT_VERSION = 1
OPSET = 17
#: Largest accepted ``|sigmoid(onnx) - sigmoid(torch)|`` on the verification batch.
VERIFY_ATOL = 1e-3
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_TRACE_HW = (96, 64)
_INSTALL = "pip install 'kidneyseg[onnx]'"


def runtime_available() -> bool:
    """True when onnxruntime (what runs an export) is installed."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_available() -> bool:
    """True when onnxruntime and onnx (what writes an export) are both installed."""
    return runtime_available() and importlib.util.find_spec("onnx") is not None


def cache_path(digest: str) -> Path:
    """The user-cache file of a checkpoint digest: ``$KIDNEYSEG_HOME/onnx/<digest>.onnx``."""
    return kidneyseg_home() / CACHE_DIR / f"{digest}{ONNX_SUFFIX}"


def default_onnx_path(checkpoint: str | Path, digest: str, in_place: bool = True) -> Path:
    """Where a checkpoint's export goes: ``best.onnx`` beside it when ``in_place`` and its
    folder is writable, else `cache_path`."""
    beside = Path(checkpoint).with_suffix(ONNX_SUFFIX)
    if in_place and os.access(beside.parent, os.W_OK):
        return beside
    return cache_path(digest)


def _session(path: Path) -> Any:
    """An ONNX Runtime CPU session on ``path`` with torch's thread count (one line on errors)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KidneysegError(f"ONNX models need onnxruntime: {_INSTALL}", path=path) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Without the arena a session gives its activations back after each batch: one 512 px
    # batch of 4 peaked at 1.2 GiB RSS (torch: 1.3) instead of 1.6, at the same speed.
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise KidneysegError(f"corrupt or unreadable ONNX file ({reason})", path=path) from None


def _check_metadata(session: Any, path: Path, digest: str | None) -> dict[str, str]:
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("format") != ONNX_FORMAT:
        raise KidneysegError("not a kidneyseg ONNX export (no kidneyseg metadata)", path=path)
    if meta.get("format_version") != str(ONNX_FORMAT_VERSION):
        raise KidneysegError(
            f"ONNX export format {meta.get('format_version')} is not this kidneyseg's "
            f"({ONNX_FORMAT_VERSION}); export again (kidneyseg export RUN_DIR --format onnx)",
            path=path,
        )
    if digest is not None and meta.get("checkpoint_digest") != digest:
        raise KidneysegError(
            "ONNX file was exported from another checkpoint (digest differs); export again "
            "(kidneyseg export RUN_DIR --format onnx)",
            path=path,
        )
    return meta


class OnnxNetwork(torch.nn.Module):
    """An ONNX Runtime session that `PhaseRunner` calls like the torch network.

    Input: a float tensor ``(n, C, h, w)`` in any memory format (made a contiguous float32
    NumPy array); output: the logits as a float32 CPU tensor moved to the input's device. It
    has no parameters, so ``.to(...)`` and ``.eval()`` are no-ops, and forward hooks work.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        path: the file it was loaded from (for messages).
    """

    def __init__(self, session: Any, path: str | Path | None = None) -> None:
        super().__init__()
        self.session = session
        self.path = None if path is None else Path(path)
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)

    @classmethod
    def load(cls, path: str | Path, digest: str | None = None) -> OnnxNetwork:
        """Open a kidneyseg ONNX export (intra-op threads = ``torch.get_num_threads()``).

        Raises:
            KidneysegError: no onnxruntime, a missing, corrupt or foreign file, another export
                format version, or (with ``digest``) one exported from another checkpoint.
        """
        p = Path(path)
        if not p.is_file():
            raise KidneysegError("ONNX file not found", path=p)
        session = _session(p)
        _check_metadata(session, p, digest)
        return cls(session, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        return f"path={self.path}"


def _cached(candidates: list[Path], digest: str) -> OnnxNetwork | None:
    """The first candidate that is a loadable export of ``digest`` (stale or corrupt: skipped)."""
    for path in candidates:
        if path.is_file():
            try:
                return OnnxNetwork.load(path, digest)
            except KidneysegError:
                continue
    return None


def _verify(model: torch.nn.Module, session: Any, meta: CheckpointMeta, path: Path) -> float:
    """Run torch and ONNX Runtime on a fixed random batch; the largest probability difference.

    Raises:
        KidneysegError: wrong shape, non-finite values, or a difference above `VERIFY_ATOL`.
    """
    size = meta.config.data.image_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, meta.config.model.in_channels, size, size, generator=generator)
    with torch.no_grad():
        expected = model(x).float()
    got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    if got.shape != expected.shape or not bool(torch.isfinite(got).all()):
        raise KidneysegError(
            f"ONNX export gives {tuple(got.shape)} (finite: {bool(torch.isfinite(got).all())}) "
            f"where torch gives {tuple(expected.shape)}; use inference.backend=torch",
            path=path,
        )
    diff = float((torch.sigmoid(got) - torch.sigmoid(expected)).abs().max())
    if not diff <= VERIFY_ATOL:
        logit_diff = float((got - expected).abs().max())
        raise KidneysegError(
            f"ONNX export does not match torch: max |sigmoid difference| {diff:.1e} > "
            f"{VERIFY_ATOL:g} (max logit difference {logit_diff:.1e}); use "
            "inference.backend=torch",
            path=path,
        )
    return diff


def write_onnx(model: torch.nn.Module, meta: CheckpointMeta, path: str | Path) -> OnnxNetwork:
    """Export a phase's network (on the CPU) to ``path``, verified against torch, atomically.

    Returns:
        The written file, loaded.

    Raises:
        KidneysegError: onnx or onnxruntime missing, a network that does not export, an
            export that does not match torch (`_verify`), or ``path`` cannot be written;
            ``path`` is then left as it was.
    """
    if not onnx_available():
        raise KidneysegError(f"ONNX export needs onnx and onnxruntime: {_INSTALL}", path=path)
    if not meta.digest:
        raise KidneysegError("checkpoint has no digest to tie an ONNX export to", path=path)
    import onnx

    out = Path(path)
    model_cfg = meta.config.model
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(out) as tmp:
        try:
            with warnings.catch_warnings():  # the legacy exporter announces its deprecation
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model.eval(),
                    (torch.zeros(1, model_cfg.in_channels, *_TRACE_HW),),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
                    opset_version=OPSET,
                    dynamo=False,
                )
            proto = onnx.load(str(tmp))
        except Exception as exc:
            if isinstance(exc, OSError):
                raise
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise KidneysegError(f"ONNX export failed ({reason})", path=out) from exc
        stamp = {
            "format": ONNX_FORMAT,
            "format_version": str(ONNX_FORMAT_VERSION),
            "checkpoint_digest": meta.digest,
            "phase": meta.phase,
            "in_channels": str(model_cfg.in_channels),
            "classes": str(model_cfg.classes),
            "kidneyseg_version": meta.kidneyseg_version,
        }
        for key, value in stamp.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        session = _session(tmp)
        _verify(model, session, meta, out)
    return OnnxNetwork(session, out)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    in_place: bool = True,
    force: bool = False,
) -> Path:
    """Export one phase's checkpoint to ONNX (verified against torch; see the module notes).

    An existing export of the same checkpoint (same digest, loadable) is kept unless
    ``force``; a stale or corrupt one is replaced.

    Args:
        checkpoint: a ``best.safetensors`` (any phase).
        out: the ``.onnx`` file; None = `default_onnx_path` (beside the checkpoint, or the
            user cache when ``in_place`` is False or its folder is not writable).

    Returns:
        The ``.onnx`` file.

    Raises:
        KidneysegError: a bad checkpoint, or as `write_onnx`.

    Example:
        >>> export_onnx("run/tumor/best.safetensors")  # doctest: +SKIP
        PosixPath('run/tumor/best.onnx')
    """
    model, meta = load_checkpoint(checkpoint, device="cpu")
    target = Path(out) if out is not None else default_onnx_path(checkpoint, meta.digest, in_place)
    if not force and _cached([target], meta.digest) is not None:
        return target
    write_onnx(model, meta, target)
    return target


def export_run(model: str | Path, force: bool = False) -> dict[str, Path]:
    """``kidneyseg export RUN_DIR --format onnx``: export every ``<phase>/best.safetensors``
    (plane models' ``<phase>_<plane>/`` too) of a model folder, package or installed id
    (`kidneyseg.model_package.open_model`; the last two go to the user cache). Returns
    ``{phase folder: .onnx file}``.

    Raises:
        KidneysegError: no phase checkpoint, or as `export_onnx`.
    """
    in_place = Path(model).is_dir()
    with open_model(model) as folder:
        checkpoints = sorted(folder.glob(f"*/{BEST_FILE}"))
        if not checkpoints:
            raise KidneysegError(f"model folder holds no <phase>/{BEST_FILE}", path=model)
        return {c.parent.name: export_onnx(c, in_place=in_place, force=force) for c in checkpoints}


def _refuse_onnx(runners: Mapping[str, PhaseRunner], settings: InferenceConfig) -> None:
    """Why ``inference.backend=onnx`` cannot run here, as an error (nothing when it can)."""
    devices = sorted({str(r.device) for r in runners.values() if r.device.type != "cpu"})
    if devices:
        raise KidneysegError(
            f"inference.backend=onnx runs on the CPU only (device {devices[0]}); use "
            "--device cpu or --backend torch"
        )
    if not runtime_available():
        raise KidneysegError(f"inference.backend=onnx needs onnxruntime: {_INSTALL}")
    reduced = any(r.precision != "fp32" for r in runners.values())
    if reduced and canonical_precision(settings.precision) != "auto":
        raise KidneysegError(
            f"inference.backend=onnx runs fp32, not inference.precision={settings.precision}; "
            "set inference.precision=fp32 (or auto) or use --backend torch"
        )


def use_backend(
    runners: Mapping[str, PhaseRunner], settings: InferenceConfig, model_dir: str | Path
) -> str:
    """Put ``settings.backend`` into effect on configured runners; returns ``torch``/``onnx``.

    With ONNX every runner's ``model`` becomes an `OnnxNetwork` and its precision ``fp32``.
    ``runners`` are keyed by model folder (``kidney``, ``tumor``, and plane models'
    ``kidney_coronal``..., `kidneyseg.fusion.by_folder`); exports are looked for beside
    ``model_dir/<folder>/best.safetensors`` (when ``model_dir`` is a folder) and in the user
    cache; ``onnx`` exports what is missing (``auto`` does not).
    Call it after the CPU thread count is set: the sessions take torch's.

    Raises:
        KidneysegError: ``onnx`` on a non-CPU device, without onnxruntime, with bf16
            precision, or an export that fails (`write_onnx`; it also needs onnx); an unknown
            backend word.
    """
    backend = settings.backend
    if backend not in BACKENDS:
        raise KidneysegError(f"inference.backend must be one of {', '.join(BACKENDS)}")
    if backend == "torch" or not runners:
        return "torch"
    if backend == "onnx":
        _refuse_onnx(runners, settings)
    elif not (
        all(r.device.type == "cpu" and r.precision == "fp32" for r in runners.values())
        and runtime_available()
    ):
        return "torch"
    folder = Path(model_dir)
    in_place = folder.is_dir()
    networks: dict[str, OnnxNetwork] = {}
    for phase, runner in runners.items():
        digest = runner.meta.digest
        checkpoint = folder / phase / BEST_FILE
        places = [checkpoint.with_suffix(ONNX_SUFFIX)] if in_place else []
        network = _cached([*places, cache_path(digest)], digest) if digest else None
        if network is None:
            if backend == "auto":
                return "torch"
            target = default_onnx_path(checkpoint, digest, in_place)
            network = write_onnx(runner.model.to("cpu"), runner.meta, target)
        networks[phase] = network
    for phase, network in networks.items():
        runners[phase].model = network
        runners[phase].precision = "fp32"
    return "onnx"
