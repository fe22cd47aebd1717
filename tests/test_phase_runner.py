"""The one phase runner: phase-1 regions for phase-2 training equal those made at predict time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.config import Config, resolve_config
from kidneyseg.dataset import phase_norm_record
from kidneyseg.errors import KidneysegError
from kidneyseg.formats import run_dir as rd
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, write_volume
from kidneyseg.models import build_model, save_checkpoint
from kidneyseg.phase_runner import PhaseRunner, logit_threshold
from kidneyseg.preprocessing import preprocess
from kidneyseg.regions import predict_kidney_regions
from kidneyseg.types import Volume

# A permuted, flipped file grid with uneven spacing: the canonical view is not the file's.
DIRECTION = ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (-1.0, 0.0, 0.0))
TINY = [
    "model.architecture=unet_plain",
    "model.base_channels=4",
    "model.encoder_weights=none",
    "data.image_size=32",
    "inference.precision=fp32",
    "inference.batch_size=3",
]


def _write_cases(root: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        hu = rng.normal(-200, 300, (24, 20, 9)).astype(np.int16)  # file order: x, y, z
        labels = np.zeros(hu.shape, np.uint8)
        labels[5:12, 6:14, 2:6] = 1
        labels[7:9, 8:10, 3:5] = 2
        hu[labels > 0] = 180
        case = root / f"case_{i:05d}"
        for name, array in (("imaging.nii.gz", hu), ("segmentation.nii.gz", labels)):
            write_volume(Volume(array, (0.8, 0.9, 2.5), (1.0, 2.0, 3.0), DIRECTION), case / name)


def _half_on_model(cfg: Config) -> torch.nn.Module:
    """A random network whose last bias is set so that about half of the pixels are on."""
    model = build_model(cfg.model).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        logits = model(torch.randn(4, 1, 32, 32))
        head.bias -= logits.median()
    return model


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path, Path]:
    data, prep, run = tmp_path / "data", tmp_path / "prep", tmp_path / "run"
    _write_cases(data)
    cfg = resolve_config("paper", overrides=TINY)
    preprocess(data, prep, cfg, workers=1, progress=False)
    torch.manual_seed(3)
    for phase in ("kidney", "tumor"):
        norm = phase_norm_record(open_prep_dir(prep), phase, cfg.data)
        path = rd.best_checkpoint(run, phase)
        path.parent.mkdir(parents=True)
        save_checkpoint(path, _half_on_model(cfg), cfg, phase, norm)
    return data, prep, run


def test_training_regions_equal_predict_time_regions(prepared: tuple[Path, Path, Path]) -> None:
    data, prep_dir, run = prepared
    prep = open_prep_dir(prep_dir)
    cases = [*prep.split.train, *prep.split.val]
    regions = predict_kidney_regions(
        prep,
        cases,
        rd.best_checkpoint(run, "kidney"),
        run / "tumor" / rd.REGIONS_DIR,
        batch_size=3,
        precision="fp32",
    )
    predictor = Predictor(run, device="cpu", batch_size=5, progress=False)
    for case_id in cases:
        volume = read_image(data / case_id / "imaging.nii.gz")
        kidney, _, _ = predictor.segment_canonical(volume.to_canonical(), volume.canonical_spacing)
        cached = np.load(regions / f"{case_id}.npy").astype(bool)
        # A random network: some pixels in, some out, so equality is not trivially all-empty.
        assert 0 < kidney.sum() < kidney.size
        np.testing.assert_array_equal(cached, kidney)


def test_runner_checks_phase_and_threshold(prepared: tuple[Path, Path, Path]) -> None:
    _, _, run = prepared
    with pytest.raises(KidneysegError, match="expected 'kidney'"):
        PhaseRunner.load(rd.best_checkpoint(run, "tumor"), "kidney")
    runner = PhaseRunner.load(rd.best_checkpoint(run, "kidney"), "kidney", precision="fp32")
    ct = np.full((4, 16, 12), 100, np.int16)
    low = runner.configure(runner.device, "fp32", 2, 0.01).segment(ct, np.arange(4))
    high = runner.configure(runner.device, "fp32", 2, 0.99).segment(ct, np.arange(4))
    assert low.shape == (4, 16, 12) and (low >= high).all()
    assert logit_threshold(0.5) == 0.0
    with pytest.raises(KidneysegError, match="threshold"):
        logit_threshold(1.0)
    with pytest.raises(ValueError, match="kidney-region mask"):
        PhaseRunner.load(rd.best_checkpoint(run, "tumor"), "tumor").segment(ct, np.arange(4))
