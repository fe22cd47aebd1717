"""Shared types: the `Volume`, label ids and the KiTS evaluation classes.

Conventions, stated once for the whole package:

* World coordinates are **LPS** (DICOM / ITK): +x patient Left, +y Posterior, +z Superior, in mm.
* ``Volume.array`` is indexed in the **file's index order** ``(i, j, k)``: the same order as
  SimpleITK's ``GetSize()``, ``GetSpacing()`` and the NIfTI header, and as nibabel's array. It is
  *not* assumed to be axial-first or axial-last: ``Volume.axial_axis`` says which index axis runs
  head-to-foot, derived from ``direction``.
* ``Volume.direction`` is a 3x3 matrix whose **column c** is the unit LPS direction of index axis c.
* The **canonical** array (what preprocessing, training and inference see) is ``(z, y, x)`` with
  z running inferior->superior, y anterior->posterior, x right->left: i.e. the LPS grid, axial
  axis first. `to_canonical` and `from_canonical` convert exactly (permutation and flips only).
* CT intensities are Hounsfield units (HU); label maps are uint8 with the ids below.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt

BACKGROUND: Final = 0
KIDNEY: Final = 1
TUMOR: Final = 2
CYST: Final = 3
LABEL_NAMES: Final = {BACKGROUND: "background", KIDNEY: "kidney", TUMOR: "tumor", CYST: "cyst"}
MAX_LABEL: Final = CYST

#: KiTS21/KiTS23 hierarchical evaluation classes: name -> label ids that make up the region.
KITS_CLASSES: Final[dict[str, tuple[int, ...]]] = {
    "kidney_and_mass": (KIDNEY, TUMOR, CYST),
    "mass": (TUMOR, CYST),
    "tumor": (TUMOR,),
}

#: Region each phase of the cascade segments (paper section 3): phase 1 the kidney *with* its
#: masses, so the tumor always lies inside the region phase 2 sees; phase 2 the tumor (and, with
#: ``data.tumor_classes = "tumor,cyst"``, the cyst as a second output: `phase_outputs`).
PHASE_TARGETS: Final[dict[str, tuple[int, ...]]] = {
    "kidney": (KIDNEY, TUMOR, CYST),
    "tumor": (TUMOR,),
}
PHASES: Final = ("kidney", "tumor")

#: What each network output (channel) of a phase is trained on, by name: the kidney region
#: (phase 1), and phase 2's mass classes, which ``data.tumor_classes`` picks from "tumor" (the
#: paper: one output) and "cyst" (the ``kits`` preset: a second output, so that predictions hold
#: all three KiTS labels). Label ids of each output's target.
OUTPUT_TARGETS: Final[dict[str, tuple[int, ...]]] = {
    "kidney": PHASE_TARGETS["kidney"],
    "tumor": (TUMOR,),
    "cyst": (CYST,),
}


def phase_outputs(phase: str, tumor_classes: str = "tumor") -> tuple[str, ...]:
    """The names of a phase's network outputs, one per channel (keys of `OUTPUT_TARGETS`).

    Args:
        phase: ``"kidney"`` or ``"tumor"``.
        tumor_classes: ``data.tumor_classes``: phase 2's classes, comma-separated.

    Example:
        >>> phase_outputs("kidney", "tumor,cyst"), phase_outputs("tumor", "tumor, cyst")
        (('kidney',), ('tumor', 'cyst'))
    """
    if phase == "kidney":
        return ("kidney",)
    if phase != "tumor":
        raise ValueError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    return tuple(name.strip() for name in tumor_classes.split(",") if name.strip())


Array = npt.NDArray[np.generic]

_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) for LPS x, y, z


@dataclass(frozen=True)
class Volume:
    """A 3D image or label map with its geometry.

    Attributes:
        array: voxel values indexed ``(i, j, k)`` in the file's index order (see module doc).
        spacing: voxel size in mm per index axis, same order as ``array.shape``.
        origin: LPS position (mm) of voxel (0, 0, 0).
        direction: 3x3 matrix, column c = LPS unit direction of index axis c.
        case_id: a name for messages and output files (file stem or KiTS case id).

    Example:
        >>> import numpy as np
        >>> v = Volume(np.zeros((4, 5, 6), np.int16), (0.8, 0.8, 3.0))
        >>> v.axial_axis, v.axcodes
        (2, ('L', 'P', 'S'))
    """

    array: Array
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    case_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D; got an array of shape {self.array.shape}")
        if len(self.spacing) != 3 or any(not (s > 0) for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers; got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def world_axes(self) -> tuple[tuple[int, int], ...]:
        """For each index axis: (nearest LPS world axis 0/1/2, sign +1/-1)."""
        return world_axes(self.direction_matrix)

    @property
    def axial_axis(self) -> int:
        """Index of the array axis that runs along the body (inferior/superior)."""
        return next(c for c, (w, _) in enumerate(self.world_axes) if w == 2)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation letters, nibabel style: the direction each index axis points *to*."""
        return tuple(_AXIS_LETTERS[w][s > 0] for w, s in self.world_axes)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: Array, case_id: str | None = None) -> Volume:
        """Same geometry, new voxels (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array, case_id=self.case_id if case_id is None else case_id)

    def same_geometry(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when shape, spacing, origin and direction agree (within ``atol``)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol, rtol=1e-4)
            and np.allclose(self.origin, other.origin, atol=max(atol, 1e-2), rtol=1e-4)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=atol)
        )

    def to_canonical(self) -> Array:
        """The voxels as a canonical ``(z, y, x)`` array (a view where possible)."""
        return to_canonical(self.array, self.direction_matrix)

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """Spacing (mm) of the canonical ``(z, y, x)`` array."""
        perm, _ = _canonical_perm(self.direction_matrix)
        return tuple(float(self.spacing[c]) for c in perm)  # type: ignore[return-value]

    def from_canonical(self, canonical: Array, case_id: str | None = None) -> Volume:
        """A volume in *this* volume's exact geometry from a canonical ``(z, y, x)`` array."""
        return self.with_array(from_canonical(canonical, self.direction_matrix), case_id)


def world_axes(direction: npt.NDArray[np.float64]) -> tuple[tuple[int, int], ...]:
    """Nearest LPS axis and sign for each index axis (columns of ``direction``).

    Raises:
        ValueError: two index axes map to the same world axis (degenerate direction).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    out = []
    for c in range(3):
        w = int(np.argmax(np.abs(d[:, c])))
        out.append((w, 1 if d[w, c] > 0 else -1))
    if len({w for w, _ in out}) != 3:
        raise ValueError(f"direction matrix does not map to distinct axes: {d.tolist()}")
    return tuple(out)


def _canonical_perm(direction: npt.NDArray[np.float64]) -> tuple[list[int], list[int]]:
    """Index axes that become canonical (z, y, x), and the canonical axes to flip."""
    axes = world_axes(direction)
    perm = [next(c for c, (w, _) in enumerate(axes) if w == target) for target in (2, 1, 0)]
    flips = [k for k, c in enumerate(perm) if axes[c][1] < 0]
    return perm, flips


def to_canonical(array: Array, direction: npt.NDArray[np.float64]) -> Array:
    """Permute/flip an ``(i, j, k)`` array into canonical ``(z, y, x)`` (LPS, axial first)."""
    perm, flips = _canonical_perm(direction)
    out = np.transpose(array, perm)
    return np.flip(out, axis=tuple(flips)) if flips else out


def from_canonical(canonical: Array, direction: npt.NDArray[np.float64]) -> Array:
    """Inverse of `to_canonical`: back to the file's ``(i, j, k)`` index order."""
    perm, flips = _canonical_perm(direction)
    out = np.flip(canonical, axis=tuple(flips)) if flips else canonical
    return np.transpose(out, np.argsort(perm))


#: Slab thickness, along the slowest axis, of the copy `file_order` makes.
_SLAB = 8


def file_order(array: np.ndarray) -> np.ndarray:
    """``array`` laid out as image files and ITK hold voxels: i fastest (Fortran order).

    Returned as is when it already is. An array whose first axis varies slowest (C order: e.g.
    a canonical array mapped back to an axial-first file) is copied in slabs along that axis,
    which stay in cache: about twice as fast as numpy's one-shot transposing copy.

    Example:
        >>> file_order(np.zeros((2, 3, 4))).flags.f_contiguous
        True
    """
    if array.flags.f_contiguous:
        return array
    strides = np.abs(np.asarray(array.strides))
    if array.ndim < 2 or strides[0] < strides.max():  # not C-like: numpy's copy is fine
        return np.asfortranarray(array)
    out = np.empty(array.shape, array.dtype, order="F")
    for i in range(0, array.shape[0], _SLAB):
        out[i : i + _SLAB] = array[i : i + _SLAB]
    return out
