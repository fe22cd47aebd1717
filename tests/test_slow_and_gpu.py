"""Checks too slow for the default suite, or needing a CUDA GPU (deselected by default).

Run with ``.venv/bin/pytest -m slow`` (about 9 minutes on 2 cores without native bf16, half
that with it) or ``-m gpu`` on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.cli import main
from kidneyseg.config import resolve_config
from test_end_to_end import TINY


@pytest.mark.slow
def test_demo_fast_preset_reaches_the_kidney_target(tmp_path: Path) -> None:
    """The `make demo` run: kidney per-case Dice >= 0.85 on the phantom test split.

    The tumor does not reach the issue's 0.60. Its floor was 0.35 for the 8-epoch demo
    (0.34-0.41 measured); the 4-epoch demo measured 0.33 before phase 1 drew mass slices
    (``data.rare_fraction``), 0.41 with it, 0.51 with phase 2 on 64-px patches and 0.53 with
    both phases on them (``data.tumor_patch``, ``data.kidney_patch``; README, "What make demo
    prints"), hence 0.42: below that, something has stopped working. (CPUs with native bf16
    train in bf16 and may land elsewhere.)
    """
    from kidneyseg.demo import run_demo

    result = run_demo(tmp_path / "demo", cfg=resolve_config("fast"), progress=False)
    metrics = result.summary["metrics"]
    assert metrics["paper_case_dice_kidney"]["mean"] >= 0.85
    assert metrics["paper_case_dice_tumor"]["mean"] >= 0.42


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_training_and_prediction_on_gpu(tmp_path: Path) -> None:
    """bf16 + channels_last training on the GPU, then GPU and CPU predictions agree."""
    from kidneyseg.inference import Predictor
    from kidneyseg.io import read_volume

    data, prep, run = tmp_path / "data", tmp_path / "prep", tmp_path / "run"
    assert main(["phantoms", str(data), "--cases", "5", "--shape", "12", "64", "64"]) == 0
    assert main(["preprocess", str(data), str(prep), "--workers", "1"]) == 0
    gpu = [s for s in TINY if not s.startswith("train.precision")] + ["train.precision=auto"]
    for phase in ("kidney", "tumor"):
        args = ["train", str(prep), str(run), "--phase", phase, "--quiet", "--accelerator", "gpu"]
        for item in gpu:
            args += ["--set", item]
        assert main(args) == 0
    ct = read_volume(data / "case_00000" / "imaging.nii.gz")
    on_gpu = Predictor(run, device="cuda", progress=False).predict_volume(ct)
    on_cpu = Predictor(run, device="cpu", progress=False).predict_volume(ct)
    assert on_gpu.same_geometry(ct)
    # bf16 on the GPU vs fp32/bf16 on the CPU: labels may differ at a few boundary voxels.
    assert np.mean(on_gpu.array != on_cpu.array) < 0.01
