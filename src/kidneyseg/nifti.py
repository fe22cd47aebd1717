"""What ITK's NIfTI reader gets wrong, put right with nibabel.

SimpleITK (2.5) silently zero-fills two things a CT pipeline must see:

* a **truncated** file (a cut download reads as a valid CT with a black lower part):
  `check_nifti` compares the file's length with what its header promises;
* **NaN and infinite** voxels (read as 0): `read_float_nifti` reads the voxels of a float file
  with nibabel instead (the geometry still comes from ITK, so it matches every other format),
  and `restore_nonfinite` puts them back where that fast path does not apply.

Cost: the header is ~350 bytes. A complete ``.nii.gz`` is recognised from gzip's 4-byte size
trailer; only when the trailer disagrees (a cut file, or a multi-member gzip) is the stream
decompressed to count its bytes. Integer files (most CT and every label map) are read once, by
ITK. Float files are read once too, by nibabel, unless their values are scaled or they are 4D:
then ITK reads them and nibabel reads them a second time.

nibabel is imported inside the functions, so importing this module stays cheap.

Example:
    >>> header = check_nifti(Path("case_00000/imaging.nii.gz"))  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.sitk import check_3d_scalar, read_sitk, sitk_geometry
from kidneyseg.types import Volume

#: Errors that mean the bytes of a file are cut short or damaged.
_CORRUPT = (OSError, EOFError, zlib.error)


def check_nifti(path: Path) -> Any | None:
    """Raise when a NIfTI file holds fewer bytes than its header promises.

    Returns:
        The file's nibabel header (``Nifti1Header`` / ``Nifti2Header``), or None when the
        file does not start with one (then ITK's reader gives the error).

    Raises:
        KidneysegError: a ``.nii.gz`` that is not gzip data, a truncated or unreadable file.

    Example:
        >>> check_nifti(Path("cut.nii.gz"))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        kidneyseg.errors.KidneysegError: cut.nii.gz: truncated file: holds 1200 of the ...
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
    except _CORRUPT as exc:
        raise KidneysegError(f"cannot read image (truncated or corrupt): {exc}", path=path) from exc
    try:
        kind = next(k for k in (Nifti1Header, Nifti2Header) if k.may_contain_header(head))
        header = kind(head[: kind.sizeof_hdr], check=False)
        shape, dtype = header.get_data_shape(), header.get_data_dtype()
        header.get_slope_inter()  # raises on a nonsensical scaling
    except Exception:  # no NIfTI header, or one nibabel refuses: ITK's reader decides
        return None
    end = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = _gzip_size(path, end) if gz else path.stat().st_size
    if actual < end:
        raise KidneysegError(
            f"truncated file: holds {actual} of the {end} bytes its header promises "
            "(an interrupted download or copy?)",
            path=path,
        )
    return header


def _gzip_size(path: Path, expected: int) -> int:
    """Uncompressed size of a gzip file, at least as far as ``expected`` needs to know.

    gzip's trailer stores the uncompressed size mod 2**32; a cut file's last four bytes are
    arbitrary, so a match means complete. Otherwise decompress and count (less than
    ``expected`` when the stream is cut short or corrupt).
    """
    with path.open("rb") as f:
        f.seek(-4, 2)
        if int.from_bytes(f.read(4), "little") == expected % 2**32:
            return expected
    actual = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                actual += len(chunk)
    except _CORRUPT:
        actual = min(actual, expected - 1)
    return actual


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


def read_float_nifti(path: Path, header: Any, case_id: str) -> Volume | None:
    """Read an unscaled 3D float NIfTI with nibabel's voxels (NaN/inf kept) and ITK's geometry.

    Args:
        path: the file.
        header: its nibabel header, from `check_nifti`.
        case_id: the volume's case id.

    Returns:
        The volume, or None when the file is not that simple case (integer, scaled, not 3D
        with one value per voxel): then read it with ITK and `restore_nonfinite`.

    Raises:
        KidneysegError: ITK cannot read the header, or the voxel data is corrupt.
    """
    dtype, shape = header.get_data_dtype(), header.get_data_shape()
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or len(shape) != 3:
        return None
    if header.get_slope_inter() not in ((None, None), (1.0, 0.0)):
        return None
    reader = read_sitk(path, header_only=True)
    try:
        check_3d_scalar(reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
    except ValueError:
        return None  # ITK sees another layout: the full read reports it
    if tuple(reader.GetSize()) != tuple(shape):
        return None
    array = _voxels(path, header, scaled=False)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    spacing, origin, direction = sitk_geometry(reader)
    return Volume(array, spacing, origin, direction, case_id)


def restore_nonfinite(volume: Volume, path: Path, header: Any) -> Volume:
    """Put back the NaN/inf voxels that ITK's NIfTI reader turned into 0.

    Args:
        volume: what ITK read from ``path`` (float voxels).
        path: the file; its voxels are read a second time here, by nibabel.
        header: its nibabel header, from `check_nifti`.

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
