"""Reading and writing images and label maps with their geometry.

The only module that knows file formats and orientation. Readers return a `Volume` (array in the
file's index order + spacing, origin, direction); writers put a `Volume` back in exactly that
geometry. Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) files, single DICOM files, and DICOM series folders (`kidneyseg.dicom`,
JPEG 2000 included). Writing supports the single-file formats (``.nii.gz``, ``.nii``, ``.nrrd``,
``.mha``).

Nothing here assumes an axis order: KiTS stores the axial axis first (axcodes I,P,L),
TotalSegmentator and DICOM store it last (R,A,S and L,P,S); `Volume.axial_axis` and
`Volume.to_canonical` sort that out from the direction cosines.

Example:
    >>> vol = read_volume("case_00000/imaging.nii.gz")  # doctest: +SKIP
    >>> vol.axial_axis, vol.axcodes  # doctest: +SKIP
    (0, ('I', 'P', 'L'))
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.types import LABEL_NAMES, MAX_LABEL, Volume

#: File endings read as single image files.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: File endings `write_volume` writes: single-file formats only, so the write can be atomic
#: (``.nhdr``/``.mhd`` put the voxels in a second file that a rename would not carry along).
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: File endings read as a single DICOM file.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def is_image_file(path: Path) -> bool:
    """True when ``path``'s name ends with a supported image-file suffix.

    Example:
        >>> is_image_file(Path("case_1/imaging.nii.gz")), is_image_file(Path("notes.txt"))
        (True, False)
    """
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def case_id_from_path(path: str | Path) -> str:
    """A case name from a path: the file name without its image suffix, or the folder name.

    Example:
        >>> case_id_from_path("preds/case_00007.nii.gz")
        'case_00007'
    """
    p = Path(path)
    name = p.name
    for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextlib.contextmanager
def quiet_sitk() -> Iterator[None]:
    """Silence ITK/GDCM warnings (printed straight to stderr) inside the block.

    Errors still raise; only the warning chatter (e.g. "non uniform sampling") is hidden, because
    this package checks what matters itself and reports it as one clear message.

    Example:
        >>> with quiet_sitk():  # doctest: +SKIP
        ...     image = sitk.ReadImage("ct.nii.gz")
    """
    import SimpleITK as sitk

    previous = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(previous)


def sitk_error_detail(exc: BaseException) -> str:
    """The informative line of a SimpleITK exception (without the C++ file/line noise)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = []
    for line in lines:
        if line.startswith("Exception thrown in SimpleITK") or re.match(r"^/\S+:\d+:?$", line):
            continue
        line = re.sub(r"^(sitk::ERROR|ITK ERROR):\s*", "", line)
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        useful.append(line)
    return (useful[0] if useful else "unknown error")[:200]


def from_sitk(image: Any, case_id: str) -> Volume:
    """A `Volume` from a 3D scalar SimpleITK image (array in the image's (i, j, k) order).

    Raises:
        ValueError: the image is not 3D or has several values per voxel.
    """
    import SimpleITK as sitk

    assert isinstance(image, sitk.Image)
    if image.GetDimension() != 3:
        raise ValueError(
            f"expected a 3D image, found a {image.GetDimension()}D one of size {image.GetSize()}"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()} "
            "(a 4D time series, vector or colour image); extract one 3D volume first"
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


def to_sitk(volume: Volume) -> Any:
    """A SimpleITK image with ``volume``'s voxels and exact geometry.

    Types SimpleITK cannot hold are widened losslessly (bool -> uint8, float16 -> float32).

    Example:
        >>> vol = Volume(np.zeros((4, 5, 6), np.int16), (0.8, 0.8, 3.0))
        >>> image = to_sitk(vol)  # doctest: +SKIP
        >>> image.GetSize()  # doctest: +SKIP
        (4, 5, 6)
    """
    import SimpleITK as sitk

    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(v) for v in volume.direction_matrix.ravel()])
    return image


class _NiftiHeader(NamedTuple):
    endian: str
    dims: tuple[int, ...]  # sizes of the used axes, e.g. (i, j, k)
    datatype: int
    bitpix: int
    vox_offset: int
    slope: float
    inter: float

    @property
    def data_end(self) -> int:
        """Byte offset where the voxel data ends."""
        count = int(np.prod([max(d, 1) for d in self.dims], dtype=np.int64))
        return self.vox_offset + count * self.bitpix // 8


#: NIfTI float datatype codes -> numpy type (the only types that can hold NaN/inf).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _parse_nifti_header(header: bytes) -> _NiftiHeader | None:
    """The fields this module needs from a NIfTI-1/2 header (None: not a NIfTI header)."""
    for endian in "<>":
        if len(header) < 348:
            return None
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348:
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            dims = struct.unpack(endian + "8h", header[40:56])
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            slope, inter = struct.unpack(endian + "2f", header[112:120])
            break
        if size == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", header[176:192])
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    used = tuple(int(d) for d in dims[1 : dims[0] + 1])
    return _NiftiHeader(endian, used, datatype, bitpix, vox_offset, slope, inter)


def _open_nifti(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _check_nifti_complete(path: Path) -> _NiftiHeader | None:
    """Raise when a NIfTI file holds fewer bytes than its header promises; return the header.

    ITK's NIfTI reader silently zero-fills a truncated file (a cut download would otherwise
    read as a valid CT with a black lower part), so the length is checked here.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        with _open_nifti(path) as f:
            header = _parse_nifti_header(f.read(540))
    except gzip.BadGzipFile as exc:
        raise KidneysegError("not an image: a .nii.gz file must be gzip data", path=path) from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise KidneysegError(f"cannot read image (truncated or corrupt): {exc}", path=path) from exc
    if header is None:
        return None  # not a NIfTI header: ITK gives the error
    end = header.data_end
    if not gz:
        actual = path.stat().st_size
    else:
        # Fast path: gzip's trailer stores the uncompressed size mod 2**32; a cut file's last
        # four bytes are arbitrary, so a match means complete. Otherwise decompress and count.
        with path.open("rb") as f:
            f.seek(-4, 2)
            if struct.unpack("<I", f.read(4))[0] == end % 2**32:
                return header
        actual = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    actual += len(chunk)
        except (OSError, EOFError, zlib.error):
            actual = min(actual, end - 1)
    if actual < end:
        raise KidneysegError(
            f"truncated file: holds {actual} of the {end} bytes its header promises "
            "(an interrupted download or copy?)",
            path=path,
        )
    return header


def _restore_nonfinite(path: Path, header: _NiftiHeader, volume: Volume) -> Volume:
    """Put back the NaN/inf voxels that ITK's NIfTI reader silently turns into 0.

    ``Volume.array`` must say what the file holds, so that `read_image` can refuse it.
    """
    code = _NIFTI_FLOATS.get(header.datatype)
    if code is None or len(header.dims) < 3 or tuple(header.dims[:3]) != volume.shape:
        return volume
    n = int(np.prod(volume.shape))
    with _open_nifti(path) as f:
        f.seek(header.vox_offset)
        raw = np.frombuffer(f.read(n * np.dtype(code).itemsize), dtype=header.endian + code)
    # NIfTI stores the first index fastest: Fortran order gives the (i, j, k) array.
    raw = raw.reshape(volume.shape, order="F")
    bad = ~np.isfinite(raw)
    if not bad.any():
        return volume
    slope = header.slope if header.slope and np.isfinite(header.slope) else 1.0
    array = volume.array.astype(np.promote_types(volume.array.dtype, np.float32))
    array[bad] = raw[bad] * slope
    return volume.with_array(array)


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
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise KidneysegError("no such file or folder", path=p)
    if p.is_dir() or _is_dicom_file(p):
        from kidneyseg.dicom import read_dicom_series

        return read_dicom_series(p, series=series)
    if not is_image_file(p):
        raise KidneysegError(
            f"not a supported image file; use one of {', '.join(IMAGE_SUFFIXES)}, a DICOM file, "
            "or a DICOM series folder",
            path=p,
        )
    nifti = _check_nifti_complete(p) if p.name.lower().endswith((".nii", ".nii.gz")) else None
    try:
        with quiet_sitk():
            image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise KidneysegError(
            f"cannot read image (truncated, corrupt or not an image): {sitk_error_detail(exc)}",
            path=p,
        ) from exc
    try:
        # Squeeze a trailing singleton 4th axis (some tools write 3D as 4D with t=1).
        if image.GetDimension() == 4 and image.GetSize()[3] == 1:
            image = image[:, :, :, 0]
        volume = from_sitk(image, case_id_from_path(p))
    except ValueError as exc:
        raise KidneysegError(str(exc), path=p) from exc
    if nifti is not None and np.issubdtype(volume.array.dtype, np.floating):
        volume = _restore_nonfinite(p, nifti, volume)
    return volume


def read_image(path: str | Path, series: str | None = None) -> Volume:
    """Read a CT image (`read_volume`) and check its values are finite (HU).

    Raises:
        KidneysegError: as `read_volume`, or the image holds NaN or infinite values.

    Example:
        >>> ct = read_image("case_00000/imaging.nii.gz")  # doctest: +SKIP
    """
    volume = read_volume(path, series=series)
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise KidneysegError(f"image contains {bad} NaN or infinite values", path=path)
    return volume


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


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` in its exact geometry, atomically (temp file + rename).

    The format follows the suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``); NRRD and
    MetaImage are gzip-compressed. On failure nothing is left at ``path``.

    Raises:
        KidneysegError: unsupported suffix, or the file cannot be written.

    Example:
        >>> write_volume(prediction, "preds/case_00000.nii.gz")  # doctest: +SKIP
    """
    import SimpleITK as sitk

    from kidneyseg.utils import atomic_path

    p = Path(path)
    if not p.name.lower().endswith(WRITE_SUFFIXES):
        raise KidneysegError(
            f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}", path=p
        )
    try:
        with atomic_path(p) as tmp, quiet_sitk():
            sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=True)
    except (OSError, RuntimeError) as exc:
        detail = sitk_error_detail(exc) if isinstance(exc, RuntimeError) else str(exc)
        raise KidneysegError(f"cannot write: {detail}", path=p) from exc
    return p


def looks_like_labels(array: np.ndarray) -> bool:
    """The rule `volume_info` uses to call an image a label map.

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
    volume = read_image(path, series=series)
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
