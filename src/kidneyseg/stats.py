"""Measurements of a label map: volumes per kidney side, and each tumor's size and place.

The one measurement module: ``kidneyseg stats``, ``predict --stats``, the preview, the viewer
and the report all measure with `measure`, so their numbers agree.

Everything works on **canonical** ``(z, y, x)`` arrays (`kidneyseg.types`) plus a
`CanonicalGeometry` that maps a canonical index to LPS millimetres (the report holds canonical
arrays only); `label_statistics` does the conversion for a `Volume`. The geometry itself
(connected components, voxel counts, centroids, Feret diameters, HU mean and standard
deviation) comes from SimpleITK's ``ConnectedComponent``, ``LabelShapeStatisticsImageFilter``
and ``LabelIntensityStatisticsImageFilter`` on an image carrying the label map's spacing,
origin and direction cosines.

* Regions: kidney region = labels 1-3 (kidney with its masses, as KiTS and phase 1 count it);
  "kidney tissue" = label 1 alone; tumor = label 2; cyst = label 3.
* **Sides** (patient left / right from the direction cosines: larger LPS x = patient left).
  Each 3D connected component of the kidney region (26-connectivity) goes wholly to one side,
  by its centroid's LPS x against a midline:

  1. with the CT: the body midline, the mean LPS x of the body (CT above `BODY_HU`) in the
     slices holding the kidney region;
  2. without it, from the label map itself: halfway between the centroids of the two largest
     kidney-region components when they lie at least `KIDNEY_SEPARATION_MM` apart in x (two
     kidneys);
  3. otherwise (one kidney, or one kidney in pieces): the centre of the grid.

  A horseshoe kidney (one component across the midline) is counted on its centroid's side.
* Tumors: 3D connected components of label 2 (26-connectivity), largest first. Each has its
  volume, centroid (canonical index and LPS mm), side (of the kidney-region component holding
  it), maximum 3D diameter (Feret diameter), maximum axial diameter (the largest Feret diameter
  of its cross-sections in the canonical axial slices, i.e. the acquired slice plane) and,
  with the CT, the mean and sample standard deviation of its HU. Diameters run between voxel
  centres, as ITK measures them: up to one voxel shorter than the edge-to-edge extent.

Example:
    >>> labels = np.zeros((4, 6, 8), np.uint8); labels[1:3, 2:4, 5:7] = 1; labels[2, 2, 5] = 2
    >>> m = measure(labels, CanonicalGeometry.axis_aligned((2.0, 1.0, 1.0)))
    >>> m.volumes_ml["kidney"]["left"], len(m.tumors), m.tumors[0].side
    (0.016, 1, 'left')
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kidneyseg.geometry import CanonicalGeometry
from kidneyseg.types import CYST, KIDNEY, TUMOR, Array, Volume

#: Regions measured, in display order: name -> label ids.
REGIONS: Final[dict[str, tuple[int, ...]]] = {
    "kidney": (KIDNEY, TUMOR, CYST),
    "kidney tissue": (KIDNEY,),
    "tumor": (TUMOR,),
    "cyst": (CYST,),
}
SIDES: Final = ("right", "left")
#: HU above which a voxel counts as body when the midline is found.
BODY_HU: Final = -500.0
#: Least LPS x distance (mm) between the two largest kidney components for them to count as
#: the two kidneys (kidney centres lie about 10 cm apart in adults; one kidney is ~6 cm wide).
KIDNEY_SEPARATION_MM: Final = 50.0
#: How the midline was found (`Measurements.side_rule`).
SIDE_RULES: Final = {
    "body": "body midline of the CT",
    "kidneys": "midpoint between the two kidneys",
    "grid": "centre of the image grid",
}


@dataclass(frozen=True)
class Tumor:
    """One tumor (3D connected component of label 2)."""

    number: int  # 1 = largest
    voxels: int
    volume_ml: float
    centroid_index: tuple[float, float, float]  # canonical (z, y, x)
    centroid_mm: tuple[float, float, float]  # LPS (x, y, z)
    side: str  # "right" | "left"
    max_diameter_mm: float = 0.0
    axial_diameter_mm: float = 0.0
    hu_mean: float | None = None
    hu_std: float | None = None


@dataclass(frozen=True)
class Measurements:
    """Volumes (mL) per region and side, the tumors, and where the sides were split."""

    volumes_ml: dict[str, dict[str, float]]  # region -> {"right", "left", "total"}
    tumors: tuple[Tumor, ...]
    midline_x_mm: float
    patient_coordinates: bool
    side_rule: str = "body"  # a key of SIDE_RULES
    voxels: dict[str, int] | None = None  # label name -> voxel count of the whole map

    @property
    def empty(self) -> bool:
        """True when the label map holds no kidney region (labels 1-3)."""
        return self.volumes_ml["kidney"]["total"] == 0.0

    def side_text(self, side: str) -> str:
        """E.g. ``"right kidney 152.3 mL (tumor 12.0 mL)"``."""
        v = self.volumes_ml
        return f"{side} kidney {v['kidney'][side]:.1f} mL (tumor {v['tumor'][side]:.1f} mL)"

    def tumor_count(self, side: str) -> int:
        """Number of tumors on ``side`` ("right", "left" or "total")."""
        return sum(1 for t in self.tumors if side in ("total", t.side))

    def kidney_summary(self, side: str) -> dict[str, float | int]:
        """The ``kidneys.<side>`` entry of the stats JSON (side may also be "total")."""
        v = self.volumes_ml
        return {
            "volume_ml": round(v["kidney tissue"][side], 4),
            "volume_with_masses_ml": round(v["kidney"][side], 4),
            "tumor_volume_ml": round(v["tumor"][side], 4),
            "cyst_volume_ml": round(v["cyst"][side], 4),
            "tumor_count": self.tumor_count(side),
        }

    def to_stats_json(self) -> dict[str, Any]:
        """The statistics of one label map (``kidneyseg stats --json``, one case of
        ``predict --stats``; `kidneyseg.formats.pred_dir` documents the fields)."""
        return {
            "kidneys": {side: self.kidney_summary(side) for side in SIDES},
            "total": self.kidney_summary("total"),
            "tumors": [
                {
                    "number": t.number,
                    "volume_ml": round(t.volume_ml, 4),
                    "max_diameter_mm": round(t.max_diameter_mm, 2),
                    "axial_diameter_mm": round(t.axial_diameter_mm, 2),
                    "centroid_mm": [round(v, 2) for v in t.centroid_mm],
                    "side": t.side,
                    "hu_mean": None if t.hu_mean is None else round(t.hu_mean, 2),
                    "hu_std": None if t.hu_std is None else round(t.hu_std, 2),
                    "voxels": t.voxels,
                }
                for t in self.tumors
            ],
            "voxels": dict(self.voxels or {}),
            "sides": {
                "rule": SIDE_RULES[self.side_rule],
                "midline_x_mm": round(self.midline_x_mm, 2),
            },
            "coordinates": "LPS mm" if self.patient_coordinates else "mm from the first voxel",
        }

    def to_json(self) -> dict[str, object]:
        """Plain data for the viewer page."""
        return {
            "volumes_ml": {
                region: {side: round(v, 4) for side, v in sides.items()}
                for region, sides in self.volumes_ml.items()
            },
            "midline_x_mm": round(self.midline_x_mm, 2),
            "side_rule": SIDE_RULES[self.side_rule],
            "patient_coordinates": self.patient_coordinates,
            "tumors": [
                {
                    "number": t.number,
                    "voxels": t.voxels,
                    "volume_ml": round(t.volume_ml, 3),
                    "max_diameter_mm": round(t.max_diameter_mm, 1),
                    "axial_diameter_mm": round(t.axial_diameter_mm, 1),
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


def _components(image: Any, with_feret: bool) -> tuple[Any, Any]:
    """26-connected components of a binary SimpleITK image and their shape statistics."""
    import SimpleITK as sitk

    components = sitk.ConnectedComponent(image, True)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.SetComputeFeretDiameter(with_feret)
    shape.Execute(components)
    return components, shape


def _midline(
    geometry: CanonicalGeometry,
    shape: tuple[int, ...],
    ct: Array | None,
    z_range: tuple[int, int],
    kidneys: list[tuple[int, float]],
) -> tuple[float, str]:
    """The midline's LPS x and the rule that found it (module doc); ``kidneys`` holds
    ``(voxels, centroid x)`` of each kidney-region component."""
    if (
        ct is not None
        and (np.asarray(ct[z_range[0] : z_range[1] : 2, ::2, ::2], np.float32) > BODY_HU).any()
    ):
        return body_midline_x(geometry, shape, ct, z_range), "body"
    big = sorted(kidneys, key=lambda k: -k[0])[:2]
    if len(big) == 2 and abs(big[0][1] - big[1][1]) >= KIDNEY_SEPARATION_MM:
        return (big[0][1] + big[1][1]) / 2, "kidneys"
    return body_midline_x(geometry, shape), "grid"


def _empty_volumes() -> dict[str, dict[str, float]]:
    return {name: {"right": 0.0, "left": 0.0, "total": 0.0} for name in REGIONS}


def measure(labels: Array, geometry: CanonicalGeometry, ct: Array | None = None) -> Measurements:
    """Volumes per region and side, and the tumors, of a canonical label map.

    Args:
        labels: canonical ``(z, y, x)`` label map (0-3).
        geometry: its `CanonicalGeometry`.
        ct: the canonical CT (HU) on the same grid: body midline and tumor HU.

    Returns:
        The `Measurements` (all volumes 0 and no tumors for an empty map).
    """
    import SimpleITK as sitk

    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.intp), minlength=4)
    voxels = {"kidney": int(counts[KIDNEY]), "tumor": int(counts[TUMOR]), "cyst": int(counts[CYST])}
    region = np.isin(labels, REGIONS["kidney"])
    if not region.any():
        midline = body_midline_x(geometry, labels.shape, ct)
        rule = "body" if ct is not None and (np.asarray(ct, np.float32) > BODY_HU).any() else "grid"
        return Measurements(_empty_volumes(), (), midline, geometry.patient, rule, voxels)
    # Measure the kidney region's bounding box only: fast on a whole CT.
    where = [np.flatnonzero(region.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    lo = (int(where[0][0]), int(where[1][0]), int(where[2][0]))
    box = tuple(slice(a, int(w[-1]) + 1) for a, w in zip(lo, where, strict=True))
    sub = labels[box]
    ml = geometry.voxel_volume_ml

    region_cc, region_shape = _components(
        geometry.sitk_image(region[box].view(np.uint8), lo), False
    )
    region_ids = sitk.GetArrayFromImage(region_cc)
    n_region = region_shape.GetNumberOfLabels()
    kidneys = [
        (region_shape.GetNumberOfPixels(k), region_shape.GetCentroid(k)[0])
        for k in range(1, n_region + 1)
    ]
    midline, rule = _midline(geometry, labels.shape, ct, (lo[0], box[0].stop), kidneys)
    left = np.asarray([False] + [x > midline for _, x in kidneys])  # per component id
    volumes = _empty_volumes()
    for name, ids in REGIONS.items():
        per_component = np.bincount(region_ids[np.isin(sub, ids)], minlength=n_region + 1)
        n_left = int(per_component[left].sum())
        n_right = int(per_component.sum()) - n_left
        volumes[name] = {
            "right": n_right * ml,
            "left": n_left * ml,
            "total": (n_right + n_left) * ml,
        }
    tumors = _tumors(
        sub, lo, geometry, None if ct is None else np.asarray(ct)[box], region_ids, left
    )
    return Measurements(volumes, tumors, midline, geometry.patient, rule, voxels)


def _tumors(
    sub: Array,
    lo: tuple[int, int, int],
    geometry: CanonicalGeometry,
    ct: Array | None,
    region_ids: Array,
    left: npt.NDArray[np.bool_],
) -> tuple[Tumor, ...]:
    """The tumors of the bounding-box sub-array ``sub`` starting at canonical index ``lo``."""
    import SimpleITK as sitk

    is_tumor = sub == TUMOR
    if not is_tumor.any():
        return ()
    image = geometry.sitk_image(is_tumor.view(np.uint8), lo)
    components, shape = _components(image, True)
    ids = sitk.GetArrayFromImage(components).astype(np.int64)
    n = shape.GetNumberOfLabels()
    owner = np.zeros(n + 1, np.int64)  # tumor id -> kidney-region component holding it
    owner[ids[is_tumor]] = np.asarray(region_ids)[is_tumor]
    axial = _axial_diameters(ids, image, n)
    hu: dict[int, tuple[float, float]] = {}
    if ct is not None:
        intensity = sitk.LabelIntensityStatisticsImageFilter()
        ct_image = sitk.GetImageFromArray(np.asarray(ct, dtype=np.float32))
        ct_image.CopyInformation(components)
        intensity.Execute(components, ct_image)
        hu = {k: (intensity.GetMean(k), intensity.GetStandardDeviation(k)) for k in range(1, n + 1)}
    ml = geometry.voxel_volume_ml
    found = []
    for k in range(1, n + 1):
        centroid_mm = tuple(float(v) for v in shape.GetCentroid(k))
        ijk = components.TransformPhysicalPointToContinuousIndex(centroid_mm)  # (x, y, z)
        index = tuple(float(ijk[2 - a]) + lo[a] for a in range(3))
        found.append(
            Tumor(
                0,
                int(shape.GetNumberOfPixels(k)),
                int(shape.GetNumberOfPixels(k)) * ml,
                index,  # type: ignore[arg-type]
                centroid_mm,  # type: ignore[arg-type]
                "left" if left[owner[k]] else "right",
                float(shape.GetFeretDiameter(k)),
                axial[k],
                *(hu[k] if k in hu else (None, None)),
            )
        )
    found.sort(key=lambda t: (-t.voxels, t.centroid_index))
    return tuple(replace(t, number=i) for i, t in enumerate(found, start=1))


def _axial_diameters(ids: npt.NDArray[np.int64], image: Any, n: int) -> list[float]:
    """Per tumor id (index 1..n), the largest Feret diameter of its axial cross-sections.

    Each (tumor, slice) pair gets its own label, so one 3D Feret pass measures every
    cross-section in its own plane.
    """
    import SimpleITK as sitk

    nz = ids.shape[0]
    z = np.arange(nz, dtype=np.int64)[:, None, None]
    per_slice = np.where(ids > 0, (ids - 1) * nz + z + 1, 0).astype(np.uint32)
    sections = sitk.GetImageFromArray(per_slice)
    sections.CopyInformation(image)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeFeretDiameterOn()
    shape.Execute(sections)
    out = [0.0] * (n + 1)
    for label in shape.GetLabels():
        k = (int(label) - 1) // nz + 1
        out[k] = max(out[k], float(shape.GetFeretDiameter(label)))
    return out


def label_statistics(labels: Volume, ct: Volume | None = None) -> dict[str, Any]:
    """The statistics of a label map in its own geometry (`Measurements.to_stats_json`).

    Args:
        labels: the label map (0-3).
        ct: the CT on the same grid (body midline, tumor HU), or None.

    Raises:
        ValueError: ``ct`` not on the label map's grid.

    Example:
        >>> arr = np.zeros((10, 10, 10), np.uint8); arr[:2] = 1; arr[0, 0, 0] = 2
        >>> s = label_statistics(Volume(arr, (1.0, 1.0, 2.0)))
        >>> s["total"]["volume_with_masses_ml"], s["total"]["tumor_count"]
        (0.4, 1)
    """
    if ct is not None and not labels.same_geometry(ct):
        raise ValueError("the CT and the label map do not share a grid")
    geometry = CanonicalGeometry.of(labels)
    canonical_ct = None if ct is None else ct.to_canonical()
    return measure(labels.to_canonical(), geometry, canonical_ct).to_stats_json()
