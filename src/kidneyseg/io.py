"""Reading and writing images and label maps with their geometry.

The only module that knows file formats and orientation. Readers return a `Volume` (array in the
file's index order + spacing, origin, direction); writers put a `Volume` back in exactly that
geometry. Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) files, and DICOM series folders (via SimpleITK/GDCM, JPEG 2000 included).

Example:
    >>> vol = read_volume("case_00000/imaging.nii.gz")  # doctest: +SKIP
    >>> vol.axial_axis, vol.axcodes  # doctest: +SKIP
    (0, ('I', 'P', 'L'))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.types import MAX_LABEL, Volume

#: File endings read as single image files.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: Path) -> bool:
    """True when ``path``'s name ends with a supported image-file suffix."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def case_id_from_path(path: str | Path) -> str:
    """A case name from a path: the file name without its image suffix, or the folder name."""
    p = Path(path)
    name = p.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _from_sitk(image: object, case_id: str) -> Volume:
    import SimpleITK as sitk

    assert isinstance(image, sitk.Image)
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, found {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()} "
            "(a 4D, vector or colour image)"
        )
    # GetArrayFromImage is (k, j, i); transpose to the file's (i, j, k) index order.
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(tuple(float(v) for v in row) for row in direction),
        case_id=case_id,
    )


def to_sitk(volume: Volume) -> object:
    """A SimpleITK image with ``volume``'s voxels and exact geometry."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(v) for v in volume.direction_matrix.ravel()])
    return image


def read_volume(path: str | Path) -> Volume:
    """Read an image file or a DICOM series folder into a `Volume`.

    Raises:
        KidneysegError: missing file, unreadable/truncated file, not 3D, ... (names the file).
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise KidneysegError("no such file or folder", path=p)
    if p.is_dir():
        from kidneyseg.dicom import read_dicom_series

        return read_dicom_series(p)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        hint = next((d for d in detail if "ERROR" in d or "error" in d), detail[-1] if detail else "")
        raise KidneysegError(
            f"cannot read image (truncated, corrupt or not an image): {hint.strip()[:200]}",
            path=p,
        ) from exc
    try:
        # Squeeze a trailing singleton 4th axis (some tools write 3D as 4D with t=1).
        if image.GetDimension() == 4 and image.GetSize()[3] == 1:
            image = image[:, :, :, 0]
        return _from_sitk(image, case_id_from_path(p))
    except ValueError as exc:
        raise KidneysegError(str(exc), path=p) from exc


def read_image(path: str | Path) -> Volume:
    """Read a CT image and check its values are finite (HU)."""
    volume = read_volume(path)
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise KidneysegError("image contains NaN or infinite values", path=path)
    return volume


def read_labels(path: str | Path, like: Volume | None = None) -> Volume:
    """Read a label map (ids 0-3) as uint8; with ``like``, check it matches that image's grid."""
    volume = read_volume(path)
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise KidneysegError("label map contains NaN or infinite values", path=path)
        if not np.array_equal(arr, np.round(arr)):
            raise KidneysegError("label map has non-integer values", path=path)
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if lo < 0 or hi > MAX_LABEL:
        found = sorted(int(v) for v in np.unique(arr) if v < 0 or v > MAX_LABEL)[:5]
        raise KidneysegError(f"labels outside 0-{MAX_LABEL} (found {found})", path=path)
    volume = volume.with_array(arr.astype(np.uint8, copy=False))
    if like is not None:
        check_same_geometry(like, volume, path)
    return volume


def check_same_geometry(reference: Volume, other: Volume, path: str | Path) -> None:
    """Raise a clear error when ``other`` (read from ``path``) is not on ``reference``'s grid."""
    if reference.shape != other.shape:
        raise KidneysegError(
            f"shape {other.shape} differs from its image's {reference.shape}", path=path
        )
    if not reference.same_geometry(other):
        raise KidneysegError(
            "geometry (spacing/origin/direction) differs from its image's: "
            f"spacing {other.spacing} vs {reference.spacing}, origin {other.origin} vs "
            f"{reference.origin}",
            path=path,
        )


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` in its exact geometry, atomically (temp file + rename).

    The format follows the suffix (``.nii.gz``, ``.nrrd``, ``.mha``, ...).
    """
    import SimpleITK as sitk

    from kidneyseg.utils import atomic_path

    p = Path(path)
    if not is_image_file(p):
        raise KidneysegError(f"unsupported output format; use one of {IMAGE_SUFFIXES}", path=p)
    try:
        with atomic_path(p) as tmp:
            sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=True)
    except (OSError, RuntimeError) as exc:
        raise KidneysegError(f"cannot write: {exc}".splitlines()[0], path=p) from exc
    return p
