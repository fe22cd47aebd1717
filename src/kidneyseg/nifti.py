"""Reading NIfTI files so that nothing is silently wrong: what ITK's reader misses, put right.

SimpleITK (2.5) silently gets several things wrong that a CT pipeline must see:

* a **truncated** file (a cut download reads as a valid CT with a black lower part), and a
  ``.nii.gz`` whose **gzip checksum** (CRC-32) fails (a damaged file reads as half garbage):
  `read_nifti` decompresses a ``.nii.gz`` once, in Python, checking its length against the
  header and every gzip member's CRC and size, and takes the voxels from those bytes;
* **NaN and infinite** voxels (read as 0): the voxels come from the file's bytes, not from ITK
  (`restore_nonfinite` puts them back where ITK still reads the voxels: scaled files);
* **geometry** ITK changes without a word: a negative voxel size (pixdim) mirrors the image on
  all three axes, a zero one becomes 1 mm, a sheared affine is orthonormalised.
  `check_nifti_geometry` refuses a header whose voxel sizes are not positive, and a file whose
  geometry as ITK reads it differs from the header's own affine (as nibabel reads it).

The geometry (spacing, origin, direction in LPS) always comes from ITK's header reader, so it
matches every other format. Cost: one decompression of a ``.nii.gz`` (ITK's own read is
skipped); plain ``.nii`` voxels are read with one ``readinto``. Files with scaled values
(scl_slope) or several values per voxel are read by ITK after the checks.

nibabel is imported inside the functions, so importing this module stays cheap.

Example:
    >>> vol = read_nifti(Path("case_00000/imaging.nii.gz"), "case_00000")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.compressed import inflate_checked, truncated_error
from kidneyseg.errors import KidneysegError
from kidneyseg.sitk import Geometry, check_3d_scalar, from_sitk, read_sitk
from kidneyseg.types import Volume

#: Errors that mean the bytes of a file are cut short or damaged.
_CORRUPT = (OSError, EOFError, zlib.error)
#: Geometry agreement between ITK and the header's affine: relative on each axis vector, mm on
#: the origin (float32 affines carry about 7 digits).
_AXIS_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-3
#: RAS (NIfTI) <-> LPS (ITK).
_RAS_LPS = np.diag([-1.0, -1.0, 1.0])


def nifti_header(path: Path) -> Any | None:
    """The file's nibabel header (``Nifti1Header`` / ``Nifti2Header``), or None when the file
    does not start with one (then ITK's reader gives the error).

    Raises:
        KidneysegError: a ``.nii.gz`` that is not gzip data, or a file cut inside its header.
    """
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header

    gz = path.name.lower().endswith(".gz")
    try:
        # Read the first bytes here rather than sniff with nibabel.load: a gzip stream cut
        # inside them must be reported as cut, not handed to ITK (which would zero-fill it).
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            head = f.read(Nifti2Header.sizeof_hdr)
    except gzip.BadGzipFile as exc:
        raise KidneysegError("not an image: a .nii.gz file must be gzip data", path=path) from exc
    except EOFError as exc:
        raise KidneysegError(
            "truncated file: it ends inside its header (an interrupted download or copy?)",
            path=path,
        ) from exc
    except _CORRUPT as exc:
        raise KidneysegError(f"cannot read image (truncated or corrupt): {exc}", path=path) from exc
    try:
        kind = next(k for k in (Nifti1Header, Nifti2Header) if k.may_contain_header(head))
        header = kind(head[: kind.sizeof_hdr], check=False)
        header.get_data_shape(), header.get_data_dtype()
        header.get_slope_inter()  # raises on a nonsensical scaling
    except Exception:  # no NIfTI header, or one nibabel refuses: ITK's reader decides
        return None
    return header


def _data_end(header: Any) -> int:
    """Bytes the header promises: voxel offset + voxel data."""
    shape, dtype = header.get_data_shape(), header.get_data_dtype()
    return int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check_nifti_header(path: Path, header: Any) -> None:
    """Refuse voxel sizes (pixdim) ITK would silently replace: zero, negative, not finite.

    ITK reads a zero voxel size as 1 mm and a negative one as a mirror of the whole image
    (nibabel takes its absolute value instead): either way the geometry would be made up.
    """
    shape = header.get_data_shape()
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)[1 : 1 + min(3, len(shape))]
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise KidneysegError(
            f"voxel size {_fmt(pixdim)} mm in the header (pixdim) is zero or not a number: "
            "the spacing is unknown; fix the header",
            path=path,
        )
    if np.any(pixdim < 0):
        raise KidneysegError(
            f"negative voxel size {_fmt(pixdim)} in the header (pixdim): readers disagree on "
            "the image's orientation (ITK mirrors it, nibabel does not); fix the header",
            path=path,
        )


def _geometry3(reader: Any) -> Geometry:
    """Spacing, origin and direction of the first three axes (of a 3D or 4D reader)."""
    dim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    return (
        tuple(float(v) for v in reader.GetSpacing()[:3]),  # type: ignore[return-value]
        tuple(float(v) for v in reader.GetOrigin()[:3]),
        tuple(tuple(float(v) for v in row) for row in direction),
    )


def check_nifti_geometry(path: Path, header: Any, geometry: Geometry) -> None:
    """Refuse a file whose geometry as ITK reads it differs from the header's own affine.

    ITK replaces an affine it cannot represent (sheared, or with scales that differ from
    pixdim) by an orthonormal one, and only sometimes says so; labels written back in ITK's
    geometry would then not lie where the input did. Only checked when the header has a
    qform or sform (a file with neither has no orientation to disagree with).
    """
    if int(header["sform_code"]) <= 0 and int(header["qform_code"]) <= 0:
        return
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception:  # nibabel cannot make an affine: ITK has already read one
        return
    spacing, origin, direction = geometry
    ndim = min(3, len(header.get_data_shape()))
    itk_axes = _RAS_LPS @ np.asarray(direction) @ np.diag(spacing)
    itk_origin = _RAS_LPS @ np.asarray(origin)
    axes_diff = [
        float(
            np.abs(itk_axes[:, c] - affine[:3, c]).max() / max(np.linalg.norm(affine[:3, c]), 1e-12)
        )
        for c in range(ndim)
    ]
    origin_diff = float(np.abs(itk_origin - affine[:3, 3]).max())
    if max(axes_diff) > _AXIS_RTOL or origin_diff > _ORIGIN_ATOL_MM + 1e-6 * np.abs(origin).max():
        raise KidneysegError(
            "geometry is not exact: the header's affine is "
            f"{'sheared or not orthogonal' if _sheared(affine) else 'not what ITK reads'} "
            f"(axes differ by up to {max(axes_diff):.2%}, origin by {origin_diff:.3g} mm) and "
            "would be changed on reading; resample the image to an orthogonal grid or fix the "
            "header",
            path=path,
        )


def _sheared(affine: np.ndarray) -> bool:
    axes = affine[:3, :3] / np.maximum(np.linalg.norm(affine[:3, :3], axis=0), 1e-12)
    return bool(np.abs(axes.T @ axes - np.eye(3)).max() > _AXIS_RTOL)


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _plain_voxels(header: Any, reader: Any) -> bool:
    """Whether the voxels can be taken straight from the file's bytes (no scaling, 3D or 4D
    with one time point, one value per voxel, the size ITK sees)."""
    dtype, shape = header.get_data_dtype(), header.get_data_shape()
    if dtype.kind not in "iuf" or dtype.fields is not None:
        return False
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or tuple(int(n) for n in reader.GetSize()[:3]) != tuple(shape):
        return False
    if reader.GetDimension() == 4 and reader.GetSize()[3] != 1:
        return False
    if reader.GetNumberOfComponents() != 1:
        return False
    return header.get_slope_inter() in ((None, None), (1.0, 0.0))


def _array_from_bytes(data: bytearray | memoryview, header: Any) -> np.ndarray:
    dtype, shape = header.get_data_dtype(), header.get_data_shape()[:3]
    count = int(np.prod(shape, dtype=np.int64))
    array = np.frombuffer(data, dtype=dtype, count=count, offset=int(header.get_data_offset()))
    array = array.reshape(shape, order="F")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _read_plain(path: Path, end: int) -> bytearray:
    """The first ``end`` bytes of an uncompressed file (its length was checked)."""
    buf = bytearray(end)
    with path.open("rb") as f:
        got = f.readinto(buf)
    if got < end:
        raise truncated_error(path, got, end)
    return buf


def read_nifti(path: Path, case_id: str) -> Volume | None:
    """Read a NIfTI file with the checks of the module doc.

    Returns:
        The volume, or None when the file does not start with a NIfTI header (then read it
        with ITK, whose error names the problem).

    Raises:
        KidneysegError: truncated, failing its gzip check, bad voxel sizes, geometry ITK would
            change, anything ITK reports while reading, not 3D.
    """
    header = nifti_header(path)
    if header is None:
        return None
    end = _data_end(header)
    gz = path.name.lower().endswith(".gz")
    if not gz and path.stat().st_size < end:
        raise truncated_error(path, path.stat().st_size, end)
    data = inflate_checked(path, end) if gz else None
    check_nifti_header(path, header)
    reader = read_sitk(path, header_only=True)
    dim, size = reader.GetDimension(), reader.GetSize()
    if not (dim == 4 and size[3] == 1):  # a trailing singleton 4th axis is read as 3D
        check_3d_scalar(dim, size, reader.GetNumberOfComponents())
    geometry = _geometry3(reader)
    check_nifti_geometry(path, header, geometry)
    if _plain_voxels(header, reader):
        array = _array_from_bytes(data if data is not None else _read_plain(path, end), header)
        return Volume(array, *geometry, case_id=case_id)
    image = read_sitk(path)
    # Squeeze a trailing singleton 4th axis (some tools write 3D as 4D with t=1).
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    check_3d_scalar(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel())
    volume = from_sitk(image, case_id)
    if np.issubdtype(volume.array.dtype, np.floating):
        volume = restore_nonfinite(volume, path, header)
    return volume


def _voxels(path: Path, header: Any, scaled: bool) -> np.ndarray:
    """The file's voxels in (i, j, k) order, read by nibabel (scaled by the header or raw)."""
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.imageglobals import LoggingOutputSuppressor

    # mmap=False: the voxels land in memory, never in a map of a file that a later write
    # could replace or truncate under the caller.
    proxy = ArrayProxy(path, header, mmap=False)
    try:
        with LoggingOutputSuppressor():
            return np.asarray(proxy if scaled else proxy.get_unscaled())
    except _CORRUPT as exc:
        raise KidneysegError(f"cannot read image (truncated or corrupt): {exc}", path=path) from exc


def restore_nonfinite(volume: Volume, path: Path, header: Any) -> Volume:
    """Put back the NaN/inf voxels that ITK's NIfTI reader turned into 0.

    Args:
        volume: what ITK read from ``path`` (float voxels).
        path: the file; its voxels are read a second time here, by nibabel.
        header: its nibabel header, from `nifti_header`.

    Returns:
        ``volume``, with the file's non-finite values where it has them.
    """
    if header.get_data_dtype().kind != "f":
        return volume  # integers cannot hold NaN
    data = _voxels(path, header, scaled=True)
    if data.shape[:3] != volume.shape or data.size != volume.array.size:
        return volume
    data = data.reshape(volume.shape)  # drops a trailing singleton 4th axis
    bad = ~np.isfinite(data)
    if not bad.any():
        return volume
    array = volume.array.astype(np.promote_types(volume.array.dtype, np.float32))
    array[bad] = data[bad]
    return volume.with_array(array)
