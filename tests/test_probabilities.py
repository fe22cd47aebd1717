"""``predict --save-probabilities``: each phase's sigmoid, uint8 x 255, in the input geometry.

The hand-set networks of `test_inference` make logit = (normalised HU) at every pixel, so the
expected probability of each voxel follows from its HU alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.cli import main
from kidneyseg.formats.pred_dir import PROBABILITY_SCALE, probability_path
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.phase_runner import quantize_probability
from kidneyseg.types import from_canonical
from test_inference import (
    KIDNEY_NORM,
    TUMOR_NORM,
    make_model_dir,
    phantom_canonical,
    volume_from_canonical,
)
from test_localization import tall_phantom


def _expected(hu: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kidney and tumor probabilities (uint8) of the hand-set cascade on canonical HU."""
    lo, hi = KIDNEY_NORM.window or (0.0, 0.0)
    x_k = (np.clip(hu.astype(np.float32), lo, hi) - KIDNEY_NORM.mean) / KIDNEY_NORM.std
    x_t = (hu.astype(np.float32) * region - TUMOR_NORM.mean) / TUMOR_NORM.std
    kidney = quantize_probability(torch.from_numpy(x_k))
    tumor = quantize_probability(torch.from_numpy(x_t))
    tumor[~region] = 0  # phase 2 ran only in the region, on slices that have one
    return kidney, tumor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir, device="cpu", progress=False)


def test_quantize_probability() -> None:
    got = quantize_probability(torch.tensor([-60.0, -1.0, 0.0, 2.0, 60.0]))
    assert got.dtype == np.uint8
    expected = np.round(255 / (1 + np.exp(-np.array([-60.0, -1.0, 0.0, 2.0, 60.0])))).astype(int)
    np.testing.assert_array_equal(got, expected)


def test_canonical_probabilities_match_the_network_and_the_masks(predictor: Predictor) -> None:
    hu = phantom_canonical((7, 32, 32))
    spacing = (2.5, 0.8, 0.7)
    plain = predictor.segment_canonical(hu, spacing)
    k_prob, t_prob = np.full(hu.shape, 7, np.uint8), np.full(hu.shape, 7, np.uint8)
    kidney, tumor, region = predictor.segment_canonical(hu, spacing, None, k_prob, t_prob)
    # Asking for probabilities changes no mask.
    for a, b in zip(plain, (kidney, tumor, region), strict=True):
        np.testing.assert_array_equal(a, b)
    want_k, want_t = _expected(hu, region)
    np.testing.assert_array_equal(k_prob, want_k)
    np.testing.assert_array_equal(t_prob, want_t)
    # The masks are the thresholded probabilities (threshold 0.5 = 127.5 of 255).
    assert (k_prob[kidney] >= 128).all() and (k_prob[~kidney] <= 128).all()
    assert (t_prob[tumor] >= 128).all() and (t_prob[~tumor] <= 128).all()
    empty = ~region.any(axis=(1, 2))
    assert empty.any() and (t_prob[empty] == 0).all()
    assert 0 < int(t_prob.max()) and int(k_prob.max()) > 200


def test_volume_probabilities_in_input_geometry(predictor: Predictor) -> None:
    canonical = phantom_canonical()
    volume = volume_from_canonical(canonical)
    labels, kidney, tumor = predictor.predict_probabilities(volume)
    np.testing.assert_array_equal(labels.array, predictor.predict_volume(volume).array)
    _, _, region = predictor.segment_canonical(canonical, volume.canonical_spacing)
    want_k, want_t = _expected(canonical, region)
    direction = np.asarray(volume.direction)
    for got, want in ((kidney, want_k), (tumor, want_t)):
        assert got.array.dtype == np.uint8 and got.same_geometry(volume, atol=0)
        np.testing.assert_array_equal(got.array, from_canonical(want, direction))


def test_cli_writes_probability_files(model_dir: Path, tmp_path: Path) -> None:
    volume = volume_from_canonical(phantom_canonical())
    ct = write_volume(volume, tmp_path / "ct.nii.gz")
    out = tmp_path / "out" / "ct.nii.gz"
    argv = ["predict", str(ct), str(out), "--model", str(model_dir), "--no-progress"]
    assert main([*argv, "--save-probabilities"]) == 0
    labels = read_labels(out, like=read_image(ct))
    files = {p: probability_path(out, p) for p in ("kidney", "tumor")}
    assert files["kidney"].name == "ct_kidney_prob.nii.gz"
    predictor = Predictor(model_dir, device="cpu", progress=False)
    _, want_k, want_t = predictor.predict_probabilities(read_image(ct))
    for phase, want in (("kidney", want_k), ("tumor", want_t)):
        got = read_image(files[phase])
        assert got.same_geometry(labels, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(got.array), want.array)
    k = np.asarray(read_image(files["kidney"]).array).astype(np.float32) / PROBABILITY_SCALE
    assert ((k > 0.5) == (np.asarray(labels.array) > 0)).mean() > 0.99
    # Without the option, no probability files.
    other = tmp_path / "plain" / "ct.nii.gz"
    assert main([*argv[:2], str(other), *argv[3:]]) == 0
    assert other.exists() and not probability_path(other, "kidney").exists()


def test_folder_mode_redoes_cases_missing_probabilities(model_dir: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    write_volume(volume_from_canonical(phantom_canonical()), cases / "a.nii.gz")
    out = tmp_path / "pred"
    predictor = Predictor(model_dir, device="cpu", progress=False)
    assert len(predictor.predict_paths(cases, out).written) == 1
    assert not probability_path(out / "a.nii.gz", "tumor").exists()
    predictor.save_probabilities = True
    assert len(predictor.predict_paths(cases, out).written) == 1  # probabilities were missing
    assert probability_path(out / "a.nii.gz", "tumor").exists()
    assert len(predictor.predict_paths(cases, out).skipped) == 1


# "box": in-plane crops too; "axial": whole slices over the kidneys' 30 slices + 2 x 12 margin
# slices of the 80 (and the coarse pass's slices).
@pytest.mark.parametrize("crop, share", [("box", 0.5), ("axial", 0.75)])
def test_fast_mode_probabilities_agree_with_naive_where_it_ran(
    tmp_path: Path, crop: str, share: float
) -> None:
    run = make_model_dir(tmp_path / "run", ["data.image_size=160"])
    hu = tall_phantom(depth=80)
    spacing = (2.5, 1.5, 1.5)
    probs = {}
    for mode in ("naive", "fast"):
        settings = [f"inference.mode={mode}", f"inference.fast_crop={crop}"]
        predictor = Predictor(run, device="cpu", progress=False, overrides=settings)
        k, t = np.zeros(hu.shape, np.uint8), np.zeros(hu.shape, np.uint8)
        masks = predictor.segment_canonical(hu, spacing, None, k, t)
        probs[mode] = (k, t, masks)
    (k_n, t_n, m_n), (k_f, t_f, m_f) = probs["naive"], probs["fast"]
    np.testing.assert_array_equal(m_n[0], m_f[0])
    ran = k_f > 0
    assert ran.sum() < share * ran.size  # fast mode left much of the volume alone (0 there)
    np.testing.assert_array_equal(k_f[ran], k_n[ran])
    assert (k_f[m_f[0]] >= 128).all()
    np.testing.assert_array_equal(t_f, t_n)  # phase 2: the same region, boxes cover it
