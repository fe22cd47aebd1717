"""What ``kidneyseg predict`` takes in and gives out (issue 9): folders of per-patient DICOM
folders as a batch (one case per series), each input's own file format kept, and the
``--output-format`` words; checked with the hand-set network of `test_inference`, whose labels
are known voxel by voxel, and on the real DICOM series of ``../shared/data``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import write_dicom_series as write_pydicom_series
from kidneyseg.cli import main
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.pred_dir import OUTPUT_FORMATS
from kidneyseg.inputs import find_inputs, plan_prediction
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.types import Volume
from test_inference import expected_labels, make_model_dir, phantom_canonical, volume_from_canonical

LPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("run"))


def _ct(
    seed: int = 0, direction: tuple[tuple[float, ...], ...] | None = None, slices: int = 5
) -> Volume:
    canonical = phantom_canonical((slices, 32, 32), seed=seed)
    return volume_from_canonical(canonical, *(() if direction is None else (direction,)))


def _series(
    folder: Path, seed: int = 0, number: int = 3, slices: int = 5, **options: object
) -> Path:
    """A small CT series (pydicom, 32 x 32 x ``slices``) whose expected labels are known, with
    SeriesNumber ``number`` (its files named ``<seed>_<number>_img*.dcm``)."""
    prefix = f"{seed}_{number}_"
    volume = _ct(seed, LPS, slices)
    write_pydicom_series(volume, folder, name_prefix=prefix, **options)  # type: ignore[arg-type]
    for f in folder.glob(f"{prefix}*.dcm"):
        ds = pydicom.dcmread(f)
        ds.SeriesNumber = number
        ds.save_as(f)
    return folder


def _copy_files(src: Path, dest: Path) -> Path:
    """Copy a folder's files (not its read-only modes) into ``dest``."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, dest / f.name)
    return dest


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _predict(*args: str | Path) -> int:
    return main(["predict", *(str(a) for a in args), "--no-progress"])


# ----------------------------------------------------------------------------- DICOM batches


def test_folder_of_real_patient_dicom_folders(
    run_dir: Path, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-patient folders of real series, one of them nested, beside an image file."""
    pytest.importorskip("highdicom")
    batch = tmp_path / "batch"
    _copy_files(shared_data / "dcmqi_ct3slice", batch / "ge")  # liver.dcm SEG beside it
    _copy_files(shared_data / "dcmqi_ct3slice" / "ct-3slice", batch / "ge" / "ct-3slice")
    nested = batch / "siemens" / "study_1" / "series_2"  # JPEG 2000, blank UIDs
    _copy_files(shared_data / "totalseg_example" / "example_ct_dicom", nested)
    write_volume(_ct(), batch / "loose.nrrd")  # mixed folder: an image file too
    (batch / "notes").mkdir()
    (batch / "notes" / "readme.txt").write_text("not DICOM")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="blank"):  # the SEG of the blank-UID series says so
        assert _predict(batch, out, "--model", run_dir, "--device", "cpu") == 0
    assert "3 predicted, 0 skipped (already done), 0 failed" in capsys.readouterr().out
    assert _files(out) == [
        "ge.nii.gz",
        "ge.seg.dcm",
        "loose.nrrd",
        "siemens.nii.gz",
        "siemens.seg.dcm",
    ]
    for name, src in (("ge", batch / "ge"), ("siemens", nested)):
        ct, labels = read_image(src), read_labels(out / f"{name}.nii.gz")
        assert labels.same_geometry(ct, atol=1e-6) and labels.shape == ct.shape
        assert (labels.array == expected_labels(ct.array)).mean() > 0.9
        seg = pydicom.dcmread(out / f"{name}.seg.dcm")
        assert seg.Modality == "SEG" and len(seg.PerFrameFunctionalGroupsSequence) > 0
    assert read_labels(out / "ge.nii.gz").shape == (512, 512, 3)
    assert _predict(batch, out, "--model", run_dir, "--device", "cpu") == 0  # resumes
    assert "0 predicted, 3 skipped" in capsys.readouterr().out


def test_several_series_bad_series_and_damaged_file(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "batch"
    _series(batch / "p1", seed=1, number=3, slices=5)
    _series(batch / "p1", seed=2, number=5, slices=7, description="venous")  # same folder
    _series(batch / "p2" / "a" / "b", seed=3)
    _series(batch / "mr", modality="MR")
    broken = _series(batch / "broken")
    first = sorted(broken.iterdir())[0]
    first.write_bytes(first.read_bytes()[:400])  # DICM preamble, then cut short
    out = tmp_path / "out"
    nifti = ["--device", "cpu", "--output-format", "nifti"]
    code = _predict(batch, out, "--model", run_dir, *nifti, "--preview")
    captured = capsys.readouterr()
    assert code == 1, captured.err
    written = ["p1_s3.nii.gz", "p1_s5.nii.gz", "p2.nii.gz"]  # nifti: no SEG
    previews = [n.replace(".nii.gz", "_preview.png") for n in written]  # each finds its series
    assert _files(out) == sorted(written + previews)
    assert "3 predicted, 0 skipped (already done), 2 failed" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, captured.err
    assert f"{broken / first.name}: DICOM file cannot be read (cut short" in errors[0]
    assert f"{batch / 'mr'}: not CT: the DICOM Modality is MR" in errors[1]
    assert "failed: broken: " in captured.err and "failed: mr: " in captured.err
    uids = {}
    for f in (batch / "p1").iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uids[int(ds.SeriesNumber)] = ds.SeriesInstanceUID
    for name, source, series, slices in (
        ("p1_s3", batch / "p1", uids[3], 5),
        ("p1_s5", batch / "p1", uids[5], 7),
        ("p2", batch / "p2", None, 5),
    ):
        ct = read_image(source, series)
        labels = read_labels(out / f"{name}.nii.gz")
        assert labels.shape[2] == slices and labels.same_geometry(ct, atol=1e-6)
        np.testing.assert_array_equal(labels.array, expected_labels(ct.array))
    # Fixed later, the failed cases run; the done ones are skipped.
    shutil.rmtree(broken)
    assert _predict(batch, out, "--model", run_dir, *nifti) == 1  # the MR series still fails
    assert "0 predicted, 3 skipped (already done), 1 failed" in capsys.readouterr().out


def test_dicom_case_names(tmp_path: Path) -> None:
    one = tmp_path / "one"
    _series(one / "patient" / "deep" / "er")
    # A folder holding one series, however deep, stays one CT named after the folder.
    assert find_inputs(one) == ([("one", one, None)], False)
    same = tmp_path / "same_numbers"
    _series(same / "p", seed=1, number=3)
    _series(same / "p", seed=2, number=3)  # SeriesNumber repeats: a UID hash tells them apart
    _series(same / "q")
    found, collection = find_inputs(same)
    names = [f.case_id for f in found]
    assert collection and len(set(names)) == 3 and names[2] == "q"
    assert all(n.startswith("p_") and len(n) == len("p_") + 8 for n in names[:2])
    assert all(f.series for f in found[:2]) and found[2].series is None
    assert {read_image(f.source, f.series).metadata["series_uid"] for f in found[:2]} == {
        f.series for f in found[:2]
    }
    # --series picks one series of a folder holding several: one CT again.
    assert find_inputs(same, found[0].series) == ([("same_numbers", same, None)], False)
    # A case name met twice (a file and a folder) is refused before any work.
    write_volume(_ct(), same / "q.nii.gz")
    with pytest.raises(KidneysegError, match="several inputs share the case name 'q'"):
        find_inputs(same)


# ----------------------------------------------------------------------------- formats


def test_folder_mode_keeps_each_input_format(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import SimpleITK as sitk

    data = tmp_path / "in"
    kinds = ("a.nrrd", "b.mha", "c.nii", "d.nii.gz")
    for i, name in enumerate(kinds):
        write_volume(_ct(i), data / name)
    sitk.WriteImage(sitk.ReadImage(str(data / "a.nrrd")), str(data / "e.nhdr"))  # detached
    out = tmp_path / "out"
    assert _predict(data, out, "--model", run_dir, "--device", "cpu") == 0
    assert _files(out) == ["a.nrrd", "b.mha", "c.nii", "d.nii.gz", "e.nrrd"]
    for name, written in zip(kinds, _files(out), strict=False):
        ct = read_image(data / name)
        np.testing.assert_array_equal(read_labels(out / written).array, expected_labels(ct.array))
    src, back = sitk.ReadImage(str(data / "a.nrrd")), sitk.ReadImage(str(out / "a.nrrd"))
    assert back.GetSize() == src.GetSize() and back.GetOrigin() == src.GetOrigin()
    assert back.GetSpacing() == src.GetSpacing() and back.GetDirection() == src.GetDirection()
    assert src.GetDirection() != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert back.GetPixelID() == sitk.sitkUInt8
    for fmt, suffix in (("nifti", ".nii.gz"), ("mha", ".mha"), ("nrrd", ".nrrd")):
        assert plan_prediction(data, tmp_path / fmt, output_format=fmt).cases[0].target == (
            tmp_path / fmt / f"a{suffix}"
        )
    nifti = ["--device", "cpu", "--output-format", "nifti"]
    assert _predict(data, tmp_path / "nii", "--model", run_dir, *nifti) == 0
    assert _files(tmp_path / "nii") == [f"{c}.nii.gz" for c in "abcde"]
    capsys.readouterr()


def test_output_format_words_and_refusals(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_volume(_ct(), tmp_path / "ct.nrrd")
    out = tmp_path / "o" / "labels.nii.gz"
    for fmt, needle in (("nrrd", "does not match"), ("both", "needs a DICOM series")):
        assert _predict(src, out, "--model", run_dir, "--output-format", fmt) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # One CT to a named file: the name decides (here NIfTI from an NRRD input).
    assert (
        _predict(src, out, "--model", run_dir, "--device", "cpu", "--output-format", "nifti") == 0
    )
    assert read_labels(out).same_geometry(read_image(src))
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(OUTPUT_FORMATS) + "}" in text and "input's format" in text
    with pytest.raises(KidneysegError, match="unknown output format"):
        plan_prediction(src, out, output_format="png")


# ----------------------------------------------------------------------------- CLI options


def test_debug_after_predict_shows_the_exception(tmp_path: Path) -> None:
    missing = tmp_path / "missing.nii.gz"
    args = ["predict", str(missing), str(tmp_path / "o.nii.gz"), "--model", str(tmp_path)]
    with pytest.raises(KidneysegError, match="missing.nii.gz: no such file"):
        main([*args, "--debug"])
    assert main(args) == 2


def test_device_gpu_means_cuda(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    src = write_volume(_ct(), tmp_path / "ct.nii.gz")
    out = tmp_path / "labels.nii.gz"
    code = _predict(src, out, "--model", run_dir, "--device", "gpu")
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert code == 0, err
        assert read_labels(out).same_geometry(read_image(src))
    else:  # understood as CUDA (not an unknown word), and refused for want of one
        assert code == 2 and "device 'gpu': no CUDA GPU is available" in err
        assert not out.exists()
    assert _predict(src, out, "--model", run_dir, "--device", "gpu7") == 2
    assert "unknown device 'gpu7'" in capsys.readouterr().err
