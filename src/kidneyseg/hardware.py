"""Where and how precisely the networks run: one vocabulary for training and inference.

* **Device kinds**: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` (alias ``gpu``),
  ``cuda:N``, ``mps``. ``train.accelerator`` and ``inference.device`` take the same words.
* **Precisions**: ``auto``, ``fp32``, ``bf16``, ``fp16``. ``auto`` is bf16 on a CUDA GPU that
  supports it (fp16 on older GPUs) and on CPUs with native bf16 (AVX512-BF16/AMX, about 2x
  faster per step there), else fp32. ``train.precision`` also accepts Lightning's own names
  (``32-true``, ``bf16-mixed``, ``16-mixed``, ...). bf16/fp16 mean autocast ("mixed").
* **Threads**: prediction on a CPU uses every core this process may run on unless
  ``OMP_NUM_THREADS`` says otherwise.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> lightning_precision("fp32", "cpu"), canonical_precision("bf16-mixed")
    ('32-true', 'bf16')
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from kidneyseg.config import Config
from kidneyseg.errors import KidneysegError
from kidneyseg.utils import cpu_has_native_bf16

#: The precision words; Lightning's names are aliases of these.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_ALIASES = {
    "32": "fp32",
    "32-true": "fp32",
    "bf16-mixed": "bf16",
    "16-mixed": "fp16",
    "16": "fp16",
}
#: Lightning-only precisions passed through unchanged for training.
_LIGHTNING_ONLY = {"bf16-true", "16-true", "64-true"}


def canonical_device_kind(value: str) -> str:
    """``gpu`` -> ``cuda``; other words unchanged (lower case)."""
    text = value.strip().lower()
    return "cuda" if text == "gpu" else text


def canonical_precision(value: str) -> str:
    """A precision word (`PRECISIONS`) for any accepted spelling; unknown ones unchanged."""
    text = value.strip().lower()
    return _ALIASES.get(text, text)


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for a device word: ``auto``, ``cpu``, ``cuda``/``gpu``, ``cuda:1``, ``mps``.

    Raises:
        KidneysegError: an unknown word, or a device this machine does not have.
    """
    text = canonical_device_kind(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise KidneysegError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KidneysegError(f"device {device!r}: no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise KidneysegError(f"device {device!r}: MPS is not available; use --device cpu")
    return dev


def resolve_precision(precision: str, device_type: str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a precision word on a device kind (``cpu``/``cuda``/...).

    Example:
        >>> resolve_precision("fp32", "cuda"), resolve_precision("bf16", "mps")
        ('fp32', 'fp32')
    """
    word = canonical_precision(precision)
    if word == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"
    if word not in PRECISIONS:
        raise KidneysegError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if device_type == "mps" or (device_type == "cpu" and word == "fp16"):
        return "fp32"  # no reduced-precision autocast there
    return word


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of a resolved precision (`resolve_precision`) on ``device``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def lightning_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision string for a precision word (resolving ``auto`` for the device)."""
    text = precision.strip().lower()
    if text in _LIGHTNING_ONLY:
        return text
    word = canonical_precision(text)
    if word != "auto" and word not in PRECISIONS:
        allowed = sorted({*PRECISIONS, *_ALIASES, *_LIGHTNING_ONLY})
        raise KidneysegError(
            f"config train.precision must be auto or one of "
            f"{', '.join(a for a in allowed if a != 'auto')} (got {precision!r})"
        )
    return _LIGHTNING[resolve_precision(word, "cuda" if accelerator == "gpu" else accelerator)]


def use_all_cores() -> None:
    """Let torch use every core this process may run on (unless ``OMP_NUM_THREADS`` is set).

    torch defaults to the physical core count; prediction asked for speed, so use them all.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and torch.get_num_threads() < cores:
        torch.set_num_threads(cores)


@dataclass(frozen=True)
class Hardware:
    """What Lightning runs on, resolved from ``train.*`` (see `resolve_hardware`)."""

    accelerator: str
    devices: int | list[int] | str
    num_nodes: int
    world_size: int
    strategy: str
    precision: str

    @property
    def cuda(self) -> bool:
        return self.accelerator == "gpu"


def _parse_devices(value: str, accelerator: str) -> tuple[int | list[int] | str, int]:
    text = value.strip().lower()
    available = torch.cuda.device_count() if accelerator == "gpu" else os.cpu_count() or 1
    if text in ("auto", "-1"):
        return (1, 1) if accelerator == "cpu" else ("auto" if text == "auto" else -1, available)
    try:
        if "," in text:
            ids = [int(v) for v in text.split(",") if v.strip()]
            return ids, len(ids)
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise KidneysegError(
            f"config train.devices must be auto, a count >= 1 or a list of ids "
            f"like 0,1 (got {value!r})"
        )
    if accelerator == "gpu" and n > available:
        raise KidneysegError(f"train.devices={n} but only {available} CUDA GPU(s) are visible")
    return n, n


def resolve_hardware(cfg: Config) -> Hardware:
    """Accelerator, devices, DDP strategy and Lightning precision for ``cfg.train`` here.

    Example:
        >>> resolve_hardware(Config()).precision in ("32-true", "bf16-mixed", "16-mixed")
        True
    """
    t = cfg.train
    kind = canonical_device_kind(t.accelerator)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind not in ("cpu", "cuda", "mps"):
        raise KidneysegError(
            f"config train.accelerator must be auto, cpu or gpu (got {t.accelerator!r})"
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise KidneysegError(
            "train.accelerator=gpu but no CUDA GPU is available; use --accelerator cpu"
        )
    accelerator = "gpu" if kind == "cuda" else kind  # Lightning's word for CUDA
    devices, count = _parse_devices(t.devices, accelerator)
    world_size = count * t.num_nodes
    precision = lightning_precision(t.precision, accelerator)
    if t.batch_size % world_size:
        raise KidneysegError(
            f"train.batch_size={t.batch_size} (global) must divide evenly over "
            f"{world_size} processes"
        )
    strategy = "ddp" if world_size > 1 else "auto"
    return Hardware(accelerator, devices, t.num_nodes, world_size, strategy, precision)
