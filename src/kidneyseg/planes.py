"""Plane views of a canonical volume: axial, coronal and sagittal slices, and the way back.

The cascade's networks are 2D. The axial models see canonical ``(z, y, x)`` slices as they are;
multi-planar models (``data.planes``) see the same volume cut along y (**coronal** slices,
rows z, columns x) or along x (**sagittal** slices, rows z, columns y). One `PlaneGrid` says
how a case's canonical grid becomes a stack of plane slices, and back:

* **Square pixels, never coarser.** A coronal slice has pixels of ``sz x sx`` mm (often
  5 x 0.8). Both slice axes are resampled to one pixel size ``p = min(sz, s_in)`` (``s_in`` =
  ``sx`` coronal, ``sy`` sagittal): an axis is only ever refined (``N = round(n s / p) >= n``
  samples), so nothing is averaged away and a label map goes there and back *exactly*
  (`resample_axis`: nearest neighbour, integer arithmetic). The slicing axis is never
  resampled, so each plane slice is one canonical row or column.
* **Square slices.** The resampled slice (``R x C``) is centred in an ``L x L`` square,
  ``L = max(R, C)``, padded with air (`PAD_HU`; labels and regions 0), so the model-size
  resize (`kidneyseg.resize.to_model_size`, the same as axial) never distorts it. Scale: when
  the scan is shorter than it is wide (``R <= C``), a coronal model pixel is the axial model's
  pixel; a longer scan is shown smaller (factor ``C / R``), in training and prediction alike.
* **Axial is the identity**: no resampling, no padding; the axial path stays what it was.

Images are resampled linearly and rounded to int16 HU (training caches store int16, so
prediction rounds too: both sides see the same numbers); labels and regions by nearest
neighbour; probabilities come back linearly.

Example:
    >>> grid = PlaneGrid("coronal", (4, 6, 8), (2.0, 1.0, 1.0))
    >>> grid.view_shape, grid.resampled, grid.view_spacing
    ((6, 8, 8), (8, 8), (1.0, 1.0, 1.0))
    >>> labels = np.zeros((4, 6, 8), np.uint8); labels[1, 2, 3] = 1
    >>> view = grid.to_view(labels, np.arange(6), linear=False)
    >>> back = np.zeros_like(labels); grid.put(back, np.arange(6), grid.from_view(view))
    >>> bool((back == labels).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.errors import KidneysegError
from kidneyseg.normalization import expand_region

#: The slicing planes, axial first (the cascade's own plane, ``RUN_DIR/<phase>/``).
PLANES = ("axial", "coronal", "sagittal")
#: HU of the padding that makes a plane slice square (air).
PAD_HU = -1000
#: The canonical axis each plane slices along.
_SLICING_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def parse_planes(text: str) -> tuple[str, ...]:
    """The planes of a comma-separated list (``data.planes``), in `PLANES` order.

    Example:
        >>> parse_planes("sagittal, axial")
        ('axial', 'sagittal')

    Raises:
        KidneysegError: empty, unknown or repeated names.
    """
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in PLANES]
    if not names or unknown or len(set(names)) != len(names):
        raise KidneysegError(
            f"planes must be distinct names among {', '.join(PLANES)}, comma-separated "
            f"(got {text!r}), e.g. axial,coronal,sagittal"
        )
    return tuple(p for p in PLANES if p in names)


def check_plane_settings(training: str, prediction: str) -> None:
    """Check ``data.planes`` (a list) and ``inference.planes`` ("all" or a list).

    Raises:
        KidneysegError: a bad list, naming the config key.
    """
    for key, value in (("data.planes", training), ("inference.planes", prediction)):
        if key == "data.planes" or value.strip().lower() != "all":
            try:
                parse_planes(value)
            except KidneysegError as exc:
                raise KidneysegError(f"config {key}: {exc}") from None


def resample_axis(array: npt.NDArray[Any], axis: int, size: int, linear: bool) -> npt.NDArray[Any]:
    """``array`` resampled along ``axis`` to ``size`` samples covering the same extent.

    Sample centres sit at ``(j + 0.5) * n / size - 0.5`` source indices (the convention of
    ``align_corners=False``). Nearest neighbour uses exact integer arithmetic, so refining an
    axis (``size >= n``) and coming back with nearest neighbour returns the input exactly.
    Linear is float32, clamped at the ends. The same ``size`` returns ``array`` itself.

    Example:
        >>> a = np.array([0, 1, 2])
        >>> up = resample_axis(a, 0, 7, linear=False); up.tolist()
        [0, 0, 1, 1, 1, 2, 2]
        >>> resample_axis(up, 0, 3, linear=False).tolist()
        [0, 1, 2]
        >>> resample_axis(np.array([0.0, 10.0]), 0, 4, linear=True).tolist()
        [0.0, 2.5, 7.5, 10.0]
    """
    n = array.shape[axis]
    if size == n:
        return array
    if size < 1 or n < 1:
        raise ValueError(f"cannot resample an axis of {n} samples to {size}")
    if not linear:
        index = ((2 * np.arange(size, dtype=np.int64) + 1) * n) // (2 * size)
        return np.take(array, index, axis=axis)
    x = np.clip((np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5, 0, n - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = size
    w = (x - i0).astype(np.float32).reshape(shape)
    a0 = np.take(array, i0, axis=axis).astype(np.float32)
    a1 = np.take(array, i1, axis=axis).astype(np.float32)
    return a0 + (a1 - a0) * w


def _index(slices: Any, n: int) -> Any:
    """A plain slice for a contiguous run of indices (memory maps read it in one go)."""
    idx = np.arange(n)[slices] if isinstance(slices, slice) else np.asarray(slices, np.intp)
    idx = np.atleast_1d(idx)
    if len(idx) and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


@dataclass(frozen=True)
class PlaneGrid:
    """How one case's canonical grid becomes a stack of square plane slices (module doc).

    Args:
        plane: one of `PLANES`.
        shape: canonical ``(z, y, x)`` shape.
        spacing: canonical ``(sz, sy, sx)`` spacing in mm.
    """

    plane: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise KidneysegError(f"unknown plane {self.plane!r}; choose one of {', '.join(PLANES)}")

    @property
    def axis(self) -> int:
        """The canonical axis the plane slices along (0 axial, 1 coronal, 2 sagittal)."""
        return _SLICING_AXIS[self.plane]

    @property
    def slice_axes(self) -> tuple[int, int]:
        """Canonical axes of a slice's rows and columns."""
        rows, cols = (a for a in range(3) if a != self.axis)
        return rows, cols

    @property
    def resampled(self) -> tuple[int, int]:
        """``(R, C)``: a slice's rows and columns after resampling to square pixels."""
        rows, cols = self.slice_axes
        n_r, n_c = self.shape[rows], self.shape[cols]
        if self.plane == "axial":
            return n_r, n_c
        pixel = min(self.spacing[rows], self.spacing[cols])
        return (
            max(n_r, round(n_r * self.spacing[rows] / pixel)),
            max(n_c, round(n_c * self.spacing[cols] / pixel)),
        )

    @property
    def padding(self) -> tuple[int, int]:
        """``(top, left)``: where the resampled slice starts inside the square one."""
        r, c = self.resampled
        height, width = self.view_shape[1:]
        return (height - r) // 2, (width - c) // 2

    @property
    def view_shape(self) -> tuple[int, int, int]:
        """``(slices, height, width)`` of the plane's stack (square slices unless axial)."""
        r, c = self.resampled
        side = (r, c) if self.plane == "axial" else (max(r, c), max(r, c))
        return self.shape[self.axis], side[0], side[1]

    @property
    def view_spacing(self) -> tuple[float, float, float]:
        """``(slice distance, row pixel, column pixel)`` of the stack in mm."""
        rows, cols = self.slice_axes
        r, c = self.resampled
        return (
            float(self.spacing[self.axis]),
            self.shape[rows] * self.spacing[rows] / r,
            self.shape[cols] * self.spacing[cols] / c,
        )

    # ---------------------------------------------------------------- canonical <-> stacks

    def take(self, canonical: npt.NDArray[Any], slices: Any) -> npt.NDArray[Any]:
        """The canonical rows or columns ``slices`` as ``(n, rows, cols)`` (not resampled)."""
        index: list[Any] = [slice(None)] * 3
        index[self.axis] = _index(slices, self.shape[self.axis])
        return np.moveaxis(np.asarray(canonical[tuple(index)]), self.axis, 0)

    def put(self, canonical: npt.NDArray[Any], slices: Any, values: npt.NDArray[Any]) -> None:
        """Write ``(n, rows, cols)`` values (e.g. `from_view`) into the canonical array."""
        index: list[Any] = [slice(None)] * 3
        index[self.axis] = _index(slices, self.shape[self.axis])
        canonical[tuple(index)] = np.moveaxis(values, 0, self.axis)

    def to_view(
        self,
        canonical: npt.NDArray[Any],
        slices: Any,
        linear: bool,
        fill: float = 0,
        dtype: npt.DTypeLike | None = None,
    ) -> npt.NDArray[Any]:
        """Plane slices ``(n, height, width)`` of a canonical array: resampled (linear and
        rounded for images, nearest for labels and masks) and padded with ``fill``.

        ``dtype`` defaults to the input's; images come back as int16 when it is int16."""
        part = self.take(canonical, slices)
        dtype = part.dtype if dtype is None else np.dtype(dtype)
        if self.plane == "axial":
            return part.astype(dtype, copy=False)
        r, c = self.resampled
        part = resample_axis(resample_axis(part, 1, r, linear), 2, c, linear)
        if linear and np.issubdtype(dtype, np.integer):
            part = np.rint(part)
        out = np.full((len(part), *self.view_shape[1:]), fill, dtype)
        top, left = self.padding
        out[:, top : top + r, left : left + c] = part
        return out

    def from_view(self, view: npt.NDArray[Any], linear: bool = False) -> npt.NDArray[Any]:
        """Plane slices ``(n, height, width)`` back on the canonical grid ``(n, rows, cols)``
        (to `put`): padding cut off, then linear (probabilities, float32) or nearest
        (labels, masks; the inverse of `to_view`'s, exact on the canonical grid)."""
        if self.plane == "axial":
            return view
        rows, cols = self.slice_axes
        r, c = self.resampled
        top, left = self.padding
        part = view[:, top : top + r, left : left + c]
        part = resample_axis(part, 1, self.shape[rows], linear)
        return resample_axis(part, 2, self.shape[cols], linear)


class PlaneView:
    """A lazy plane stack of a canonical array: ``view[i]``, ``view[a:b]`` or ``view[idx]``
    computes only those plane slices (what `kidneyseg.phase_runner.PhaseRunner.segment` reads
    batch by batch), so the whole stack is never held in memory.

    Args:
        grid: the case's `PlaneGrid`.
        canonical: the canonical ``(z, y, x)`` array (a memory map is fine).
        kind: ``"image"`` (HU: linear, rounded to int16, air padding) or ``"mask"`` (bool:
            nearest, False padding).
        margin_mm: masks only: grow each plane slice's mask by this much in its own plane
            (`kidneyseg.normalization.expand_region`, the phase-2 region margin), as the
            training slices of that plane are grown.

    Example:
        >>> ct = np.zeros((3, 4, 5), np.int16)
        >>> view = PlaneView(PlaneGrid("sagittal", ct.shape, (1.0, 1.0, 1.0)), ct)
        >>> view.shape, view[1:3].shape
        ((5, 4, 4), (2, 4, 4))
    """

    def __init__(
        self,
        grid: PlaneGrid,
        canonical: npt.NDArray[Any],
        kind: str = "image",
        margin_mm: float = 0.0,
    ) -> None:
        if kind not in ("image", "mask"):
            raise ValueError(f"kind must be image or mask (got {kind!r})")
        self.grid, self.canonical, self.kind, self.margin_mm = grid, canonical, kind, margin_mm

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.view_shape

    @property
    def ndim(self) -> int:
        return 3

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.int16 if self.kind == "image" else bool)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> npt.NDArray[Any]:
        scalar = isinstance(index, (int, np.integer))
        slices = [int(index)] if scalar else index
        if self.kind == "image":
            out = self.grid.to_view(self.canonical, slices, True, PAD_HU, np.int16)
        else:
            out = self.grid.to_view(self.canonical, slices, False, 0, bool)
            if self.margin_mm > 0:
                spacing = self.grid.view_spacing[1:]
                out = np.stack([expand_region(m, spacing, self.margin_mm) for m in out])
        return out[0] if scalar else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> npt.NDArray[Any]:
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)


def slices_with(mask: npt.NDArray[np.bool_], grid: PlaneGrid) -> npt.NDArray[np.intp]:
    """Indices of the plane slices where a canonical mask has a voxel (padding adds none).

    Example:
        >>> m = np.zeros((2, 3, 4), bool); m[1, 2, 0] = True
        >>> slices_with(m, PlaneGrid("coronal", m.shape, (1.0, 1.0, 1.0))).tolist()
        [2]
    """
    others: Sequence[int] = grid.slice_axes
    return np.flatnonzero(np.asarray(mask).any(axis=tuple(others)))
