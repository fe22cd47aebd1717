"""Intensity normalisation of each phase's input, shared by training and inference.

Statistics come from the training split only (preprocessing writes a 1-HU histogram of the
training voxels, ``hu_histogram.npz``), so any window can be z-scored exactly without
re-reading the data: e.g. the paper's [0, 200] or the Table 1 ablation [20, 45].

* phase ``kidney``: HU clipped to the window (paper §4.1: [0, 200]), then z-scored.
* phase ``tumor``: CT x kidney-region mask (outside the region becomes 0 HU), unclipped by
  default (paper §4.1), z-scored with statistics of the HU *inside* the kidney region.

``data.normalization = "window"`` (not in the paper) maps the window linearly onto [0, 1]
instead of z-scoring: the record's ``mean``/``std`` are then the window's low end and width,
so `normalize`, checkpoints and inference need nothing else.

Example:
    >>> import numpy as np
    >>> counts = np.zeros(HIST_BINS, np.int64); counts[[0 - HIST_MIN, 100 - HIST_MIN]] = 1
    >>> stats_from_histogram(counts, (0, 200))
    (50.0, 50.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

#: Histogram range: 1-HU bins from HIST_MIN to HIST_MIN + HIST_BINS - 1 (values are clipped).
HIST_MIN = -1024
HIST_BINS = 4096
#: How clipped HU become network input (``data.normalization``): z-score, or window to [0, 1].
SCALINGS = ("zscore", "window")


def hu_histogram(hu: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None) -> np.ndarray:
    """Counts of each integer HU value (clipped to the histogram range), optionally in a mask."""
    values = hu[mask] if mask is not None else hu.ravel()
    if values.dtype.kind == "i" and values.dtype.itemsize >= 2:
        # Integer HU (the preprocessed int16) need no rounding: clipping in the array's own
        # type and one bincount is about 5x faster than the float path below.
        idx = np.clip(values, HIST_MIN, HIST_MIN + HIST_BINS - 1) - HIST_MIN
    else:
        idx = np.clip(np.rint(values).astype(np.int64) - HIST_MIN, 0, HIST_BINS - 1)
    return np.bincount(idx, minlength=HIST_BINS).astype(np.int64, copy=False)


def stats_from_histogram(
    counts: npt.NDArray[np.int64], window: tuple[float, float] | None
) -> tuple[float, float]:
    """Mean and standard deviation of the (window-clipped) values a histogram counts."""
    values = np.arange(HIST_BINS, dtype=np.float64) + HIST_MIN
    if window is not None:
        values = np.clip(values, window[0], window[1])
    total = float(counts.sum())
    if total == 0:
        raise ValueError("empty histogram: no voxels to compute statistics from")
    mean = float((counts * values).sum() / total)
    var = float((counts * (values - mean) ** 2).sum() / total)
    return mean, float(max(np.sqrt(var), 1e-6))


@dataclass(frozen=True)
class NormalizationRecord:
    """How one phase's input is normalised: stored in its checkpoint and in ``meta.json``.

    Attributes:
        phase: ``"kidney"`` (statistics of all voxels) or ``"tumor"`` (inside the region).
        window: HU clip window ``(lo, hi)``, or ``None`` for unclipped HU.
        mean, std: subtracted, then divided by: z-score statistics of the (clipped)
            training-split HU, or the window's ``lo`` and ``hi - lo`` (window scaling).

    Example:
        >>> r = NormalizationRecord("kidney", (0.0, 200.0), 80.0, 60.0)
        >>> NormalizationRecord.from_dict(r.to_dict()) == r
        True
    """

    phase: str
    window: tuple[float, float] | None
    mean: float
    std: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"phase", "window": [lo, hi] | null, "mean", "std"}``."""
        window = None if self.window is None else [float(v) for v in self.window]
        return {"phase": self.phase, "window": window, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalizationRecord:
        """Parse the JSON form.

        Raises:
            ValueError: a missing key, an unknown phase, a bad window (reversed or not finite),
                a std that is not a positive finite number, or a mean that is not finite.
        """
        try:
            phase, window = str(data["phase"]), data["window"]
            mean, std = float(data["mean"]), float(data["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad normalisation record {dict(data)!r}: {exc}") from exc
        if phase not in ("kidney", "tumor"):
            raise ValueError(f"bad normalisation record: unknown phase {phase!r}")
        if window is not None:
            try:
                lo, hi = float(window[0]), float(window[1])
            except (TypeError, ValueError, IndexError, KeyError) as exc:
                raise ValueError(f"bad normalisation record: window {window!r}") from exc
            if len(window) != 2 or not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"bad normalisation record: window {window!r}")
            window = (lo, hi)
        if not (np.isfinite(std) and std > 0) or not np.isfinite(mean):
            raise ValueError(f"bad normalisation record: mean {mean}, std {std}")
        return cls(phase, window, mean, std)


def phase_normalization(
    histograms: Mapping[str, npt.NDArray[np.int64]],
    phase: str,
    window: tuple[float, float] | None,
    scaling: str = "zscore",
) -> NormalizationRecord:
    """The normalisation record of one phase from the training-split histograms.

    Args:
        histograms: ``{"all": counts, "kidney_region": counts}`` from preprocessing.
        phase: ``"kidney"`` (statistics of all voxels) or ``"tumor"`` (inside the region).
        window: HU clip window or ``None``.
        scaling: ``"zscore"`` (training-split statistics) or ``"window"`` (the window onto
            [0, 1]; needs a window, ignores the histograms).

    Example:
        >>> phase_normalization({}, "kidney", (0, 200), "window")
        NormalizationRecord(phase='kidney', window=(0.0, 200.0), mean=0.0, std=200.0)
    """
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    if scaling == "window":
        if window is None:
            raise ValueError("window scaling needs a window (the phase's input is unclipped)")
        lo, hi = float(window[0]), float(window[1])
        return NormalizationRecord(phase, (lo, hi), lo, hi - lo)
    key = "all" if phase == "kidney" else "kidney_region"
    mean, std = stats_from_histogram(histograms[key], window)
    clip = None if window is None else (float(window[0]), float(window[1]))
    return NormalizationRecord(phase, clip, mean, std)


def normalize(
    hu: npt.NDArray[Any], norm: NormalizationRecord, region: npt.NDArray[Any] | None = None
) -> npt.NDArray[np.float32]:
    """Apply a phase's normalisation record to HU values (any shape).

    Args:
        hu: HU values.
        norm: the phase's record (`phase_normalization`).
        region: for the tumor phase, the kidney-region mask (same shape); required there.
    """
    x = hu.astype(np.float32, copy=True)
    if norm.phase == "tumor":
        if region is None:
            raise ValueError("the tumor phase needs the kidney-region mask")
        x *= region.astype(bool)
    if norm.window is not None:
        lo, hi = norm.window
        np.clip(x, lo, hi, out=x)
    x -= np.float32(norm.mean)
    x /= np.float32(norm.std)
    return x


def expand_region(
    mask: npt.NDArray[Any], spacing_yx: tuple[float, float], margin_mm: float
) -> npt.NDArray[np.bool_]:
    """Grow a kidney-region mask by ``margin_mm`` within each axial slice.

    ``mask`` is one slice ``(y, x)`` or a canonical stack ``(z, y, x)``; the growth is an
    in-plane ellipse of ``margin_mm`` using the slice's pixel spacing, so it means the same
    distance at any resolution. A margin lets phase 2 see a rim around the kidney region, so a
    tumor part that phase 1 missed (exophytic tumors bulge out of the kidney) can still be
    found. ``margin_mm = 0`` is the paper's tight region (returned unchanged).

    Example:
        >>> m = np.zeros((5, 5), bool); m[2, 2] = True
        >>> int(expand_region(m, (1.0, 1.0), 1.0).sum())
        5
    """
    region = np.asarray(mask, dtype=bool)
    if margin_mm <= 0 or not region.any():
        return region
    ry, rx = margin_mm / spacing_yx[0], margin_mm / spacing_yx[1]
    yy, xx = np.ogrid[-int(ry) : int(ry) + 1, -int(rx) : int(rx) + 1]
    disk = (yy / max(ry, 1e-9)) ** 2 + (xx / max(rx, 1e-9)) ** 2 <= 1.0
    structure = disk if region.ndim == 2 else disk[None]
    return ndimage.binary_dilation(region, structure=structure)
