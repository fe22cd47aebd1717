"""What the preview and the viewer print: volumes per label and per side, and each tumor.

Everything here works on **canonical** ``(z, y, x)`` arrays (`kidneyseg.types`) plus a
`CanonicalGeometry` that maps a canonical index to LPS millimetres, so the preview, the viewer
and the report (which holds canonical arrays only) measure alike.

* Side: a voxel lies on the patient's **left** when its LPS x (from the origin, spacing and
  direction cosines, so oblique and permuted files agree) is greater than the body midline's.
  The midline is the mean LPS x of the body (CT above -500 HU) in the slices holding the kidney
  region; without a CT, or without body voxels, the centre of the grid.
* Kidney = the kidney region, labels 1-3 (kidney with its masses, as KiTS and phase 1 count it);
  tumor = label 2; cyst = label 3; "kidney tissue" = label 1 alone.
* Tumors: 3D connected components of label 2 (`scipy.ndimage.label`, 26-connectivity), largest
  first, each with its volume, centroid (canonical index and LPS mm) and side.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((4, 6, 8), np.uint8); labels[1:3, 2:4, 5:7] = 1; labels[2, 2, 5] = 2
    >>> m = measure(labels, CanonicalGeometry.axis_aligned((2.0, 1.0, 1.0)))
    >>> m.volumes_ml["kidney"]["left"], len(m.tumors), m.tumors[0].side
    (0.016, 1, 'left')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from kidneyseg.types import CYST, KIDNEY, TUMOR, Array, Volume, world_axes

#: Regions measured, in display order: name -> label ids.
REGIONS: Final[dict[str, tuple[int, ...]]] = {
    "kidney": (KIDNEY, TUMOR, CYST),
    "kidney tissue": (KIDNEY,),
    "tumor": (TUMOR,),
    "cyst": (CYST,),
}
#: HU above which a voxel counts as body when the midline is found.
BODY_HU: Final = -500.0


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


@dataclass(frozen=True)
class Tumor:
    """One tumor (3D connected component of label 2)."""

    number: int  # 1 = largest
    voxels: int
    volume_ml: float
    centroid_index: tuple[float, float, float]  # canonical (z, y, x)
    centroid_mm: tuple[float, float, float]  # LPS (x, y, z)
    side: str  # "right" | "left"


@dataclass(frozen=True)
class Measurements:
    """Volumes (mL) per region and side, the tumors, and where the sides were split."""

    volumes_ml: dict[str, dict[str, float]]  # region -> {"right", "left", "total"}
    tumors: tuple[Tumor, ...]
    midline_x_mm: float
    patient_coordinates: bool

    @property
    def empty(self) -> bool:
        """True when the label map holds no kidney region (labels 1-3)."""
        return self.volumes_ml["kidney"]["total"] == 0.0

    def side_text(self, side: str) -> str:
        """E.g. ``"right kidney 152.3 mL (tumor 12.0 mL)"``."""
        v = self.volumes_ml
        return f"{side} kidney {v['kidney'][side]:.1f} mL (tumor {v['tumor'][side]:.1f} mL)"

    def to_json(self) -> dict[str, object]:
        """Plain data for the viewer page."""
        return {
            "volumes_ml": {
                region: {side: round(v, 4) for side, v in sides.items()}
                for region, sides in self.volumes_ml.items()
            },
            "midline_x_mm": round(self.midline_x_mm, 2),
            "patient_coordinates": self.patient_coordinates,
            "tumors": [
                {
                    "number": t.number,
                    "voxels": t.voxels,
                    "volume_ml": round(t.volume_ml, 3),
                    "centroid_index": [round(v, 2) for v in t.centroid_index],
                    "centroid_mm": [round(v, 1) for v in t.centroid_mm],
                    "side": t.side,
                }
                for t in self.tumors
            ],
        }


def _mean_index(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64] | None:
    """Mean index of the voxels of a 3D ``mask`` (None when it is empty)."""
    zy = mask.sum(axis=2, dtype=np.int64)
    total = int(zy.sum())
    if total == 0:
        return None
    counts = (zy.sum(axis=1), zy.sum(axis=0), mask.sum(axis=(0, 1), dtype=np.int64))
    return np.asarray([float(c @ np.arange(c.size)) / total for c in counts])


def body_midline_x(
    geometry: CanonicalGeometry,
    shape: tuple[int, ...],
    ct: Array | None = None,
    z_range: tuple[int, int] | None = None,
) -> float:
    """LPS x (mm) of the body midline: the mean x of the body (CT above `BODY_HU`, every second
    voxel) in the slices ``z_range`` (default all), or the grid centre (module doc)."""
    z0, z1 = z_range if z_range is not None else (0, shape[0])
    mean = None
    if ct is not None:
        mean = _mean_index(np.asarray(ct[z0:z1:2, ::2, ::2], dtype=np.float32) > BODY_HU)
        if mean is not None:
            mean = mean * 2 + np.asarray([z0, 0, 0])
    if mean is None:
        mean = (np.asarray(shape, dtype=np.float64) - 1) / 2
    return float(geometry.lps_x(mean[None, :])[0])


def measure(labels: Array, geometry: CanonicalGeometry, ct: Array | None = None) -> Measurements:
    """Volumes per region and side, and the tumors, of a canonical label map.

    Args:
        labels: canonical ``(z, y, x)`` label map (0-3).
        geometry: its `CanonicalGeometry`.
        ct: the canonical CT (HU) on the same grid, used for the body midline only.

    Returns:
        The `Measurements` (all volumes 0 and no tumors for an empty map).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    ml = geometry.voxel_volume_ml
    where = np.nonzero(labels)
    values = labels[where]
    z_range = (int(where[0].min()), int(where[0].max()) + 1) if values.size else None
    midline = body_midline_x(geometry, labels.shape, ct, z_range)
    left = geometry.lps_x(np.stack(where, axis=1).astype(np.float64)) > midline
    volumes: dict[str, dict[str, float]] = {}
    for name, ids in REGIONS.items():
        inside = np.isin(values, ids)
        n_left = int(np.count_nonzero(inside & left))
        n_right = int(np.count_nonzero(inside)) - n_left
        volumes[name] = {
            "right": n_right * ml,
            "left": n_left * ml,
            "total": (n_right + n_left) * ml,
        }
    tumors: list[Tumor] = []
    is_tumor = values == TUMOR
    if is_tumor.any():
        # Components of the tumor's bounding box only: fast on a whole CT.
        lo = [int(w[is_tumor].min()) for w in where]
        box = tuple(slice(a, int(w[is_tumor].max()) + 1) for a, w in zip(lo, where, strict=True))
        mask = labels[box] == TUMOR
        components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        centroids = [
            tuple(float(v) + a for v, a in zip(c, lo, strict=True))
            for c in ndimage.center_of_mass(mask, components, range(1, n + 1))
        ]
        order = sorted(range(n), key=lambda i: (-int(sizes[i]), centroids[i]))
        for rank, i in enumerate(order, start=1):
            x = float(geometry.lps_x(np.asarray([centroids[i]]))[0])
            tumors.append(
                Tumor(
                    rank,
                    int(sizes[i]),
                    int(sizes[i]) * ml,
                    centroids[i],  # type: ignore[arg-type]
                    geometry.lps(centroids[i]),
                    "left" if x > midline else "right",
                )
            )
    return Measurements(volumes, tuple(tumors), midline, geometry.patient)
