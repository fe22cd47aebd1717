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
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.types import Volume

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
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        useful.append(line)
    return (useful[0] if useful else "unknown error")[:200]


def read_sitk(path: Path, header_only: bool = False) -> Any:
    """Read an image file quietly: the `SimpleITK.Image`, or with ``header_only`` the reader.

    The reader (``ImageFileReader`` after ``ReadImageInformation``) answers the same geometry
    questions as the image (``GetSize``, ``GetSpacing``, ``GetDirection``, ...) without
    reading the voxels.

    Raises:
        KidneysegError: the file cannot be read (names the file and ITK's reason).
    """
    import SimpleITK as sitk

    try:
        with quiet_sitk():
            if not header_only:
                return sitk.ReadImage(str(path))
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return reader
    except RuntimeError as exc:
        raise KidneysegError(
            f"cannot read image (truncated, corrupt or not an image): {sitk_error_detail(exc)}",
            path=path,
        ) from exc


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
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(v) for v in volume.direction_matrix.ravel()])
    return image
