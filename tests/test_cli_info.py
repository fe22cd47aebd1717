"""Tests of ``kidneyseg info``: text and JSON output, every real file, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import kidneyseg.cli as cli
from kidneyseg.cli import main
from kidneyseg.io import write_volume
from kidneyseg.types import Volume

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: KiTS23 label volumes, from shared/data/README.md: shape, slice mm, pixel mm, voxel counts.
KITS = {
    "case_00160": ((252, 512, 796), 1.0, 0.451, (2_018_389, 241_177, 0)),
    "case_00115": ((325, 512, 512), 0.5, 0.703, (1_110_062, 28_542, 1_381)),
    "case_00061": ((29, 512, 512), 5.0, 0.977, (123_831, 23_400, 0)),
    "case_00534": ((36, 512, 512), 5.0, 0.742, (104_283, 8_773, 0)),
    "case_00110": ((34, 512, 512), 5.0, 0.830, (106_052, 8_399, 2_655)),
    "case_00257": ((32, 512, 512), 5.0, 0.645, (143_146, 3_164, 9_729)),
    "case_00550": ((37, 512, 512), 5.0, 0.703, (176_436, 2_071, 184)),
    "case_00569": ((38, 512, 512), 5.0, 0.740, (161_496, 629, 0)),
    "case_00030": ((38, 512, 512), 5.0, 0.731, (100_690, 542_374, 247)),
    "case_00546": ((30, 512, 512), 5.0, 0.680, (200_651, 34_550, 0)),
    "case_00422": ((40, 512, 512), 5.0, 0.670, (126_081, 4_062, 0)),
}
#: Other real data: folder -> (shape, spacing mm, axcodes, axial axis), from the README.
OTHERS = {
    "totalseg_example": ((122, 101, 112), (3.0, 3.0, 3.0), "RAS", 2),
    "example_ct_dicom": ((512, 512, 20), (0.977, 0.977, 2.0), "LPS", 2),
    "dcmqi_ct3slice": ((512, 512, 3), (0.8105, 0.8105, 1.0), "LPS", 2),
    "ct-3slice": ((512, 512, 3), (0.8105, 0.8105, 1.0), "LPS", 2),
    # One slice file of that series alone: one slice, SliceThickness (1.25 mm) as its depth.
    "ct-3slice/*.dcm": ((512, 512, 1), (0.8105, 0.8105, 1.25), "LPS", 2),
    "kidney_masks_v1": ((122, 101, 112), (3.0, 3.0, 3.0), "RAS", 2),
}


def real_inputs() -> list[Path]:
    """Every image file, DICOM file and DICOM series folder under shared/data."""
    if not SHARED_DATA.is_dir():
        return []
    found = []
    for p in sorted(SHARED_DATA.rglob("*")):
        if p.is_file() and p.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")):
            found.append(p)
        elif p.is_dir() and any(
            f.is_file() and f.read_bytes()[128:132] == b"DICM" for f in p.iterdir()
        ):
            found.append(p)
    return found


def run_info(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["info", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args: str) -> dict:
    code, out, err = run_info(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)  # exactly one JSON object


# ---- output ---------------------------------------------------------------------------------


def test_json_on_phantom_labels_and_image(capsys, phantom_nifti) -> None:
    labels = phantom_nifti.phantom.labels
    info = run_json(capsys, phantom_nifti.labels)
    assert info["shape"] == list(labels.shape)
    assert info["spacing_mm"] == pytest.approx(list(labels.spacing))
    assert info["origin"] == pytest.approx(list(labels.origin))
    assert info["direction"] == labels.direction_matrix.tolist()
    assert info["axcodes"] == ["R", "A", "S"] and info["axial_axis"] == 2
    assert info["dtype"] == "uint8" and info["is_label_map"]
    assert info["path"] == str(phantom_nifti.labels)
    for k in (1, 2, 3):
        n = int((labels.array == k).sum())
        assert n > 0
        assert info["labels"][str(k)]["voxels"] == n
        assert info["labels"][str(k)]["ml"] == pytest.approx(n * 0.8 * 0.7 * 2.5 / 1000, abs=1e-3)
    image = run_json(capsys, phantom_nifti.image)
    assert not image["is_label_map"] and "labels" not in image
    assert image["hu_min"] == int(phantom_nifti.phantom.image.array.min())
    assert image["hu_max"] == int(phantom_nifti.phantom.image.array.max())


def test_text_output(capsys, phantom_nifti) -> None:
    code, out, err = run_info(capsys, phantom_nifti.labels)
    assert code == 0 and err == ""
    assert "24 x 20 x 9" in out and "0.8 x 0.7 x 2.5" in out
    assert "axcodes      R,A,S" in out and "axial axis   2" in out
    n_tumor = int((phantom_nifti.phantom.labels.array == 2).sum())
    assert any(line.split()[:3] == ["2", "tumor", str(n_tumor)] for line in out.splitlines())


def test_labels_flags(capsys, tmp_path: Path, phantom_volume) -> None:
    # A float mask holding 0/1 counts as a label map; --no-labels turns that off.
    mask = phantom_volume.labels.with_array((phantom_volume.labels.array > 0).astype(np.float32))
    path = write_volume(mask, tmp_path / "mask.nii.gz")
    assert run_json(capsys, path)["labels"]["1"]["voxels"] == int(mask.array.sum())
    assert "labels" not in run_json(capsys, path, "--no-labels")
    # A CT forced to be a label map fails clearly.
    ct = write_volume(phantom_volume.image, tmp_path / "ct.nii.gz")
    code, out, err = run_info(capsys, ct, "--labels")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {ct}: labels outside 0-3") and err.count("\n") == 1


def test_dicom_quiet_and_series_option(capfd, tmp_path, phantom_volume, dicom_writer) -> None:
    folder = tmp_path / "two"
    dicom_writer(phantom_volume.image, folder, series_uid="1.2.3.4")
    dicom_writer(phantom_volume.image, folder, series_uid="1.2.3.5", name_prefix="b")
    code = main(["info", str(folder), "--series", "1.2.3.5", "--json"])
    out, err = capfd.readouterr()  # capfd also sees what ITK/GDCM print from C++
    assert code == 0 and err == ""
    info = json.loads(out)
    assert info["dicom"]["series_uid"] == "1.2.3.5" and info["shape"] == [24, 20, 9]


# ---- every real file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", real_inputs(), ids=lambda p: str(p.relative_to(SHARED_DATA)) if SHARED_DATA else p
)
def test_real_data_geometry(capsys, path: Path) -> None:
    info = run_json(capsys, path)
    if path.parent.name in KITS:
        shape, slice_mm, pixel_mm, counts = KITS[path.parent.name]
        assert info["shape"] == list(shape)
        assert info["axcodes"] == ["I", "P", "L"] and info["axial_axis"] == 0
        assert info["spacing_mm"] == pytest.approx([slice_mm, pixel_mm, pixel_mm], abs=1e-3)
        assert info["canonical_spacing_mm"][0] == pytest.approx(slice_mm)
        assert info["is_label_map"] and info["dtype"] == "uint8"
        assert [info["labels"][k]["voxels"] for k in "123"] == list(counts)
        return
    if path.parent.parent.name == "kits19_slices":
        # One axial slice per case (README): axial axis first, 512 rows, KiTS19 labels 0-2.
        assert info["shape"][:2] == [1, 512] and info["axial_axis"] == 0
        assert info["axcodes"] == ["I", "P", "L"]
        assert info["spacing_mm"][1] == pytest.approx(info["spacing_mm"][2])
        if path.name == "segmentation.nii.gz":
            assert info["is_label_map"] and info["dtype"] == "uint8"
            assert info["labels"]["3"]["voxels"] == 0
        else:
            assert not info["is_label_map"] and info["dtype"] == "float32"
            assert 0 <= info["hu_min"] < info["hu_max"] <= 255  # HU clipped to [0, 255]
        return
    key = path.name if path.name in OTHERS else path.parent.name
    if key == "ct-3slice" and path.is_file():
        key = "ct-3slice/*.dcm"
    assert key in OTHERS, f"no expected geometry for {path}: add it to OTHERS"
    shape, spacing, axcodes, axial = OTHERS[key]
    assert info["shape"] == list(shape)
    assert info["spacing_mm"] == pytest.approx(list(spacing), abs=1e-3)
    assert "".join(info["axcodes"]) == axcodes and info["axial_axis"] == axial
    assert info["canonical_shape"][0] == shape[axial]


def test_real_data_found(shared_data: Path) -> None:
    found = real_inputs()
    kits23 = [p for p in found if p.name == "segmentation.nii.gz" and p.parent.name in KITS]
    assert len(kits23) == len(KITS)
    assert sum(p.parent.parent.name == "kits19_slices" for p in found) == 2 * 55  # README
    assert shared_data / "totalseg_example" / "example_ct_dicom" in found
    assert shared_data / "dcmqi_ct3slice" / "ct-3slice" in found


def test_real_hu_ranges(capsys, shared_data: Path) -> None:
    ct = run_json(capsys, shared_data / "totalseg_example" / "example_ct.nii.gz")
    assert (ct["hu_min"], ct["hu_max"]) == (-1207, 3382)  # README
    ge = run_json(capsys, shared_data / "dcmqi_ct3slice" / "ct-3slice")
    assert ge["hu_min"] == -3024
    assert ge["dicom"]["modality"] == "CT"


def test_broken_subcommand_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A subcommand module that does not import is a bug to see, not a command to hide.
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


# ---- bad input ------------------------------------------------------------------------------


def _two_series(tmp: Path, phantom, writer) -> Path:
    writer(phantom.image, tmp / "bad", series_uid="1.2.3.4")
    return writer(phantom.image, tmp / "bad", series_uid="1.2.3.5", name_prefix="b")


def _bad_inputs(tmp: Path, phantom, writer) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected message part), each a distinct way input can be wrong."""
    tmp.mkdir(parents=True, exist_ok=True)
    full = write_volume(phantom.image, tmp / "full.nii.gz").read_bytes()
    (tmp / "cut.nii.gz").write_bytes(full[: len(full) // 2])
    (tmp / "text.nii.gz").write_text("not an image\n")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(tmp / "flat.nii.gz"))
    four = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16))
    sitk.WriteImage(four, str(tmp / "four.nii.gz"))
    (tmp / "emptydir").mkdir()
    nan = phantom.image.array.astype(np.float32)
    nan[0, 0, 0] = np.nan
    write_volume(phantom.image.with_array(nan), tmp / "nan.nii.gz")
    labels = phantom.labels.array.copy()
    labels[0, 0, 0] = 5
    write_volume(phantom.labels.with_array(labels), tmp / "seg5.nii.gz")
    return {
        "missing": (tmp / "missing.nii.gz", "no such file"),
        "truncated": (tmp / "cut.nii.gz", "truncated"),
        "text": (tmp / "text.nii.gz", "not an image"),
        "2d": (tmp / "flat.nii.gz", "3D"),
        "4d": (tmp / "four.nii.gz", "4D"),
        "empty_dicom": (tmp / "emptydir", "empty"),
        "two_series": (_two_series(tmp, phantom, writer), "2 image series"),
        "nan": (tmp / "nan.nii.gz", "NaN"),
        "labels": (tmp / "seg5.nii.gz", "outside 0-3"),
    }


BAD = ["missing", "truncated", "text", "2d", "4d", "empty_dicom", "two_series", "nan", "labels"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input(capsys, tmp_path: Path, phantom_volume, dicom_writer, name: str) -> None:
    path, expected = _bad_inputs(tmp_path / "in", phantom_volume, dicom_writer)[name]
    args = [path, "--labels"] if name == "labels" else [path]
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_info(capsys, *args, "--json")
    assert code == 2
    assert out == ""
    assert err.startswith(f"error: {path}") and err.count("\n") == 1, err
    assert expected in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_one_slice_volume(capsys, tmp_path: Path, phantom_volume) -> None:
    img = phantom_volume.image
    one = write_volume(
        Volume(img.array[:, :, :1].copy(), img.spacing, img.origin, img.direction),
        tmp_path / "one.nrrd",
    )
    info = run_json(capsys, one)
    assert info["shape"] == [24, 20, 1] and info["canonical_shape"] == [1, 20, 24]
