"""The one phase runner: phase-1 regions for phase-2 training equal those made at predict time;
flip test-time augmentation (`inference.tta`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.config import Config, InferenceConfig, resolve_config
from kidneyseg.dataset import phase_norm_record
from kidneyseg.errors import KidneysegError
from kidneyseg.formats import run_dir as rd
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, write_volume
from kidneyseg.models import CheckpointMeta, build_model, read_checkpoint_meta, save_checkpoint
from kidneyseg.normalization import NormalizationRecord, normalize
from kidneyseg.phase_runner import PhaseRunner, logit_threshold, quantize_probability
from kidneyseg.preprocessing import preprocess
from kidneyseg.regions import predict_kidney_regions, regions_ready
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


# ----------------------------------------------------------------------------- flip TTA


class _Pattern(torch.nn.Module):
    """Logits that ignore the input: a fixed, left-right asymmetric ``(h, w)`` pattern."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pattern", pattern)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 + self.pattern


def _tiny_meta(tmp_path: Path) -> CheckpointMeta:
    """The metadata of a tiny phase-1 checkpoint (32-px model size, fp32)."""
    cfg = resolve_config("paper", overrides=TINY)
    path = tmp_path / "kidney.safetensors"
    norm = NormalizationRecord("kidney", (0.0, 200.0), 100.0, 50.0)
    save_checkpoint(path, build_model(cfg.model), cfg, "kidney", norm)
    return read_checkpoint_meta(path)


def test_tta_is_the_mean_probability_of_slice_and_mirror(tmp_path: Path) -> None:
    ys, xs = np.mgrid[0:32, 0:32]
    logits = 3.0 * np.sin(0.4 * xs) + 0.1 * ys - 1.0  # differs from its mirror along x
    meta = _tiny_meta(tmp_path)
    model = _Pattern(torch.tensor(logits, dtype=torch.float32))
    ct = np.zeros((3, 32, 32), np.int16)  # 32 px: the model size, no resizing
    plain_prob, tta_prob = (np.empty(ct.shape, np.uint8) for _ in range(2))
    plain = PhaseRunner(model, meta, "cpu", "fp32", 2, 0.5).segment(
        ct, np.arange(3), probabilities=plain_prob
    )
    tta = PhaseRunner(model, meta, "cpu", "fp32", 2, 0.5, tta=True).segment(
        ct, np.arange(3), probabilities=tta_prob
    )
    sigmoid = 1.0 / (1.0 + np.exp(-logits))
    mean = (sigmoid + sigmoid[:, ::-1]) / 2  # the mirror's answer, mirrored back
    np.testing.assert_array_equal(plain, np.broadcast_to(sigmoid > 0.5, ct.shape))
    np.testing.assert_array_equal(tta, np.broadcast_to(mean > 0.5, ct.shape))
    expected = np.broadcast_to(np.round(mean * 255), ct.shape)
    np.testing.assert_allclose(tta_prob, expected, atol=1)  # +-1: rounding at .5
    assert (tta != plain).any()  # the pattern is asymmetric: TTA changes the answer
    # The mean of probabilities, not of logits (sigmoid of the mean logit is another map).
    mean_logit = 1.0 / (1.0 + np.exp(-(logits + logits[:, ::-1]) / 2))
    assert np.abs(tta_prob[0] - np.round(mean_logit * 255)).max() > 10


def _mirror_symmetric(model: torch.nn.Module) -> torch.nn.Module:
    """Every (transposed) convolution kernel made left-right symmetric: the network then
    commutes with a left-right flip of its input (even sizes, symmetric padding)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
    return model


def test_tta_keeps_the_mask_of_a_flip_equivariant_model(tmp_path: Path) -> None:
    meta = _tiny_meta(tmp_path)
    torch.manual_seed(1)
    model = _mirror_symmetric(_half_on_model(meta.config))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(model(x.flip(-1)), model(x).flip(-1), atol=1e-5, rtol=1e-4)
    ct = np.random.default_rng(0).normal(100, 80, (4, 40, 24)).astype(np.int16)  # resized
    probs = [np.empty(ct.shape, np.uint8) for _ in range(2)]
    masks = [
        PhaseRunner(model, meta, "cpu", "fp32", 3, 0.5, tta=tta).segment(
            ct, np.arange(4), probabilities=prob
        )
        for tta, prob in ((False, probs[0]), (True, probs[1]))
    ]
    assert 0 < masks[0].sum() < masks[0].size
    # Equal masks; only a logit within float rounding of the threshold could flip.
    near = np.abs(probs[0].astype(int) - 127.5) < 1
    np.testing.assert_array_equal(masks[0][~near], masks[1][~near])
    assert np.abs(probs[0].astype(int) - probs[1]).max() <= 1


def test_tta_regions_for_training_equal_predict_time_regions(
    prepared: tuple[Path, Path, Path],
) -> None:
    data, prep_dir, run = prepared
    prep = open_prep_dir(prep_dir)
    cases = list(prep.split.train)
    checkpoint, out = rd.best_checkpoint(run, "kidney"), run / "tumor" / rd.REGIONS_DIR
    settings = InferenceConfig(batch_size=3, precision="fp32", tta=True)
    predict_kidney_regions(prep, cases, checkpoint, out, settings=settings)
    assert regions_ready(out, cases, checkpoint, settings)
    # Regions made without TTA are another cache: they would be made again.
    assert not regions_ready(out, cases, checkpoint, InferenceConfig(precision="fp32"))
    tta = Predictor(run, device="cpu", progress=False, overrides=["inference.tta=true"])
    plain = Predictor(run, device="cpu", progress=False)
    assert all(r.tta for r in tta.phases.values()) and not plain.phases["kidney"].tta
    changed = 0
    for case_id in cases:
        volume = read_image(data / case_id / "imaging.nii.gz")
        ct, spacing = volume.to_canonical(), volume.canonical_spacing
        kidney = tta.segment_canonical(ct, spacing)[0]
        np.testing.assert_array_equal(np.load(out / f"{case_id}.npy").astype(bool), kidney)
        changed += int((kidney != plain.segment_canonical(ct, spacing)[0]).sum())
    assert changed > 0  # a random network is not mirror symmetric: TTA did run


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
