"""`CanonicalGeometry`: where a voxel of a canonical ``(z, y, x)`` array lies, in LPS mm.

The measurements (`kidneyseg.stats`), the preview and the viewer work on canonical arrays (the
report holds nothing else); this maps their indices back to patient coordinates, from a
`Volume`'s origin, spacing and direction cosines (`CanonicalGeometry.of`), or from the spacing
alone (`CanonicalGeometry.axis_aligned`: millimetres from the first voxel).

Example:
    >>> g = CanonicalGeometry.axis_aligned((2.0, 1.0, 0.5))
    >>> g.lps((1, 2, 4)), g.voxel_volume_ml
    ((2.0, 2.0, 2.0), 0.001)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.types import Array, Volume, world_axes


@dataclass(frozen=True)
class CanonicalGeometry:
    """Canonical index ``(z, y, x)`` -> LPS mm: ``lps = offset + matrix @ index``.

    Attributes:
        spacing: mm per canonical axis ``(z, y, x)``.
        matrix: 3x3, column k = LPS step (mm) of one voxel along canonical axis k.
        offset: LPS position (mm) of canonical voxel (0, 0, 0).
        patient: True when the mapping comes from a file's geometry (real LPS coordinates);
            False for `axis_aligned` (millimetres from the first voxel only).
    """

    spacing: tuple[float, float, float]
    matrix: tuple[tuple[float, float, float], ...]
    offset: tuple[float, float, float]
    patient: bool = True

    @classmethod
    def of(cls, volume: Volume) -> CanonicalGeometry:
        """The geometry of ``volume.to_canonical()``.

        Example:
            >>> v = Volume(np.zeros((2, 3, 4)), (1.0, 2.0, 3.0), direction=((-1, 0, 0),
            ...            (0, -1, 0), (0, 0, 1)))
            >>> CanonicalGeometry.of(v).lps((0, 0, 0))
            (-1.0, -4.0, 0.0)
        """
        axes = world_axes(volume.direction_matrix)
        scaled = volume.direction_matrix * np.asarray(volume.spacing, dtype=np.float64)
        perm = np.zeros((3, 3))  # file index = base + perm @ canonical index
        base = np.zeros(3)
        for k, target in enumerate((2, 1, 0)):  # canonical z, y, x = LPS axes 2, 1, 0
            c = next(c for c, (w, _) in enumerate(axes) if w == target)
            sign = axes[c][1]
            perm[c, k] = sign
            if sign < 0:
                base[c] = volume.shape[c] - 1
        matrix = scaled @ perm
        offset = np.asarray(volume.origin, dtype=np.float64) + scaled @ base
        return cls(
            volume.canonical_spacing,
            tuple(tuple(float(v) for v in row) for row in matrix),  # type: ignore[misc]
            tuple(float(v) for v in offset),  # type: ignore[arg-type]
        )

    @classmethod
    def axis_aligned(cls, spacing: tuple[float, float, float]) -> CanonicalGeometry:
        """A geometry known only by its spacing: canonical axes along LPS, first voxel at 0."""
        sz, sy, sx = (float(s) for s in spacing)
        matrix = ((0.0, 0.0, sx), (0.0, sy, 0.0), (sz, 0.0, 0.0))
        return cls((sz, sy, sx), matrix, (0.0, 0.0, 0.0), patient=False)

    def lps(self, index: npt.ArrayLike) -> tuple[float, float, float]:
        """LPS mm of one canonical ``(z, y, x)`` index (fractional allowed)."""
        out = np.asarray(self.offset) + np.asarray(self.matrix) @ np.asarray(index, float)
        return tuple(float(v) for v in out)  # type: ignore[return-value]

    def lps_x(self, indices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """LPS x (mm) of canonical indices given as an ``(n, 3)`` array."""
        return float(self.offset[0]) + indices @ np.asarray(self.matrix[0], dtype=np.float64)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def sitk_image(self, array: Array, start: tuple[int, int, int] = (0, 0, 0)) -> Any:
        """A SimpleITK image of the canonical sub-array whose first voxel is ``start``."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # sitk axes = (x, y, z)
        m = np.asarray(self.matrix, dtype=np.float64)
        sz, sy, sx = self.spacing
        image.SetSpacing((sx, sy, sz))
        image.SetOrigin(self.lps(start))
        direction = np.stack([m[:, 2] / sx, m[:, 1] / sy, m[:, 0] / sz], axis=1)
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        return image
