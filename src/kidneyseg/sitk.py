"""The SimpleITK bridge: images <-> `Volume`, quiet reads, readable error lines.

Shared by `kidneyseg.io`, `kidneyseg.nifti` and `kidneyseg.dicom`. SimpleITK itself is imported
inside each function, so importing this module stays cheap (``kidneyseg --help`` is instant).

Example:
    >>> vol = Volume(np.zeros((4, 5, 6), np.int16), (0.8, 0.8, 3.0))
    >>> from_sitk(to_sitk(vol), "x").shape  # doctest: +SKIP
    (4, 5, 6)
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.types import Volume, file_order

#: Spacing (mm), origin (mm, LPS) and direction rows, as `Volume` holds them.
Geometry = tuple[
    tuple[float, float, float], tuple[float, float, float], tuple[tuple[float, ...], ...]
]


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
    """The informative line of a SimpleITK exception (without the C++ file/line noise).

    Example:
        >>> sitk_error_detail(RuntimeError("/src/itk.cxx:12:\\nsitk::ERROR: Unable to open"))
        'Unable to open'
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = []
    for line in lines:
        if line.startswith("Exception thrown in SimpleITK") or re.match(r"^/\S+:\d+:?$", line):
            continue
        line = re.sub(r"^(sitk::ERROR|ITK ERROR):\s*", "", line)
        line = re.sub(r"^\w+\s?\(0x[0-9a-fA-F]+\):\s*", "", line)
        useful.append(line)
    return (useful[0] if useful else "unknown error")[:200]


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what C/C++ code prints on file descriptor 2 inside the block.

    ITK and its IO libraries report some failures only as text on stderr and then return
    normally: MetaIO's "Uncompress failed" (the voxels read as zeros), niftilib's "wrote only
    N of M bytes" (a full disk), ITK warnings. The yielded list receives that text, one entry
    per non-empty line, when the block ends. File descriptor 2 belongs to the whole process,
    so use this only around short library calls, never around code that prints progress.

    Example:
        >>> with captured_stderr() as lines:  # doctest: +SKIP
        ...     image = sitk.ReadImage("ct.mha")
        >>> lines  # doctest: +SKIP
        ['Uncompress failed']
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters)
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _reported_problem(lines: list[str]) -> str:
    """The informative line of what ITK printed (skipping "WARNING: In /src/file.cxx")."""
    useful = [line for line in lines if not re.match(r"^(WARNING|ERROR): In /", line)]
    return sitk_error_detail(RuntimeError("\n".join(useful or lines)))


def read_sitk(path: Path, header_only: bool = False) -> Any:
    """Read an image file quietly: the `SimpleITK.Image`, or with ``header_only`` the reader.

    The reader (``ImageFileReader`` after ``ReadImageInformation``) answers the same geometry
    questions as the image (``GetSize``, ``GetSpacing``, ``GetDirection``, ...) without
    reading the voxels.

    Anything ITK prints while reading counts as a failure: its readers report some damage
    only as a message and return normally (a damaged compressed MetaImage prints "Uncompress
    failed" and reads as zeros; a NIfTI sform ITK cannot use prints a warning and is replaced).

    Raises:
        KidneysegError: the file cannot be read, or ITK reported a problem while reading it
            (names the file and ITK's reason).
    """
    import SimpleITK as sitk

    display = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(True)
    try:
        with captured_stderr() as printed:
            result: Any
            if header_only:
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
                result = reader
            else:
                result = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise KidneysegError(
            f"cannot read image (truncated, corrupt or not an image): {sitk_error_detail(exc)}",
            path=path,
        ) from exc
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(display)
    if printed:
        raise KidneysegError(
            f"cannot read image: the reader reported a problem: {_reported_problem(printed)}",
            path=path,
        )
    return result


def sitk_geometry(source: Any) -> Geometry:
    """Spacing, origin and 3x3 direction (rows) of a 3D SimpleITK image or file reader."""
    direction = np.asarray(source.GetDirection(), dtype=np.float64).reshape(3, 3)
    return (
        tuple(float(s) for s in source.GetSpacing()),  # type: ignore[return-value]
        tuple(float(o) for o in source.GetOrigin()),
        tuple(tuple(float(v) for v in row) for row in direction),
    )


def check_3d_scalar(dimension: int, size: tuple[int, ...], components: int) -> None:
    """Raise ValueError unless the image is 3D with one value per voxel.

    Example:
        >>> check_3d_scalar(2, (5, 6), 1)
        Traceback (most recent call last):
        ...
        ValueError: expected a 3D image, found a 2D one of size (5, 6)
    """
    if dimension != 3:
        raise ValueError(f"expected a 3D image, found a {dimension}D one of size {size}")
    if components != 1:
        raise ValueError(
            f"expected one value per voxel, found {components} "
            "(a 4D time series, vector or colour image); extract one 3D volume first"
        )


def from_sitk(image: Any, case_id: str) -> Volume:
    """A `Volume` from a 3D scalar SimpleITK image (array in the image's (i, j, k) order).

    Raises:
        ValueError: the image is not 3D or has several values per voxel.

    Example:
        >>> vol = from_sitk(sitk.ReadImage("ct.nii.gz"), "ct")  # doctest: +SKIP
    """
    import SimpleITK as sitk

    assert isinstance(image, sitk.Image)
    check_3d_scalar(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel())
    # GetArrayFromImage is (k, j, i); transpose to the file's (i, j, k) index order.
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    spacing, origin, direction = sitk_geometry(image)
    return Volume(array, spacing, origin, direction, case_id)


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
    image = sitk.GetImageFromArray(np.ascontiguousarray(file_order(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(v) for v in volume.direction_matrix.ravel()])
    return image
