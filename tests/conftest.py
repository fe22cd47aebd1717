"""Shared fixtures: a tiny phantom CT + label map, written as NIfTI and as a DICOM series.

The phantom is small (24 x 20 x 9), with uneven spacing, a non-identity direction and a non-zero
origin, so code that assumes axis order, isotropy or an identity affine fails on it.

Phantom layout (index order (i, j, k), direction = diag(-1, -1, 1), i.e. axcodes R,A,S): body
ellipse of soft tissue in air, a right kidney (label 1) at high i with a tumor (label 2) inside,
and a left kidney (label 1) at low i with a cyst (label 3) inside.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import pytest

from kidneyseg.types import Volume

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

PHANTOM_SHAPE = (24, 20, 9)
PHANTOM_SPACING = (0.8, 0.7, 2.5)
PHANTOM_ORIGIN = (30.5, 12.25, -101.0)
PHANTOM_DIRECTION = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))


class Phantom(NamedTuple):
    """A phantom CT (int16 HU) and its label map (uint8) on the same grid."""

    image: Volume
    labels: Volume


class PhantomFiles(NamedTuple):
    """Paths of a written phantom, and the volumes that were written."""

    image: Path
    labels: Path
    phantom: Phantom


def make_phantom(shape: tuple[int, int, int] = PHANTOM_SHAPE, seed: int = 0) -> Phantom:
    """Build the phantom (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = shape
    i, j = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
    body = ((i - (ni - 1) / 2) / (ni * 0.45)) ** 2 + ((j - (nj - 1) / 2) / (nj * 0.45)) ** 2 <= 1
    hu = np.where(body[..., None], 40, -1000) + rng.normal(0, 8, (ni, nj, nk))
    labels = np.zeros(shape, np.uint8)
    k0, k1 = max(0, nk // 2 - 3), min(nk, nk // 2 + 3)
    right = (slice(ni - 9, ni - 3), slice(nj // 2, nj // 2 + 6), slice(k0, k1))
    left = (slice(3, 9), slice(nj // 2, nj // 2 + 6), slice(k0, k1))
    labels[right] = 1
    labels[left] = 1
    labels[ni - 7 : ni - 5, nj // 2 + 1 : nj // 2 + 4, k0 : k0 + max(1, (k1 - k0) // 2)] = 2
    labels[5:7, nj // 2 + 2 : nj // 2 + 5, k0 : k0 + 1] = 3
    hu[labels == 1] = 160 + rng.normal(0, 8, int((labels == 1).sum()))
    hu[labels == 2] = 90
    hu[labels == 3] = 5
    geometry = dict(spacing=PHANTOM_SPACING, origin=PHANTOM_ORIGIN, direction=PHANTOM_DIRECTION)
    image = Volume(np.round(hu).astype(np.int16), case_id="phantom", **geometry)  # type: ignore[arg-type]
    return Phantom(image, image.with_array(labels))


def write_dicom_series(
    volume: Volume,
    folder: Path,
    *,
    series_uid: str | None = None,
    description: str = "phantom CT",
    modality: str = "CT",
    blank_uids: bool = False,
    name_prefix: str = "",
) -> Path:
    """Write ``volume`` (slices along index axis 2) as a DICOM series with pydicom.

    Pixel values are stored as uint16 with a negative RescaleIntercept (-1024, or lower for
    values below -1024), so a reader must apply the rescale to get HU back. File names are in
    reverse spatial order, so a reader that sorts by name instead of position gets the slices
    backwards.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    d = volume.direction_matrix
    uid = "" if blank_uids else (series_uid or generate_uid())
    study, frame = ("", "") if blank_uids else (generate_uid(), generate_uid())
    n = volume.shape[2]
    intercept = min(-1024, int(volume.array.min()))
    if int(volume.array.max()) - intercept > 65535:
        raise ValueError("values span more than 16 bits")
    for k in range(n):
        sop = "" if blank_uids else generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop or generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.FrameOfReferenceUID = frame
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        position = np.asarray(volume.origin) + d[:, 2] * volume.spacing[2] * k
        ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*d[:, 0], *d[:, 1])]
        # PixelSpacing is (between rows, between columns) = (spacing j, spacing i).
        ds.PixelSpacing = [f"{volume.spacing[1]:.6g}", f"{volume.spacing[0]:.6g}"]
        ds.SliceThickness = "3"  # deliberately not the real spacing
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = str(intercept), "1"
        stored = (volume.array[:, :, k].astype(np.int32) - intercept).T  # DICOM rows = index j
        ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
        ds.save_as(folder / f"{name_prefix}img{n - 1 - k:04d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def phantom_volume() -> Phantom:
    """The phantom CT and its label map (`Phantom(image, labels)`)."""
    return make_phantom()


@pytest.fixture
def phantom_nifti(tmp_path: Path, phantom_volume: Phantom) -> PhantomFiles:
    """The phantom written as ``imaging.nii.gz`` + ``segmentation.nii.gz`` in a case folder."""
    from kidneyseg.io import write_volume

    case = tmp_path / "case_00000"
    image = write_volume(phantom_volume.image, case / "imaging.nii.gz")
    labels = write_volume(phantom_volume.labels, case / "segmentation.nii.gz")
    return PhantomFiles(image, labels, phantom_volume)


@pytest.fixture
def phantom_dicom_series(tmp_path: Path, phantom_volume: Phantom) -> Path:
    """Folder holding the phantom CT as a DICOM series (one file per slice)."""
    return write_dicom_series(phantom_volume.image, tmp_path / "phantom_dicom")


@pytest.fixture
def dicom_writer() -> Callable[..., Path]:
    """`write_dicom_series(volume, folder, **options)`, for tests that need custom series."""
    return write_dicom_series


@pytest.fixture(params=["installed", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run a test twice: with the inflater `kidneyseg.compressed` chose (ISA-L's where the
    ``fast`` extra is installed) and with the standard library's zlib (its fallback)."""
    from kidneyseg import compressed

    if request.param == "zlib":
        monkeypatch.setattr(compressed, "INFLATE", zlib)
    return compressed.INFLATE


@pytest.fixture
def shared_data() -> Path:
    """``<repo>/../shared/data`` with the real test files; skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA
