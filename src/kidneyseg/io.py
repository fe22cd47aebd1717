"""Reading and writing images and label maps with their geometry.

The public face of the IO layer, the only place that knows file formats and orientation. Readers
return a `Volume` (array in the file's index order + spacing, origin, direction); writers put a
`Volume` back in exactly that geometry. Also here: the value rules every stage shares
(`looks_like_labels`, `check_hounsfield`, `validate_labels`).

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) files, single DICOM files, and DICOM series folders (`kidneyseg.dicom`, JPEG 2000
included). Writing supports the single-file formats (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).

Nothing here assumes an axis order: KiTS stores the axial axis first (axcodes I,P,L),
TotalSegmentator and DICOM store it last (R,A,S and L,P,S); `Volume.axial_axis` and
`Volume.to_canonical` sort that out from the direction cosines.

Below this module (each imports only the ones before it, plus `errors` and `types`):
`kidneyseg.filetypes` (suffixes, case ids), `kidneyseg.sitk` (SimpleITK bridge),
`kidneyseg.nifti` (nibabel checks ITK misses), `kidneyseg.dicom` (DICOM series).

Example:
    >>> vol = read_volume("case_00000/imaging.nii.gz")  # doctest: +SKIP
    >>> vol.axial_axis, vol.axcodes  # doctest: +SKIP
    (0, ('I', 'P', 'L'))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.compressed import check_compressed_payload
from kidneyseg.dicom import check_ct_modality, read_dicom_series
from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    WRITE_SUFFIXES,
    case_id_from_path,
    is_image_file,
)
from kidneyseg.nifti import read_nifti
from kidneyseg.sitk import captured_stderr, from_sitk, read_sitk, sitk_error_detail, to_sitk
from kidneyseg.types import LABEL_NAMES, MAX_LABEL, Volume, file_order
from kidneyseg.utils import atomic_path


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    if is_image_file(path):
        return False
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError as exc:
        raise KidneysegError(f"cannot open: {exc.strerror}", path=path) from exc


def read_volume(path: str | Path, series: str | None = None) -> Volume:
    """Read an image file, a DICOM file or a DICOM series folder into a `Volume`.

    Args:
        path: ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, a DICOM file,
            or a folder holding one DICOM CT series (see `kidneyseg.dicom.read_dicom_series`).
        series: for a DICOM folder holding several series, the SeriesInstanceUID to read.

    Returns:
        The volume, array in the file's index order (see `kidneyseg.types`).

    Raises:
        KidneysegError: missing file, unreadable/truncated file, not 3D, 4D, ... (names the file).

    Example:
        >>> vol = read_volume("totalseg_example/example_ct.nii.gz")  # doctest: +SKIP
        >>> vol.shape, vol.axcodes, vol.axial_axis  # doctest: +SKIP
        ((122, 101, 112), ('R', 'A', 'S'), 2)
    """
    p = Path(path)
    if not p.exists():
        raise KidneysegError("no such file or folder", path=p)
    if p.is_dir() or _is_dicom_file(p):
        series_volume = read_dicom_series(p, series=series)
        check_geometry(series_volume, p)
        return series_volume
    if not is_image_file(p):
        raise KidneysegError(
            f"not a supported image file; use one of {', '.join(IMAGE_SUFFIXES)}, a DICOM file, "
            "or a DICOM series folder",
            path=p,
        )
    try:
        volume: Volume | None = None
        if p.name.lower().endswith(NIFTI_SUFFIXES):  # ITK misses too much: `kidneyseg.nifti`
            volume = read_nifti(p, case_id_from_path(p))
        if volume is None:
            check_compressed_payload(p)
            image = read_sitk(p)
            # Squeeze a trailing singleton 4th axis (some tools write 3D as 4D with t=1).
            if image.GetDimension() == 4 and image.GetSize()[3] == 1:
                image = image[:, :, :, 0]
            volume = from_sitk(image, case_id_from_path(p))
    except ValueError as exc:  # not 3D, several values per voxel, bad spacing
        raise KidneysegError(str(exc), path=p) from exc
    check_geometry(volume, p)
    return volume


#: Voxel sizes a CT (or its label map) can have, in mm: micro-CT is about 0.01 mm, the
#: thickest clinical slices about 10 mm. Outside this band a spacing is a broken header.
SPACING_RANGE_MM = (0.01, 100.0)
#: How far a direction matrix may be from orthonormal (rounding of stored cosines).
ORTHONORMAL_TOLERANCE = 1e-4


def check_geometry(volume: Volume, path: str | Path) -> None:
    """Refuse a geometry that cannot be exact: implausible spacing, axes not orthonormal.

    Every reader passes through here, so each stage sees the same rule. A spacing outside
    `SPACING_RANGE_MM` gives nonsense volumes in mL and resampling; a direction matrix whose
    axes are not orthogonal unit vectors cannot be written back unchanged (writers
    orthonormalise it) nor mapped to the canonical orientation.

    Raises:
        KidneysegError: says which value is wrong (names the file).

    Example:
        >>> check_geometry(Volume(np.zeros((2, 2, 2)), (1e6, 1.0, 1.0)), "x.nii")
        Traceback (most recent call last):
        ...
        kidneyseg.errors.KidneysegError: x.nii: implausible voxel size (1e+06, 1, 1) mm: ...
    """
    lo, hi = SPACING_RANGE_MM
    if not all(lo <= s <= hi for s in volume.spacing):
        raise KidneysegError(
            f"implausible voxel size ({', '.join(f'{s:g}' for s in volume.spacing)}) mm: CT "
            f"voxels measure {lo:g} to {hi:g} mm; fix the header's spacing",
            path=path,
        )
    d = volume.direction_matrix
    off = np.abs(d.T @ d - np.eye(3)).max() if np.all(np.isfinite(d)) else np.inf
    if not off <= ORTHONORMAL_TOLERANCE:
        raise KidneysegError(
            f"direction matrix is not orthonormal (off by {off:.3g}): the grid is sheared and "
            "cannot be kept exactly; resample it to an orthogonal grid first",
            path=path,
        )


def read_image(path: str | Path, series: str | None = None) -> Volume:
    """Read a CT image (`read_volume`): finite values, and a DICOM series of Modality CT.

    Raises:
        KidneysegError: as `read_volume`; the image holds NaN or infinite values; a DICOM
            object that is not CT (MR, SEG, RTSTRUCT, ...: the modality is named).

    Example:
        >>> ct = read_image("case_00000/imaging.nii.gz")  # doctest: +SKIP
    """
    volume = read_volume(path, series=series)
    check_ct_modality(volume.metadata.get("modality"), path)
    _check_finite(volume, path)
    return volume


def _check_finite(volume: Volume, path: str | Path) -> None:
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise KidneysegError(f"image contains {bad} NaN or infinite values", path=path)


def validate_labels(volume: Volume, path: str | Path) -> Volume:
    """Check ``volume`` is a label map (whole numbers 0-3) and return it as uint8.

    Raises:
        KidneysegError: NaN/inf, non-integer values or ids outside 0-3.
    """
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise KidneysegError("label map contains NaN or infinite values", path=path)
        if not np.array_equal(arr, np.round(arr)):
            raise KidneysegError("label map has non-integer values", path=path)
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if lo < 0 or hi > MAX_LABEL:
        found = sorted(int(v) for v in np.unique(arr) if v < 0 or v > MAX_LABEL)[:5]
        raise KidneysegError(
            f"labels outside 0-{MAX_LABEL} (found {found}); expected 0 background, 1 kidney, "
            "2 tumor, 3 cyst",
            path=path,
        )
    return volume.with_array(arr.astype(np.uint8, copy=False))


def read_labels(path: str | Path, like: Volume | None = None) -> Volume:
    """Read a label map (ids 0-3) as uint8; with ``like``, check it lies on that image's grid.

    Raises:
        KidneysegError: as `read_volume`; values outside 0-3 or not whole numbers; a grid that
            differs from ``like``'s (`check_same_geometry`).

    Example:
        >>> ct = read_image("case_00000/imaging.nii.gz")  # doctest: +SKIP
        >>> seg = read_labels("case_00000/segmentation.nii.gz", like=ct)  # doctest: +SKIP
    """
    volume = validate_labels(read_volume(path), path)
    if like is not None:
        check_same_geometry(like, volume, path)
    return volume


def check_same_geometry(reference: Volume, other: Volume, path: str | Path) -> None:
    """Raise a clear error when ``other`` (read from ``path``) is not on ``reference``'s grid.

    Example:
        >>> check_same_geometry(ct, seg, "case_1/segmentation.nii.gz")  # doctest: +SKIP
    """
    if reference.shape != other.shape:
        raise KidneysegError(
            f"shape {other.shape} differs from its image's {reference.shape}", path=path
        )
    if not reference.same_geometry(other):
        raise KidneysegError(
            "geometry differs from its image's: "
            f"spacing {_fmt(other.spacing)} vs {_fmt(reference.spacing)}, "
            f"origin {_fmt(other.origin)} vs {_fmt(reference.origin)}, "
            f"axcodes {''.join(other.axcodes)} vs {''.join(reference.axcodes)}",
            path=path,
        )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def write_volume(volume: Volume, path: str | Path, description: str | None = None) -> Path:
    """Write ``volume`` in its exact geometry, atomically (temp file + rename), verified.

    ``description`` (e.g. the model) goes into the header: NIfTI ``descrip`` (80 characters).
    The format follows the suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``); NRRD and
    MetaImage are gzip-compressed. Before the rename the file is read back (`read_volume`) and
    compared with ``volume``, voxel for voxel and in geometry: ITK's NIfTI writer reports a
    full disk only as text ("wrote only N of M bytes") and returns, which would otherwise put
    a cut file in place. On failure nothing is left at ``path``.

    Raises:
        KidneysegError: unsupported suffix, or the file cannot be written (full disk, ...).

    Example:
        >>> write_volume(prediction, "preds/case_00000.nii.gz")  # doctest: +SKIP
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.name.lower().endswith(WRITE_SUFFIXES):
        raise KidneysegError(
            f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}", path=p
        )
    # i fastest, as files hold voxels: ITK takes it as is, the read-back compares 30x faster
    volume = volume.with_array(file_order(volume.array))

    def verify(tmp: Path) -> None:
        try:
            written = read_volume(tmp)
        except KidneysegError as exc:
            raise KidneysegError(
                f"cannot write: the written file does not read back ({exc.message})", path=p
            ) from None
        nan_ok = written.array.dtype.kind in "fc"
        same = written.same_geometry(volume, atol=1e-4)
        if not (same and np.array_equal(written.array, volume.array, equal_nan=nan_ok)):
            raise KidneysegError(
                "cannot write: the written file differs from what was meant to be written", path=p
            )

    try:
        with atomic_path(p, verify) as tmp:
            with captured_stderr() as printed:
                image = to_sitk(volume)
                if description:  # MetaImage warns of an empty item (read as a failed write)
                    image.SetMetaData("ITK_FileNotes", description[:80])
                # NIfTI ignores compressionLevel; level 1 is no faster on label maps, ~7x larger
                sitk.WriteImage(image, str(tmp), useCompression=True)
            if printed:  # e.g. niftilib's "wrote only N of M bytes": a full disk
                raise KidneysegError(f"cannot write: {printed[-1][:200]}", path=p)
    except RuntimeError as exc:
        raise KidneysegError(f"cannot write: {sitk_error_detail(exc)}", path=p) from exc
    return p


def looks_like_labels(array: np.ndarray) -> bool:
    """The rule `volume_info` and `check_hounsfield` use to call an image a label map.

    A label map is an integer (or boolean) image whose values all lie in 0-3, or a float image
    whose values are all one of 0, 1, 2, 3 (binary masks are often stored as float). No CT
    looks like that: air alone is about -1000 HU.

    Example:
        >>> looks_like_labels(np.array([0, 1, 2], np.uint8)), looks_like_labels(np.array([-1000]))
        (True, False)
    """
    if array.size == 0:
        return False
    if array.dtype == np.bool_:
        return True
    lo, hi = array.min(), array.max()
    if lo < 0 or hi > MAX_LABEL:
        return False
    if np.issubdtype(array.dtype, np.integer):
        return True
    if np.issubdtype(array.dtype, np.floating):
        return bool(np.isin(array, np.arange(MAX_LABEL + 1)).all())
    return False


#: Largest value a CT with no negative values may hold (see `check_hounsfield`): CT clipped to
#: a soft-tissue window such as [0, 255] HU stays below it; MR signal and unrescaled CT
#: storage values (HU + 1024, up to 4095) go above it.
MAX_HU_WITHOUT_AIR = 1000


def check_hounsfield(array: np.ndarray, source: str | Path | None = None) -> None:
    """Raise a clear error when an image's values are clearly not CT in Hounsfield units.

    The one rule for "is this CT in HU?", used before preprocessing and before prediction.
    CT holds air (about -1000 HU) to bone (hundreds to thousands of HU). Refused:

    * 8-bit integer images (uint8/int8): a byte cannot hold HU (air -1000, bone > 255); such
      an image is a picture (PNG/JPEG) or a mask. The type decides, not the values: the
      KiTS19 slices this project trains on hold HU clipped to [0, 255] as float32 and pass;
    * values in about [0, 1] (a normalised image or a mask), label maps (`looks_like_labels`),
      and images whose values span less than 100 HU (standardised or constant);
    * images with no negative value whose maximum exceeds `MAX_HU_WITHOUT_AIR`: a body CT
      holds air and fat (below 0 HU) unless it was clipped to a soft-tissue window (then
      its maximum is a few hundred HU); 0..4000 is MR signal, or CT stored values without
      their rescale intercept (-1024).

    Args:
        array: the image's voxels.
        source: the file they came from, named in the error.

    Raises:
        KidneysegError: empty, or not CT in HU (says which case and what to give instead).

    Example:
        >>> check_hounsfield(np.array([-1000, 40, 300]))  # fine
        >>> check_hounsfield(np.array([0.0, 0.5, 1.0]), "x.nii.gz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kidneyseg.errors.KidneysegError: x.nii.gz: not CT in HU: values lie in [0, 1] (a...
    """
    if array.size == 0:
        raise KidneysegError("image is empty", path=source)
    lo, hi = float(array.min()), float(array.max())
    hint = "expected CT in Hounsfield units (air about -1000, soft tissue 0-100)"
    if lo >= -0.5 and hi <= 1.5:
        raise KidneysegError(
            f"not CT in HU: values lie in [{lo:g}, {hi:g}] (a normalised image or a mask); {hint}",
            path=source,
        )
    if looks_like_labels(array):
        raise KidneysegError(
            f"not CT in HU: looks like a label map (values 0-3); {hint}", path=source
        )
    if array.dtype.kind in "iu" and array.dtype.itemsize == 1:
        raise KidneysegError(
            f"not CT in HU: an 8-bit image ({array.dtype}, values {lo:g}..{hi:g}) cannot hold "
            f"HU (a picture or a mask?); {hint}",
            path=source,
        )
    if lo >= 0 and hi > MAX_HU_WITHOUT_AIR:
        raise KidneysegError(
            f"not CT in HU: values lie in [{lo:g}, {hi:g}] with no air or fat (nothing below "
            "0), which is MR-like signal or CT stored values without their rescale intercept "
            f"(-1024); {hint}",
            path=source,
        )
    if hi - lo < 100:
        raise KidneysegError(
            f"not CT in HU: values span only [{lo:g}, {hi:g}] (a standardised or constant "
            f"image); {hint}",
            path=source,
        )


def volume_info(
    path: str | Path, labels: bool | None = None, series: str | None = None
) -> dict[str, Any]:
    """Geometry and value summary of an image or label map (what ``kidneyseg info`` prints).

    Args:
        path: image file or DICOM series folder.
        labels: True: treat as a label map (error when values are outside 0-3); False: never;
            None: decide with `looks_like_labels`.
        series: DICOM SeriesInstanceUID, for a folder with several series.

    Returns:
        JSON-ready dict: ``path``, ``case_id``, ``shape`` (as stored), ``spacing_mm`` (same
        order), ``origin``, ``direction`` (rows of the 3x3 matrix; column c = LPS direction of
        axis c), ``axcodes``, ``axial_axis`` (index into ``shape``), ``canonical_shape`` and
        ``canonical_spacing_mm`` (z, y, x), ``dtype``, ``hu_min``, ``hu_max``, ``is_label_map``,
        for label maps ``labels`` = {"1": {"name", "voxels", "ml"}, "2": ..., "3": ...}, and
        for DICOM ``dicom`` (series details).

    Raises:
        KidneysegError: the file cannot be read, holds NaN/inf, or (``labels=True``) is not a
            valid label map.

    Example:
        >>> volume_info("kits23/case_00061/segmentation.nii.gz")["axcodes"]  # doctest: +SKIP
        ['I', 'P', 'L']
    """
    volume = read_volume(path, series=series)  # any modality: info describes what it finds
    _check_finite(volume, path)
    arr = volume.array
    is_labels = looks_like_labels(arr) if labels is None else labels
    if is_labels:
        volume = validate_labels(volume, path)
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    as_number = float if np.issubdtype(arr.dtype, np.floating) else int
    info: dict[str, Any] = {
        "path": str(path),
        "case_id": volume.case_id,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "origin": [round(o, 4) for o in volume.origin],
        "direction": [[round(float(v), 6) + 0.0 for v in row] for row in volume.direction_matrix],
        "axcodes": list(volume.axcodes),
        "axial_axis": volume.axial_axis,
        "canonical_shape": list(volume.to_canonical().shape),
        "canonical_spacing_mm": [round(s, 6) for s in volume.canonical_spacing],
        "dtype": str(arr.dtype),
        "hu_min": as_number(lo),
        "hu_max": as_number(hi),
        "is_label_map": bool(is_labels),
    }
    if is_labels:
        ml = volume.voxel_volume_ml
        counts = {k: int(np.count_nonzero(volume.array == k)) for k in range(1, MAX_LABEL + 1)}
        info["labels"] = {
            str(k): {"name": LABEL_NAMES[k], "voxels": n, "ml": round(n * ml, 3)}
            for k, n in counts.items()
        }
    if volume.metadata:
        info["dicom"] = dict(volume.metadata)
    return info
