"""The features together: a ``kits`` phase 2 (tumor and cyst outputs) reading 2.5D context
(``data.context_slices = 3``) with flip TTA (``inference.tta``), end to end through `Predictor`.

Hand-set networks (as in `test_cysts`) make every output's logit an affine function of a fixed
mix of the three channels, ``s = 0.25 x(z - 1) + 0.5 x(z) + 0.25 x(z + 1)`` (the neighbours are
whole slices: ``data.context_mm`` = the z spacing; clamped at the volume's ends), so the labels
follow from the HU of each voxel and of the voxels above and below it:

* phase 1: x = (clip(HU, 0, 200) - 100) / 50, kidney where s > 0;
* phase 2: x = (HU x region(z') - 250) / 100, each neighbour masked by its own region; tumor
  logit ``s``, cyst logit ``0.5 s + 0.1``; a mass where the larger is > 0, a tumor where the
  tumor logit is the larger, a cyst otherwise.

The networks work pixel by pixel, so they commute with a left-right flip: TTA must give the
same labels, while running every slice twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.config import resolve_config
from kidneyseg.formats.pred_dir import probability_path
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.models import phase_config, read_checkpoint_meta, save_checkpoint
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.types import CYST, KIDNEY, TUMOR
from test_cysts import CYST_HEAD, KITS, TUMOR_HEAD, expected_kits_labels, kits_phantom
from test_inference import KIDNEY_NORM, TINY, TUMOR_NORM, mixing_unet, volume_from_canonical

SPACING_Z = 2.5  # volume_from_canonical's z spacing
CONTEXT = ["data.context_slices=3", f"data.context_mm={SPACING_Z}"]
WEIGHTS = (0.25, 0.5, 0.25)
MARGIN = 1e-3  # logits this close to a decision would make an exact comparison fragile


def _mix(x: np.ndarray) -> np.ndarray:
    """sum_j WEIGHTS_j x(z + j - 1), the neighbours clamped at the ends (float64)."""
    depth = len(x)
    return sum(
        w * x[np.clip(np.arange(depth) + j - 1, 0, depth - 1)] for j, w in enumerate(WEIGHTS)
    )


def expected(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, tumor and cyst logits of the hand-set cascade (module doc), and where a logit
    lies within MARGIN of a decision."""
    s1 = _mix((np.clip(hu, 0, 200).astype(np.float64) - 100) / 50)
    region = s1 > 0
    s2 = _mix((hu * region - 250.0) / 100)
    (at, bt), (ac, bc) = TUMOR_HEAD, CYST_HEAD
    tumor_logit, cyst_logit = at * s2 + bt, ac * s2 + bc
    ran = region & region.any(axis=(1, 2), keepdims=True)  # phase 2: slices with kidney
    mass = ran & (np.maximum(tumor_logit, cyst_logit) > 0)
    labels = np.where(region, KIDNEY, 0)
    labels[mass & (tumor_logit >= cyst_logit)] = TUMOR
    labels[mass & (tumor_logit < cyst_logit)] = CYST
    near = np.abs(s1) < MARGIN
    near |= ran & (np.abs(np.maximum(tumor_logit, cyst_logit)) < MARGIN)
    near |= mass & (np.abs(tumor_logit - cyst_logit) < MARGIN)
    return labels.astype(np.uint8), np.where(ran, cyst_logit, -np.inf), near


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kits_context")
    cfg = resolve_config(overrides=[*TINY, *KITS, *CONTEXT])
    kidney = mixing_unet(WEIGHTS, [(1.0, 0.0)], [*TINY, *CONTEXT])
    tumor = mixing_unet(WEIGHTS, [TUMOR_HEAD, CYST_HEAD], [*TINY, *CONTEXT])
    save_checkpoint(root / "kidney" / "best.safetensors", kidney, cfg, "kidney", KIDNEY_NORM)
    tumor_cfg = phase_config(cfg, "tumor")
    save_checkpoint(root / "tumor" / "best.safetensors", tumor, tumor_cfg, "tumor", TUMOR_NORM)
    return root


def _predict_recording_phase_2(
    run_dir: Path, source: Path, out: Path, tta: bool
) -> list[tuple[int, int, int]]:
    """`Predictor.predict_file` with probabilities; (slices, input channels, outputs) of each
    phase-2 forward pass."""
    overrides = ["inference.tta=true"] if tta else None
    predictor = Predictor(
        run_dir, device="cpu", progress=False, overrides=overrides, save_probabilities=True
    )
    assert predictor.predicts_cysts and all(r.tta == tta for r in predictor.phases.values())
    calls: list[tuple[int, int, int]] = []

    def record(_module: torch.nn.Module, args: tuple[torch.Tensor], out: torch.Tensor) -> None:
        calls.append((args[0].shape[0], args[0].shape[1], out.shape[1]))

    hook = predictor.phases["tumor"].model.register_forward_hook(record)
    try:
        predictor.predict_file(source, out)
    finally:
        hook.remove()
    return calls


def test_two_outputs_with_context_and_tta_end_to_end(run_dir: Path, tmp_path: Path) -> None:
    meta = read_checkpoint_meta(run_dir / "tumor" / "best.safetensors")
    assert meta.outputs == ("tumor", "cyst")
    assert (meta.config.model.in_channels, meta.config.model.classes) == (3, 2)
    hu = kits_phantom()
    want, cyst_logit, near = expected(hu)
    assert not near.any(), "the phantom puts a voxel on a decision boundary"
    assert set(np.unique(want).tolist()) == {0, KIDNEY, TUMOR, CYST}
    assert (want != expected_kits_labels(hu)).any()  # the neighbours change the answer
    volume = volume_from_canonical(hu)
    assert volume.canonical_spacing[0] == SPACING_Z
    source = tmp_path / "ct.nii.gz"
    write_volume(volume, source)

    results = {}
    for tta in (False, True):
        out = tmp_path / f"labels_tta{int(tta)}.nii.gz"
        calls = _predict_recording_phase_2(run_dir, source, out, tta)
        # Phase 2 saw 3 channels, answered 2 outputs, and ran each slice with kidney
        # once, or twice with TTA (the slice and its mirror).
        assert {(c, o) for _, c, o in calls} == {(3, 2)}
        run_slices = int(want.astype(bool).any(axis=(1, 2)).sum())
        assert sum(n for n, _, _ in calls) == run_slices * (2 if tta else 1)
        labels = read_labels(out, like=volume).to_canonical()
        np.testing.assert_array_equal(labels, want)
        cyst_prob = read_image(probability_path(out, "cyst")).to_canonical()
        p = np.round(255 / (1 + np.exp(-cyst_logit)))
        np.testing.assert_allclose(cyst_prob, p, atol=1)  # sigmoid rounding only
        assert all(probability_path(out, name).is_file() for name in ("kidney", "tumor"))
        results[tta] = labels
    np.testing.assert_array_equal(results[True], results[False])


class _Patterns(torch.nn.Module):
    """Logits that ignore the (k-channel) input: one fixed, left-right asymmetric ``(h, w)``
    pattern per output."""

    def __init__(self, patterns: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("patterns", patterns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0 + self.patterns


def test_tta_averages_each_outputs_probability(run_dir: Path) -> None:
    meta = read_checkpoint_meta(run_dir / "tumor" / "best.safetensors")  # 3 in, 2 out
    ys, xs = np.mgrid[0:32, 0:32]
    logits = np.stack([3.0 * np.sin(0.4 * xs) + 0.1 * ys - 1.0, 2.0 * np.cos(0.3 * xs) - 0.05 * ys])
    model = _Patterns(torch.tensor(logits, dtype=torch.float32))
    ct = np.zeros((3, 32, 32), np.int16)  # the model size: no resizing
    region = np.ones(ct.shape, bool)
    answers = {}
    for tta in (False, True):
        runner = PhaseRunner(model, meta, "cpu", "fp32", 2, 0.5, tta=tta)
        probs = np.empty((2, *ct.shape), np.uint8)
        best = np.empty(ct.shape, np.uint8)
        mask = runner.segment(
            ct, np.arange(3), region, probabilities=probs, best_output=best, spacing_z=SPACING_Z
        )
        answers[tta] = mask, best
        p = 1.0 / (1.0 + np.exp(-logits))
        if tta:  # the mean of each output's probability and its mirror's, mirrored back
            p = (p + p[..., ::-1]) / 2
        np.testing.assert_allclose(
            probs, np.broadcast_to(np.round(p * 255)[:, None], probs.shape), atol=1
        )
        clear = (np.abs(p.max(0) - 0.5) > 1e-4) & (np.abs(p[0] - p[1]) > 1e-4)
        np.testing.assert_array_equal(
            mask[:, clear], np.broadcast_to((p.max(0) > 0.5)[clear], mask[:, clear].shape)
        )
        np.testing.assert_array_equal(
            best[:, clear], np.broadcast_to((p[1] > p[0])[clear], best[:, clear].shape)
        )
    assert (answers[True][0] != answers[False][0]).any()  # asymmetric: TTA changes masks
    assert (answers[True][1] != answers[False][1]).any()  # ... and classes
