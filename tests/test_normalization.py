"""Intensity statistics, per-phase normalisation and the phase-2 region margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kidneyseg.normalization import (
    HIST_BINS,
    HIST_MIN,
    expand_region,
    hu_histogram,
    normalize,
    phase_normalization,
    stats_from_histogram,
)


def test_histogram_statistics_match_numpy_for_any_window() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1100, 1500, size=(6, 20, 20)).astype(np.int16)
    counts = hu_histogram(hu)
    assert counts.shape == (HIST_BINS,) and counts.sum() == hu.size
    for window in [(0.0, 200.0), (20.0, 45.0), None]:
        ref = np.clip(hu, HIST_MIN, HIST_MIN + HIST_BINS - 1).astype(np.float64)
        if window is not None:
            ref = np.clip(ref, *window)
        mean, std = stats_from_histogram(counts, window)
        assert mean == pytest.approx(ref.mean(), abs=1e-9)
        assert std == pytest.approx(ref.std(), abs=1e-9)


def test_phase_records_and_normalize() -> None:
    hu = np.array([[-1000, 0, 100, 300]], np.int16)
    region = np.array([[False, True, True, False]])
    hist = {"all": hu_histogram(hu), "kidney_region": hu_histogram(hu, region)}
    kidney = phase_normalization(hist, "kidney", (0, 200))
    # Clipped to [0, 200]: values 0, 0, 100, 200 -> mean 75.
    assert kidney.mean == pytest.approx(75.0)
    out = normalize(hu, kidney)
    assert out.dtype == np.float32
    assert out[0, 0] == out[0, 1]  # -1000 and 0 HU both clip to the window's floor
    tumor = phase_normalization(hist, "tumor", None)
    assert tumor.mean == pytest.approx(50.0)  # inside the region only: 0 and 100
    masked = normalize(hu, tumor, region)
    # Outside the region the CT becomes 0 HU before z-scoring.
    assert masked[0, 0] == masked[0, 3] == pytest.approx((0 - 50.0) / tumor.std)
    with pytest.raises(ValueError, match="kidney-region mask"):
        normalize(hu, tumor)


def test_window_scaling_maps_the_window_onto_0_1() -> None:
    hu = np.array([[-1000, 0, 100, 200, 300]], np.int16)
    region = np.array([[False, True, True, True, False]])
    hist = {"all": hu_histogram(hu), "kidney_region": hu_histogram(hu, region)}
    kidney = phase_normalization(hist, "kidney", (0, 200), "window")
    np.testing.assert_allclose(normalize(hu, kidney), [[0.0, 0.0, 0.5, 1.0, 1.0]])
    tumor = phase_normalization(hist, "tumor", (-100, 300), "window")
    # Outside the region: 0 HU, a quarter of the way up the window.
    np.testing.assert_allclose(normalize(hu, tumor, region), [[0.25, 0.25, 0.5, 0.75, 0.25]])
    with pytest.raises(ValueError, match="needs a window"):
        phase_normalization(hist, "tumor", None, "window")
    with pytest.raises(ValueError, match="unknown scaling"):
        phase_normalization(hist, "kidney", (0, 200), "minmax")


def test_data_normalization_key_reaches_the_training_slices(tmp_path: Path, phantom_volume) -> None:
    from kidneyseg.config import Config, DataConfig
    from kidneyseg.dataset import SliceDataset, phase_norm_record
    from kidneyseg.formats.prep_dir import open_prep_dir
    from kidneyseg.io import write_volume
    from kidneyseg.preprocessing import preprocess

    write_volume(phantom_volume.image, tmp_path / "data" / "case_00000" / "imaging.nii.gz")
    write_volume(phantom_volume.labels, tmp_path / "data" / "case_00000" / "segmentation.nii.gz")
    prep = open_prep_dir(
        preprocess(
            tmp_path / "data", tmp_path / "prep", Config(), workers=1, progress=False
        ).prep_dir
    )
    cfg = DataConfig(image_size=32, normalization="window", tumor_window=(-100.0, 300.0))
    kidney = phase_norm_record(prep, "kidney", cfg)
    assert (kidney.window, kidney.mean, kidney.std) == ((0.0, 200.0), 0.0, 200.0)
    assert phase_norm_record(prep, "tumor", cfg).std == 400.0
    assert phase_norm_record(prep, "kidney", DataConfig()).mean > 0  # z-score: the stored one
    image, _ = SliceDataset(prep, prep.split.train, "kidney", cfg)[0]
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_expand_region_grows_by_millimetres_not_pixels() -> None:
    mask = np.zeros((2, 21, 21), bool)
    mask[1, 10, 10] = True
    np.testing.assert_array_equal(expand_region(mask, (1.0, 1.0), 0.0), mask)
    grown = expand_region(mask, (1.0, 2.0), 4.0)  # 4 mm: 4 rows but only 2 columns
    ys, xs = np.nonzero(grown[1])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 14, 8, 12)
    assert not grown[0].any()  # in-plane only: the empty slice stays empty
    assert grown[mask].all()
