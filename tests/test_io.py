"""Tests of `kidneyseg.io`: geometry-exact round trips, orientation handling, bad input."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import case_id_from_path, is_image_file
from kidneyseg.io import (
    check_hounsfield,
    check_same_geometry,
    looks_like_labels,
    read_image,
    read_labels,
    read_volume,
    volume_info,
    write_volume,
)
from kidneyseg.sitk import to_sitk
from kidneyseg.types import Volume, file_order

FORMATS = ("nii.gz", "nii", "nrrd", "mha")


def world_position(vol: Volume, index: np.ndarray) -> np.ndarray:
    """LPS position (mm) of a voxel index, from the volume's geometry."""
    return np.asarray(vol.origin) + vol.direction_matrix @ (np.asarray(vol.spacing) * index)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_exact_geometry(tmp_path: Path, phantom_volume, fmt: str) -> None:
    # A permuted + flipped + slightly rotated direction with uneven spacing.
    a = np.deg2rad(7)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    direction = rot @ np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)
    src = Volume(
        phantom_volume.image.array, (0.83, 0.61, 2.7), (-12.5, 40.25, 300.0), direction, "x"
    )
    out = write_volume(src, tmp_path / f"rt.{fmt}")
    back = read_volume(out)
    assert back.shape == src.shape
    np.testing.assert_array_equal(back.array, src.array)
    assert back.array.dtype == src.array.dtype
    np.testing.assert_allclose(back.spacing, src.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, src.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction_matrix, src.direction_matrix, atol=1e-6)
    assert back.axcodes == src.axcodes == ("A", "S", "R")
    assert listing(tmp_path) == [f"rt.{fmt}"]  # no temporary file left behind


def test_write_widens_bool_and_float16(tmp_path: Path, phantom_volume) -> None:
    mask = phantom_volume.labels.with_array(phantom_volume.labels.array > 0)
    back = read_volume(write_volume(mask, tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(back.array, mask.array.astype(np.uint8))
    half = phantom_volume.image.with_array(phantom_volume.image.array.astype(np.float16))
    back = read_volume(write_volume(half, tmp_path / "half.nrrd"))
    assert back.array.dtype == np.float32


def test_write_rejects_unsupported_suffix_and_leaves_nothing(tmp_path: Path, phantom_volume):
    for name in ("out.png", "out.mhd", "out.nhdr"):
        with pytest.raises(KidneysegError, match="unsupported output format") as err:
            write_volume(phantom_volume.image, tmp_path / name)
        assert name in str(err.value)
    assert listing(tmp_path) == []


def test_failed_write_is_atomic(tmp_path: Path, phantom_volume, monkeypatch) -> None:
    target = tmp_path / "out.nii.gz"
    write_volume(phantom_volume.labels, target)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(KidneysegError, match="cannot write"):
        write_volume(phantom_volume.image, target)
    assert target.read_bytes() == before  # old file untouched
    assert listing(tmp_path) == ["out.nii.gz"]  # temporary file removed


def test_to_sitk_geometry(phantom_volume) -> None:
    image = to_sitk(phantom_volume.image)
    assert image.GetSize() == phantom_volume.image.shape
    assert image.GetSpacing() == pytest.approx(phantom_volume.image.spacing)
    idx = (3, 4, 5)
    expected = world_position(phantom_volume.image, np.array(idx))
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(idx), expected)
    assert image[idx] == phantom_volume.image.array[idx]


# ---- orientation ---------------------------------------------------------------------------


def test_permuted_and_flipped_files_give_same_canonical(tmp_path: Path, phantom_volume) -> None:
    """All 48 axis permutations x flips, written to disk, read back -> same canonical array."""
    base = phantom_volume.image
    canonical = base.to_canonical()
    lps = canonical.transpose(2, 1, 0)  # (x, y, z) index order, all axes pointing L, P, S
    lps_spacing = np.array(base.canonical_spacing[::-1])
    lps_origin = np.array([-50.0, 20.0, 100.0])  # LPS position of lps[0, 0, 0]
    marker = np.array([2, 3, 4])  # an (x, y, z) voxel we can find in every copy
    lps = lps.copy()
    lps[tuple(marker)] = 3000
    expected_canonical = lps.transpose(2, 1, 0)
    expected_marker = lps_origin + lps_spacing * marker
    cases = list(
        itertools.product(itertools.permutations(range(3)), itertools.product((1, -1), repeat=3))
    )
    for n, (perm, signs) in enumerate(cases):
        arr = np.transpose(lps, perm)
        flips = [c for c in range(3) if signs[c] < 0]
        arr = np.flip(arr, flips)
        direction = np.zeros((3, 3))
        origin = lps_origin.copy()
        for c, (w, s) in enumerate(zip(perm, signs, strict=True)):
            direction[w, c] = s
            if s < 0:  # index 0 now sits at the far end of that world axis
                origin[w] += lps_spacing[w] * (lps.shape[w] - 1)
        spacing = tuple(float(lps_spacing[w]) for w in perm)
        vol = Volume(np.ascontiguousarray(arr), spacing, tuple(origin), direction)  # type: ignore[arg-type]
        path = write_volume(vol, tmp_path / f"o{n}.{FORMATS[n % len(FORMATS)]}")
        back = read_volume(path)
        np.testing.assert_array_equal(back.to_canonical(), expected_canonical, err_msg=str(perm))
        np.testing.assert_allclose(back.canonical_spacing, base.canonical_spacing, rtol=1e-6)
        assert back.axial_axis == perm.index(2)
        found = np.argwhere(back.array == 3000)[0]
        np.testing.assert_allclose(world_position(back, found), expected_marker, atol=1e-3)


def test_totalseg_right_kidney_is_on_patient_right(shared_data: Path) -> None:
    folder = shared_data / "totalseg_example"
    seg = read_volume(folder / "example_seg_fast_force_split.nii.gz")
    ct = read_image(folder / "example_ct.nii.gz")
    assert seg.axcodes == ("R", "A", "S") and seg.axial_axis == 2
    assert seg.same_geometry(ct)
    canonical = seg.to_canonical()
    x_right = np.argwhere(canonical == 2)[:, 2].mean()
    x_left = np.argwhere(canonical == 3)[:, 2].mean()
    # Canonical x runs towards patient Left: the right kidney has the smaller x index,
    # and it lies at negative LPS x (patient right of the scanner's origin side).
    assert x_right < x_left
    c = seg.canonical_spacing
    assert c == (3.0, 3.0, 3.0)
    right_world = world_position(seg, np.argwhere(seg.array == 2).mean(0))
    left_world = world_position(seg, np.argwhere(seg.array == 3).mean(0))
    assert right_world[0] < left_world[0]
    # The older model's separate masks agree on which side is which.
    old_right = read_volume(folder / "kidney_masks_v1" / "kidney_right.nii.gz").to_canonical()
    assert np.argwhere(old_right > 0)[:, 2].mean() < x_left


def test_kits_label_geometry(shared_data: Path) -> None:
    vol = read_labels(shared_data / "kits23_labels" / "case_00061" / "segmentation.nii.gz")
    assert vol.shape == (29, 512, 512)
    assert vol.axcodes == ("I", "P", "L") and vol.axial_axis == 0
    assert vol.spacing[0] == pytest.approx(5.0)
    assert vol.spacing[1] == pytest.approx(0.977, abs=1e-3)
    assert vol.array.dtype == np.uint8
    # Canonical z runs inferior -> superior: the stored axis 0 (pointing I) comes out flipped.
    np.testing.assert_array_equal(vol.to_canonical()[0], vol.array[-1])


# ---- bad input ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="no such file") as err:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(err.value)


@pytest.mark.usefixtures("inflater")
@pytest.mark.parametrize("suffix", ["nii.gz", "nii"])
def test_truncated_nifti(tmp_path: Path, phantom_volume, suffix: str) -> None:
    full = write_volume(phantom_volume.image, tmp_path / f"full.{suffix}")
    data = full.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(KidneysegError, match="truncated") as err:
        read_volume(cut)
    assert "cut." in str(err.value) and "\n" not in str(err.value)
    tiny = tmp_path / f"tiny.{suffix}"
    tiny.write_bytes(data[:60])
    with pytest.raises(KidneysegError, match="tiny"):
        read_volume(tiny)


@pytest.mark.usefixtures("inflater")
def test_valid_nifti_with_wrong_gzip_trailer_still_reads(tmp_path: Path, phantom_volume) -> None:
    # A complete file written as two gzip members has a trailer that only counts the last
    # member: the fast size check fails, the full check must still accept it.
    raw = write_volume(phantom_volume.image, tmp_path / "plain.nii").read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_volume(two).array, phantom_volume.image.array)


@pytest.mark.usefixtures("inflater")
@pytest.mark.parametrize("suffix", ["nrrd", "mha"])
def test_truncated_nrrd_mha(tmp_path: Path, phantom_volume, suffix: str) -> None:
    data = write_volume(phantom_volume.image, tmp_path / f"full.{suffix}").read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(KidneysegError, match="cannot read image") as err:
        read_volume(cut)
    assert "cut." in str(err.value)


def test_text_file_named_nifti(tmp_path: Path) -> None:
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("this is not an image\n")
    with pytest.raises(KidneysegError, match="not an image") as err:
        read_volume(fake)
    assert "fake.nii.gz" in str(err.value)
    other = tmp_path / "fake.nrrd"
    other.write_text("hello\n")
    with pytest.raises(KidneysegError, match="fake.nrrd"):
        read_volume(other)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(KidneysegError, match="not a supported image file"):
        read_volume(path)


def test_2d_image_rejected(tmp_path: Path) -> None:
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(path))
    with pytest.raises(KidneysegError, match="3D") as err:
        read_volume(path)
    assert "flat.nii.gz" in str(err.value)


def test_4d_rejected_but_singleton_4d_accepted(tmp_path: Path) -> None:
    path = tmp_path / "time.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16)), str(path))
    with pytest.raises(KidneysegError, match="4D") as err:
        read_volume(path)
    assert "time.nii.gz" in str(err.value)
    single = tmp_path / "single.nii.gz"
    data = np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(data[0])]), str(single))
    np.testing.assert_array_equal(read_volume(single).array, data[0].transpose(2, 1, 0))


def test_one_slice_volume_is_valid(tmp_path: Path, phantom_volume) -> None:
    img = phantom_volume.image
    one = Volume(img.array[:, :, 4:5].copy(), img.spacing, img.origin, img.direction)
    back = read_image(write_volume(one, tmp_path / "one.nii.gz"))
    assert back.shape == (24, 20, 1) and back.axial_axis == 2
    assert back.canonical_spacing == pytest.approx((2.5, 0.7, 0.8))
    assert back.to_canonical().shape == (1, 20, 24)
    info = volume_info(tmp_path / "one.nii.gz")
    assert info["shape"] == [24, 20, 1] and info["axial_axis"] == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_image(tmp_path: Path, phantom_volume, bad: float) -> None:
    arr = phantom_volume.image.array.astype(np.float32)
    arr[1, 2, 3] = bad
    path = write_volume(phantom_volume.image.with_array(arr), tmp_path / "bad.nii.gz")
    with pytest.raises(KidneysegError, match="NaN or infinite") as err:
        read_image(path)
    assert "bad.nii.gz" in str(err.value)
    # read_volume does not judge values, but must not hide them (ITK's NIfTI reader reads 0).
    assert not np.isfinite(read_volume(path).array[1, 2, 3])
    with pytest.raises(KidneysegError, match="NaN or infinite"):
        read_image(write_volume(phantom_volume.image.with_array(arr), tmp_path / "bad.nrrd"))


@pytest.mark.parametrize("suffix", ["nii", "nii.gz"])
def test_nonfinite_kept_in_every_float_nifti_layout(tmp_path: Path, suffix: str) -> None:
    # ITK reads NaN/inf as 0; each layout takes another path back to the file's values:
    # plain and big-endian through nibabel's voxels, scaled and 4D (t=1) through the repair.
    import nibabel

    arr = np.linspace(-1000, 1000, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    arr[1, 2, 3], arr[0, 0, 0], arr[3, 4, 5] = np.nan, np.inf, -np.inf
    affine = np.diag([-0.8, -0.7, 2.5, 1.0])  # RAS: x to the left, y to the back -> LPS axes
    scaled = nibabel.Nifti1Image(arr, affine)
    scaled.header.set_slope_inter(2.0, 10.0)  # stored as written, read as 2 * value + 10
    layouts = {
        "plain": (nibabel.Nifti1Image(arr, affine), arr),
        "big_endian": (nibabel.Nifti1Image(arr.astype(">f4"), affine), arr),
        "scaled": (scaled, arr * 2 + 10),
        "four_d": (nibabel.Nifti1Image(arr[..., None], affine), arr),
    }
    finite = np.isfinite(arr)
    for name, (image, expected) in layouts.items():
        path = tmp_path / f"{name}.{suffix}"
        nibabel.save(image, path)
        vol = read_volume(path)
        assert vol.shape == (4, 5, 6) and vol.array.dtype.isnative, name
        assert vol.axcodes == ("L", "P", "S") and vol.spacing == pytest.approx((0.8, 0.7, 2.5))
        assert np.isnan(vol.array[1, 2, 3]), name
        assert vol.array[0, 0, 0] == np.inf and vol.array[3, 4, 5] == -np.inf, name
        np.testing.assert_allclose(vol.array[finite], expected[finite], rtol=1e-6, err_msg=name)
        with pytest.raises(KidneysegError, match="3 NaN or infinite"):
            read_image(path)


@pytest.mark.usefixtures("inflater")
def test_nifti_cut_inside_its_header_is_truncated(tmp_path: Path, phantom_volume) -> None:
    # A gzip stream cut within the first few hundred bytes still says "cut", not ITK's zeros.
    data = write_volume(phantom_volume.image, tmp_path / "full.nii.gz").read_bytes()
    cut = tmp_path / "head.nii.gz"
    cut.write_bytes(data[:400])
    with pytest.raises(KidneysegError, match="truncated") as err:
        read_volume(cut)
    assert "head.nii.gz" in str(err.value)


def test_labels_outside_range(tmp_path: Path, phantom_volume) -> None:
    arr = phantom_volume.labels.array.copy()
    arr[0, 0, 0] = 7
    path = write_volume(phantom_volume.labels.with_array(arr), tmp_path / "seg.nii.gz")
    with pytest.raises(KidneysegError, match=r"outside 0-3 \(found \[7\]\)") as err:
        read_labels(path)
    assert "seg.nii.gz" in str(err.value)
    neg = phantom_volume.labels.with_array(arr.astype(np.int16) - 8)
    with pytest.raises(KidneysegError, match="outside 0-3"):
        read_labels(write_volume(neg, tmp_path / "neg.nii.gz"))
    frac = phantom_volume.labels.with_array(arr.astype(np.float32) * 0.25)
    with pytest.raises(KidneysegError, match="non-integer"):
        read_labels(write_volume(frac, tmp_path / "frac.nii.gz"))


def test_labels_read_as_uint8_and_checked_against_image(phantom_nifti) -> None:
    image = read_image(phantom_nifti.image)
    labels = read_labels(phantom_nifti.labels, like=image)
    assert labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, phantom_nifti.phantom.labels.array)
    assert labels.same_geometry(phantom_nifti.phantom.image)


def test_label_geometry_mismatch(tmp_path: Path, phantom_volume) -> None:
    image = phantom_volume.image
    lab = phantom_volume.labels
    cropped = write_volume(
        Volume(lab.array[:, :, :5].copy(), lab.spacing, lab.origin, lab.direction),
        tmp_path / "cropped.nii.gz",
    )
    with pytest.raises(KidneysegError, match="shape .* differs") as err:
        read_labels(cropped, like=image)
    assert "cropped.nii.gz" in str(err.value)
    moved = write_volume(
        Volume(lab.array, lab.spacing, (0.0, 0.0, 0.0), lab.direction), tmp_path / "moved.nii.gz"
    )
    with pytest.raises(KidneysegError, match="geometry differs"):
        read_labels(moved, like=image)
    flipped = Volume(lab.array, lab.spacing, lab.origin, np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(KidneysegError, match="axcodes LPI vs RAS"):
        check_same_geometry(image, flipped, "flipped.nii.gz")


# ---- helpers ---------------------------------------------------------------------------------


def test_names_and_label_rule() -> None:
    assert is_image_file(Path("a/b.NII.GZ")) and is_image_file(Path("x.mha"))
    assert not is_image_file(Path("x.png"))
    assert case_id_from_path("p/case_00001.nii.gz") == "case_00001"
    assert case_id_from_path("p/ct-3slice") == "ct-3slice"
    assert looks_like_labels(np.array([0, 1, 3], np.int32))
    assert looks_like_labels(np.array([0.0, 1.0]))
    assert not looks_like_labels(np.array([0.0, 0.5]))
    assert not looks_like_labels(np.array([0, 4], np.uint8))
    assert not looks_like_labels(np.array([-1000, 40], np.int16))


def test_check_hounsfield_is_the_one_ct_rule() -> None:
    check_hounsfield(np.array([-1024, -100, 40, 1200], np.int16))
    check_hounsfield(np.array([-3024.0, 0.0, 3071.0]))
    check_hounsfield(np.array([0.0, 80.0, 255.0], np.float32))  # a CT clipped to [0, 255] HU
    refused = [
        (np.array([0.0, 0.5, 1.0]), r"values lie in \[0, 1\].*normalised image or a mask"),
        (np.array([0, 1, 2, 3], np.uint8), "label map"),
        (np.array([-1.0, 3.0, 40.0]), "standardised or constant"),
        (np.zeros(0, np.int16), "image is empty"),
    ]
    for values, match in refused:
        with pytest.raises(KidneysegError, match=match) as err:
            check_hounsfield(values, "ct.nii.gz")
        assert str(err.value).startswith("ct.nii.gz: ") and "\n" not in str(err.value)


def test_file_order_keeps_values_in_any_layout(tmp_path: Path) -> None:
    # What `write_volume` hands ITK and compares the read-back with: i fastest, same values,
    # whatever the layout (C order of an axial-first file, flips, permutations, odd sizes).
    base = np.arange(19 * 10 * 13, dtype=np.int16).reshape(19, 10, 13)
    layouts = [base, base[::-1], base[:, ::-1, ::-2], np.asfortranarray(base)[::-1]]
    layouts += [np.ascontiguousarray(base.transpose(p)).transpose(np.argsort(p)) for p in
                itertools.permutations(range(3))]  # fmt: skip
    for array in layouts:
        out = file_order(array)
        assert out.flags.f_contiguous and np.array_equal(out, array)
    fortran = np.asfortranarray(base)
    assert file_order(fortran) is fortran  # no copy when it already is
    vol = Volume(base[::-1], (0.8, 0.7, 2.5), direction=((0, 0, 1), (0, 1, 0), (-1, 0, 0)))
    back = read_volume(write_volume(vol, tmp_path / "c_order.nii.gz"))
    assert np.array_equal(back.array, vol.array) and back.same_geometry(vol)
