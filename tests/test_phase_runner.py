"""The one phase runner: phase-1 regions for phase-2 training equal those made at predict time."""

from __future__ import annotations

import dataclasses
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
from kidneyseg.normalization import NormalizationRecord, normalize
from kidneyseg.phase_runner import PhaseRunner, logit_threshold, quantize_probability
from kidneyseg.preprocessing import preprocess
from kidneyseg.regions import predict_kidney_regions
from kidneyseg.resize import from_model_size, to_model_size
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
        logits = model(torch.randn(4, cfg.model.in_channels, 32, 32))
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


def _context_checkpoint(path: Path, phase: str, k: int) -> Path:
    """A random ``k``-channel model of ``phase`` (about half of the pixels on)."""
    cfg = resolve_config("paper", overrides=[*TINY, f"data.context_slices={k}"])
    torch.manual_seed(k)
    window = (0.0, 200.0) if phase == "kidney" else None
    norm = NormalizationRecord(phase, window, 80, 60)
    save_checkpoint(path, _half_on_model(cfg), cfg, phase, norm)
    return path


def _by_hand(
    runner: PhaseRunner,
    ct: np.ndarray,
    zs: np.ndarray,
    steps: tuple[int, ...],
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks and probabilities with the neighbours picked by hand (whole-slice steps, clamped):
    ``normalize``, resize, network, resize back, as `PhaseRunner.segment` did for one slice."""
    rows = np.clip(zs[:, None] + np.array(steps)[None], 0, len(ct) - 1)
    hu = ct[rows]  # (n, k, y, x)
    mask = None if region is None else region[rows]
    batch = to_model_size(torch.from_numpy(normalize(hu, runner.normalization, mask)), 32)
    with torch.inference_mode():
        logits = runner.model(batch.contiguous(memory_format=torch.channels_last)).float()
    logits = from_model_size(logits, ct.shape[1:])[:, 0]
    return (logits > 0).numpy(), quantize_probability(logits)


def test_one_context_slice_segments_as_the_single_slice_runner(
    prepared: tuple[Path, Path, Path],
) -> None:
    """k = 1 (the default) gives bit-identical masks and probabilities to the single-slice code
    (each slice alone, normalised, resized, unsqueezed to one channel)."""
    _, _, run = prepared
    rng = np.random.default_rng(4)
    ct = rng.normal(60, 80, (7, 20, 24)).astype(np.int16)
    region = rng.random(ct.shape) > 0.4
    zs = np.array([0, 2, 3, 6])
    for phase in ("kidney", "tumor"):
        runner = PhaseRunner.load(rd.best_checkpoint(run, phase), phase, "cpu", "fp32", 8)
        assert runner.config.data.context_slices == 1
        mask = region if phase == "tumor" else None
        probabilities = np.empty((len(zs), *ct.shape[1:]), np.uint8)
        masks = runner.segment(ct, zs, mask, probabilities=probabilities)
        x = normalize(ct[zs], runner.normalization, None if mask is None else mask[zs])
        batch = to_model_size(torch.from_numpy(x).unsqueeze(1), 32)
        with torch.inference_mode():
            logits = runner.model(batch.contiguous(memory_format=torch.channels_last)).float()
        logits = from_model_size(logits, ct.shape[1:])[:, 0]
        np.testing.assert_array_equal(masks, (logits > 0).numpy())
        np.testing.assert_array_equal(probabilities, quantize_probability(logits))


def test_three_slice_checkpoints_load_and_segment_with_their_neighbours(tmp_path: Path) -> None:
    paths = {phase: tmp_path / f"{phase}.safetensors" for phase in ("kidney", "tumor")}
    kidney = PhaseRunner.load(_context_checkpoint(paths["kidney"], "kidney", 3), "kidney")
    tumor = PhaseRunner.load(_context_checkpoint(paths["tumor"], "tumor", 3), "tumor")
    for runner in (kidney, tumor):
        runner.configure(runner.device, "fp32", 16, 0.5)
        assert runner.config.model.in_channels == runner.config.data.context_slices == 3
    rng = np.random.default_rng(2)
    ct = rng.normal(60, 80, (9, 20, 24)).astype(np.int16)
    region = np.zeros(ct.shape, bool)
    region[2:7, 4:15, 5:20] = True
    region[3, 4:8] = False  # neighbouring regions differ: each channel has its own
    zs = np.arange(9)
    # 3 mm on a 1.5 mm grid: the neighbours are the slices two below and two above.
    for runner, mask in ((kidney, None), (tumor, region)):
        probabilities = np.empty(ct.shape, np.uint8)
        masks = runner.segment(ct, zs, mask, probabilities=probabilities, spacing_z=1.5)
        expected, expected_p = _by_hand(runner, ct, zs, (-2, 0, 2), mask)
        assert 0 < masks.sum() < masks.size
        np.testing.assert_array_equal(masks, expected)
        np.testing.assert_array_equal(probabilities, expected_p)
        # Another spacing shows the network other neighbours: 3 mm on 3 mm is one slice.
        other = runner.segment(ct, zs, mask, spacing_z=3.0)
        np.testing.assert_array_equal(other, _by_hand(runner, ct, zs, (-1, 0, 1), mask)[0])
    with pytest.raises(KidneysegError, match="spacing_z"):
        kidney.segment(ct, zs)


def test_inconsistent_channel_checkpoint_is_refused(tmp_path: Path) -> None:
    good = resolve_config("paper", overrides=[*TINY, "data.context_slices=3"])
    # A header edited to claim one slice while the network takes three.
    bad = dataclasses.replace(good, data=dataclasses.replace(good.data, context_slices=1))
    path = tmp_path / "bad.safetensors"
    norm = NormalizationRecord("kidney", (0.0, 200.0), 80, 60)
    save_checkpoint(path, build_model(good.model), bad, "kidney", norm)
    with pytest.raises(KidneysegError, match=r"model.in_channels \(3\) must equal"):
        PhaseRunner.load(path, "kidney")
