"""One vocabulary for devices and precisions, training and inference alike."""

from __future__ import annotations

import pytest
import torch

from kidneyseg.config import resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.hardware import (
    autocast,
    canonical_precision,
    lightning_precision,
    resolve_device,
    resolve_hardware,
    resolve_precision,
)
from kidneyseg.utils import cpu_has_native_bf16


def test_same_words_for_training_and_inference() -> None:
    assert resolve_device("gpu" if torch.cuda.is_available() else "cpu").type in ("cuda", "cpu")
    for word, lightning in (("fp32", "32-true"), ("bf16", "bf16-mixed")):
        assert canonical_precision(lightning) == word
        assert lightning_precision(word, "gpu") == lightning
    cfg = resolve_config("paper", overrides=["train.accelerator=cpu", "train.precision=fp32"])
    assert resolve_hardware(cfg).precision == "32-true"
    cfg = resolve_config("paper", overrides=["train.accelerator=cpu", "train.precision=32-true"])
    assert resolve_hardware(cfg).precision == "32-true"


def test_auto_precision_follows_the_device() -> None:
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert lightning_precision("auto", "cpu") == {"bf16": "bf16-mixed", "fp32": "32-true"}[expected]
    assert resolve_precision("fp16", "cpu") == "fp32"  # no fp16 autocast on CPU
    assert resolve_precision("bf16", "mps") == "fp32"
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bad_words_are_refused() -> None:
    with pytest.raises(KidneysegError, match="unknown precision"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(KidneysegError, match="train.precision"):
        lightning_precision("fp8", "cpu")
    with pytest.raises(KidneysegError, match="unknown device"):
        resolve_device("tpu:x")
    bad = resolve_config("paper", overrides=["train.accelerator=tpu"])
    with pytest.raises(KidneysegError, match="train.accelerator"):
        resolve_hardware(bad)
