"""Intensity statistics, per-phase normalisation and the phase-2 region margin."""

from __future__ import annotations

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


def test_expand_region_grows_by_millimetres_not_pixels() -> None:
    mask = np.zeros((2, 21, 21), bool)
    mask[1, 10, 10] = True
    np.testing.assert_array_equal(expand_region(mask, (1.0, 1.0), 0.0), mask)
    grown = expand_region(mask, (1.0, 2.0), 4.0)  # 4 mm: 4 rows but only 2 columns
    ys, xs = np.nonzero(grown[1])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 14, 8, 12)
    assert not grown[0].any()  # in-plane only: the empty slice stays empty
    assert grown[mask].all()
