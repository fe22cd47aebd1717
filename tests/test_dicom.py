"""Tests of `kidneyseg.dicom`: series choice, slice order, spacing from positions, HU values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kidneyseg.dicom import find_dicom_series, read_dicom_series
from kidneyseg.errors import KidneysegError
from kidneyseg.io import read_volume
from kidneyseg.types import Volume


def test_phantom_series_round_trip(phantom_dicom_series: Path, phantom_volume) -> None:
    ct = read_volume(phantom_dicom_series)
    ref = phantom_volume.image
    # Files are named in reverse spatial order: equality proves sorting by position.
    np.testing.assert_array_equal(ct.array, ref.array)  # HU: rescale intercept applied
    assert ct.same_geometry(ref), (ct.spacing, ct.origin, ct.direction)
    assert ct.spacing[2] == pytest.approx(2.5)  # from positions, not the SliceThickness tag (3)
    assert ct.axcodes == ("R", "A", "S") and ct.axial_axis == 2
    np.testing.assert_array_equal(ct.to_canonical(), ref.to_canonical())
    assert ct.metadata["modality"] == "CT" and ct.metadata["files"] == "9"


def test_blank_uids(tmp_path: Path, phantom_volume, dicom_writer) -> None:
    folder = dicom_writer(phantom_volume.image, tmp_path / "blank", blank_uids=True)
    ct = read_dicom_series(folder)
    np.testing.assert_array_equal(ct.array, phantom_volume.image.array)
    assert ct.metadata["series_uid"] == ""


def test_one_slice_series(tmp_path: Path, phantom_volume, dicom_writer) -> None:
    img = phantom_volume.image
    one = Volume(img.array[:, :, 3:4].copy(), img.spacing, img.origin, img.direction)
    ct = read_dicom_series(dicom_writer(one, tmp_path / "one"))
    assert ct.shape == (24, 20, 1)
    assert ct.spacing[2] == pytest.approx(3.0)  # no positions to measure: SliceThickness
    np.testing.assert_array_equal(ct.array, one.array)
    # A single DICOM file given directly reads the same way.
    single = read_volume(next((tmp_path / "one").iterdir()))
    np.testing.assert_array_equal(single.array, one.array)
    assert single.spacing == pytest.approx(ct.spacing)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(KidneysegError, match="folder is empty") as err:
        read_volume(tmp_path / "empty")
    assert "empty" in str(err.value) and "\n" not in str(err.value)


def test_folder_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.dcm.bak").write_bytes(b"\0" * 200)
    with pytest.raises(KidneysegError, match="no DICOM files"):
        read_volume(folder)


def test_two_series_listed_with_how_to_choose(tmp_path: Path, phantom_volume, dicom_writer):
    folder = tmp_path / "mixed"
    dicom_writer(phantom_volume.image, folder, series_uid="1.2.3.4", description="venous")
    shifted = phantom_volume.image.with_array(phantom_volume.image.array + 7)
    dicom_writer(shifted, folder, series_uid="1.2.3.5", description="arterial", name_prefix="b")
    with pytest.raises(KidneysegError) as err:
        read_volume(folder)
    msg = str(err.value)
    assert "2 image series" in msg and "mixed" in msg and "\n" not in msg
    for part in ("1.2.3.4", "1.2.3.5", "'venous'", "'arterial'", "9 files", "--series"):
        assert part in msg
    chosen = read_volume(folder, series="1.2.3.5")
    np.testing.assert_array_equal(chosen.array, shifted.array)
    assert {s.uid for s in find_dicom_series(folder)} == {"1.2.3.4", "1.2.3.5"}
    with pytest.raises(KidneysegError, match="no series with UID 9.9"):
        read_volume(folder, series="9.9")


def test_series_subfolders_and_non_ct_ignored(tmp_path: Path, phantom_volume, dicom_writer):
    root = tmp_path / "study"
    dicom_writer(phantom_volume.image, root / "ct", description="ct")
    mr = phantom_volume.image.with_array(phantom_volume.image.array + 1)
    dicom_writer(mr, root / "mr", modality="MR", description="mr")
    # With one CT series and one MR series, the CT is chosen; the subfolder reads alone too.
    np.testing.assert_array_equal(read_volume(root).array, phantom_volume.image.array)
    np.testing.assert_array_equal(read_volume(root / "mr").array, mr.array)


def test_missing_slice_and_duplicate_positions(tmp_path: Path, phantom_volume, dicom_writer):
    folder = dicom_writer(phantom_volume.image, tmp_path / "gap")
    files = sorted(folder.iterdir())
    files[4].unlink()
    with pytest.raises(KidneysegError, match="unevenly spaced"):
        read_volume(folder)
    dup = dicom_writer(phantom_volume.image, tmp_path / "dup", series_uid="1.2.3")
    dicom_writer(phantom_volume.image, dup, series_uid="1.2.3", name_prefix="again")
    with pytest.raises(KidneysegError, match="same position"):
        read_volume(dup)


def test_totalseg_jpeg2000_blank_uid_series(shared_data: Path) -> None:
    folder = shared_data / "totalseg_example" / "example_ct_dicom"
    ct = read_volume(folder)
    assert ct.shape == (512, 512, 20)
    assert ct.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))  # tag says 3 mm
    assert ct.axcodes == ("L", "P", "S") and ct.axial_axis == 2
    assert ct.origin[2] == pytest.approx(-804.5)  # lowest slice first
    assert ct.array.min() == -1024 and ct.array.max() > 1000  # HU: intercept -1024 applied
    assert ct.metadata["series_uid"] == ""


def test_dcmqi_ge_series(shared_data: Path) -> None:
    folder = shared_data / "dcmqi_ct3slice"
    ct = read_volume(folder / "ct-3slice")
    assert ct.shape == (512, 512, 3)
    assert ct.spacing == pytest.approx((0.810547, 0.810547, 1.0), abs=1e-5)
    assert ct.axcodes == ("L", "P", "S")
    assert ct.array.min() == -3024  # padding kept as it is, not clipped
    # The parent folder also holds a DICOM SEG: the CT series is still chosen.
    np.testing.assert_array_equal(read_volume(folder).array, ct.array)
    # The label maps stored beside it lie on the same grid.
    seg = read_volume(folder / "liver_seg.nrrd")
    assert seg.same_geometry(ct)


def test_reading_leaves_the_folder_unchanged(phantom_dicom_series: Path) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in phantom_dicom_series.iterdir())
    read_volume(phantom_dicom_series)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in phantom_dicom_series.iterdir()) == before
