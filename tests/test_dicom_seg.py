"""Tests of kidneyseg.dicom_seg and ``predict`` on DICOM input: the SEG read back with
pydicom/highdicom agrees with the NIfTI output and the stats JSON, on real series' quirks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("highdicom")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from pydicom.uid import UID  # noqa: E402

from kidneyseg.dicom import series_files  # noqa: E402
from kidneyseg.dicom_seg import BlankUIDWarning, write_dicom_seg  # noqa: E402
from kidneyseg.errors import KidneysegError  # noqa: E402
from kidneyseg.formats.pred_dir import provenance, seg_path  # noqa: E402
from kidneyseg.formats.run_dir import model_id  # noqa: E402
from kidneyseg.inference import Predictor  # noqa: E402
from kidneyseg.io import read_image, read_labels, write_volume  # noqa: E402
from kidneyseg.types import Volume  # noqa: E402
from test_inference import (  # noqa: E402
    make_model_dir,
    phantom_canonical,
    volume_from_canonical,
    write_dicom_series,
)

PROV = provenance("0123456789abcdef", "run", "cpu", "fp32")
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
STRUCTURE = (
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "DimensionIndexSequence",
    "ReferencedSeriesSequence",
    "FrameOfReferenceUID",
    "SegmentSequence",
)


def _labels(ct: Volume, cyst: bool = True) -> Volume:
    arr = np.zeros(ct.shape, np.uint8)
    arr[100:220, 150:260, :] = 1  # (column, row, slice)
    arr[120:150, 160:180, 1] = 2
    if cyst:
        arr[200:210, 240:250, 0] = 3
    return ct.with_array(arr)


def _frames_by_source(seg: pydicom.Dataset, files: list[Path]) -> dict[tuple[int, int], Any]:
    """(segment number, source slice index) -> frame pixels, from the SEG's references."""
    sop = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = {}
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[(number, sop.index(ref))] = pixels[i]
    return out


def _check_agreement(seg: pydicom.Dataset, labels: Volume, files: list[Path]) -> None:
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    ids = {"Kidney": 1, "Kidney tumor": 2, "Kidney cyst": 3}
    frames = _frames_by_source(seg, files)
    for number, name in enumerate(names, start=1):
        for k in range(labels.shape[2]):
            expected = labels.array[:, :, k].T == ids[name]  # (row, column)
            got = frames.get((number, k), np.zeros_like(expected))
            np.testing.assert_array_equal(got.astype(bool), expected, err_msg=f"{name} {k}")


def test_seg_of_the_dcmqi_series_matches_labels_and_liver_seg(
    shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / "dcmqi_ct3slice" / "ct-3slice"
    ct = read_image(src)
    labels = _labels(ct)
    out = write_dicom_seg(labels, src, tmp_path / "ct.seg.dcm", PROV)
    seg = pydicom.dcmread(out)
    ref = pydicom.dcmread(shared_data / "dcmqi_ct3slice" / "liver.dcm")
    assert seg.SOPClassUID == ref.SOPClassUID == SEG_CLASS
    assert seg.SegmentationType == ref.SegmentationType == "BINARY"
    for ds in (seg, ref):  # the same structure as a real SEG
        for keyword in STRUCTURE:
            assert keyword in ds, keyword
    files = series_files(src)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "Kidney",
        "Kidney tumor",
        "Kidney cyst",
    ]
    kidney, tumor, cyst = seg.SegmentSequence
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert tumor.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert cyst.SegmentedPropertyTypeCodeSequence[0].CodeValue == "367643001"
    schemes = {
        s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator for s in seg.SegmentSequence
    }
    assert schemes == {"SCT"}
    algo = kidney.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "kidneyseg" and "0123456789abcdef" in algo.AlgorithmVersion
    assert kidney.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.DeviceSerialNumber == "0123456789abcdef"
    # Geometry: every frame lies on its source slice, with the source's pixel spacing.
    pixel = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose([float(v) for v in pixel], [float(v) for v in source.PixelSpacing])
    for fg in seg.PerFrameFunctionalGroupsSequence:
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        f = next(
            f for f in files if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == uid
        )
        position = pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in position], atol=1e-3,
        )  # fmt: skip
    _check_agreement(seg, labels, files)
    # highdicom reads it back as a segmentation of the same series.
    back = hd.seg.segread(out)
    assert back.number_of_segments == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ct.seg.dcm"]  # atomic, no leftovers


def test_blank_uids_get_valid_generated_ones_and_a_warning(
    shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / "totalseg_example" / "example_ct_dicom"  # JPEG 2000, blank UIDs
    ct = read_image(src)
    labels = _labels(ct, cyst=False)
    with pytest.warns(BlankUIDWarning, match="blank .*SeriesInstanceUID"):
        a = pydicom.dcmread(write_dicom_seg(labels, src, tmp_path / "a.seg.dcm", PROV))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlankUIDWarning)
        b = pydicom.dcmread(write_dicom_seg(labels, src, tmp_path / "b.seg.dcm", PROV))
    ref = a.ReferencedSeriesSequence[0]
    assert UID(ref.SeriesInstanceUID).is_valid and UID(a.StudyInstanceUID).is_valid
    assert ref.SeriesInstanceUID == b.ReferencedSeriesSequence[0].SeriesInstanceUID  # stable
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert [s.SegmentLabel for s in a.SegmentSequence] == ["Kidney", "Kidney tumor"]
    assert len(ref.ReferencedInstanceSequence) == ct.shape[2]


def test_predict_dicom_writes_nifti_seg_and_stats_that_agree(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    lps = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    volume = volume_from_canonical(phantom_canonical(), direction=lps, spacing_zyx=(3.0, 0.9, 0.9))
    folder = write_dicom_series(volume, tmp_path / "series")
    predictor = Predictor(run, device="cpu", progress=False)
    out, stats_path = tmp_path / "out" / "ct.nii.gz", tmp_path / "stats.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlankUIDWarning)  # the helper writes no frame of ref.
        report = predictor.predict_paths(folder, out, stats_path=stats_path)
    assert report.ok and seg_path(out).is_file()
    labels = read_labels(out)
    seg = pydicom.dcmread(seg_path(out))
    _check_agreement(seg, labels, series_files(folder))
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    mid = model_id(run)
    assert stats["model"]["model_id"] == mid == seg.DeviceSerialNumber
    assert stats["model"]["device"] == "cpu" and stats["model"]["precision"]
    import nibabel

    descrip = nibabel.load(out).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip.startswith("kidneyseg ") and mid in descrip
    (case,) = stats["cases"].values()
    n_tumor = int((labels.array == 2).sum())
    assert case["voxels"]["tumor"] == n_tumor > 0
    assert case["total"]["tumor_volume_ml"] == pytest.approx(
        n_tumor * labels.voxel_volume_ml, abs=1e-4
    )
    assert case["tumors"][0]["side"] == "right" and case["tumors"][0]["hu_mean"] == pytest.approx(
        320
    )
    # NIfTI only: no SEG; a SEG asked of a non-DICOM input is an error.
    only = Predictor(run, device="cpu", progress=False, output_format="nifti")
    only.predict_file(folder, tmp_path / "n" / "ct.nii.gz")
    assert [p.name for p in (tmp_path / "n").iterdir()] == ["ct.nii.gz"]
    seg_only = Predictor(run, device="cpu", progress=False, output_format="dicom-seg")
    with pytest.raises(KidneysegError, match="needs a DICOM series"):
        seg_only.predict_file(write_volume(volume, tmp_path / "ct.nii.gz"), tmp_path / "m.nii.gz")


def test_series_without_patient_and_study_attributes_gets_a_seg(
    shared_data: Path, tmp_path: Path
) -> None:
    """Anonymised series may lack type-2 patient/study attributes; the SEG leaves them empty."""
    src = tmp_path / "anon"
    src.mkdir()
    removed = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID")
    for f in series_files(shared_data / "dcmqi_ct3slice" / "ct-3slice"):
        ds = pydicom.dcmread(f)
        for keyword in removed:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(src / f.name)
    ct = read_image(src)
    labels = _labels(ct)
    seg = pydicom.dcmread(write_dicom_seg(labels, src, tmp_path / "ct.seg.dcm", PROV))
    assert seg.PatientID == "" and str(seg.PatientName) == ""
    assert [s.SegmentLabel for s in seg.SegmentSequence][:2] == ["Kidney", "Kidney tumor"]
    _check_agreement(seg, labels, series_files(src))
