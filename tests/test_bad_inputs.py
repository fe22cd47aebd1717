"""Issue 13: nothing silently wrong. Failed writes, corrupt inputs, inexact geometry, bad
checkpoints and resume states, bad configs: each refused with one line naming the file.

Each test here failed before the fix it covers. Disk-full tests use a real, tiny tmpfs when
this process may mount one (root), filled to the last byte, and are skipped otherwise; a
monkeypatched twin of the silent NIfTI truncation always runs.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from kidneyseg import compressed
from kidneyseg.cli import main
from kidneyseg.compressed import GZIP, ZLIB_OR_GZIP, inflate_checked
from kidneyseg.config import Config, ModelConfig, resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.inputs import plan_prediction
from kidneyseg.io import check_hounsfield, read_image, read_volume, write_volume
from kidneyseg.models import build_model, load_checkpoint, save_checkpoint
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.run_recorder import check_resume_state
from kidneyseg.sitk import read_sitk
from kidneyseg.types import Volume
from kidneyseg.utils import atomic_path

NORM = NormalizationRecord("kidney", (0.0, 200.0), 80.0, 60.0)


def one_line(err: KidneysegError | str, *names: str) -> str:
    text = str(err).rstrip("\n")
    assert "\n" not in text and "Traceback" not in text, text
    for name in names:
        assert name in text, text
    return text


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- 1. writes that fail must fail loudly ---------------------------------------------------


@contextlib.contextmanager
def _full_disk(path: Path) -> Iterator[Path]:
    """A tmpfs of 64 kB at ``path``, filled up (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        fd = os.open(path / ".filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with _full_disk(tmp_path / "full") as path:
        yield path


@pytest.mark.parametrize("suffix", ["nii.gz", "nii", "nrrd", "mha"])
def test_write_on_full_disk_fails_and_leaves_nothing(full_disk: Path, phantom_volume, suffix):
    # ITK's NIfTI writer only prints "wrote only N of M bytes" and returns.
    with pytest.raises(KidneysegError, match="cannot write") as err:
        write_volume(phantom_volume.image, full_disk / f"out.{suffix}")
    one_line(err.value, f"out.{suffix}")
    assert listing(full_disk) == [".filler"]


@pytest.mark.usefixtures("inflater")
def test_silently_truncated_write_is_caught(tmp_path: Path, phantom_volume, monkeypatch):
    real = sitk.WriteImage

    def truncating(image, name, *args, **kwargs):  # what a full disk does to ITK's NIfTI IO
        real(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", truncating)
    with pytest.raises(KidneysegError, match="cannot write") as err:
        write_volume(phantom_volume.image, tmp_path / "labels.nii.gz")
    one_line(err.value, "labels.nii.gz")
    assert listing(tmp_path) == []


def test_atomic_path_names_the_file_on_os_errors(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="No space left on device") as err:
        with atomic_path(tmp_path / "x.txt") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    one_line(err.value, "x.txt")
    assert listing(tmp_path) == []
    with pytest.raises(KidneysegError, match="not what was meant"):
        with atomic_path(tmp_path / "y.txt", verify=_refuse) as tmp:
            tmp.write_text("x")
    assert listing(tmp_path) == []


def _refuse(path: Path) -> None:
    raise KidneysegError("not what was meant", path=path)


def test_checkpoint_on_full_disk(full_disk: Path) -> None:
    model = build_model(ModelConfig(architecture="unet_plain", base_channels=4))
    with pytest.raises(KidneysegError, match="cannot write") as err:
        save_checkpoint(full_disk / "best.safetensors", model, Config(), "kidney", NORM)
    one_line(err.value, "best.safetensors")
    assert listing(full_disk) == [".filler"]


def test_evaluate_and_train_on_full_disk(tmp_path: Path, phantom_volume, capsys) -> None:
    preds, gt = tmp_path / "preds", tmp_path / "gt"
    write_volume(phantom_volume.labels, preds / "case_00000.nii.gz")
    write_volume(phantom_volume.labels, gt / "case_00000" / "segmentation.nii.gz")
    from test_dataset import write_prep_dir

    prep = write_prep_dir(tmp_path / "prep", size=32)
    with _full_disk(tmp_path / "full") as full:
        capsys.readouterr()
        assert main(["evaluate", str(preds), str(gt), str(full / "eval"), "--workers", "1"]) == 2
        one_line(capsys.readouterr().err, "error: ", "No space left on device")
        assert main(["train", str(prep), str(full / "run"), "--phase", "kidney"]) == 2
        one_line(capsys.readouterr().err, "error: ", "No space left on device")
        assert listing(full) == [".filler"] or not list((full / "run").rglob("*.safetensors"))


def test_existing_single_output_refused_without_overwrite(tmp_path: Path, phantom_volume):
    ct = write_volume(phantom_volume.image, tmp_path / "ct.nii.gz")
    out = write_volume(phantom_volume.labels, tmp_path / "labels.nii.gz")
    with pytest.raises(KidneysegError, match="already exists.*--overwrite") as err:
        plan_prediction(ct, out, overwrite=False)
    one_line(err.value, "labels.nii.gz")
    assert plan_prediction(ct, out, overwrite=True).cases[0].target == out
    # Folder mode is unchanged: existing outputs are skipped by the predictor, not refused.
    (tmp_path / "cases").mkdir()
    write_volume(phantom_volume.image, tmp_path / "cases" / "a.nii.gz")
    write_volume(phantom_volume.labels, tmp_path / "pred" / "a.nii.gz")
    assert len(plan_prediction(tmp_path / "cases", tmp_path / "pred", overwrite=False).cases) == 1


# ---- 2. corrupt input is never read as CT ---------------------------------------------------


def _damage(path: Path, where: float, fn=lambda b: bytes(len(b))) -> Path:
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i : i + 40] = fn(data[i : i + 40])
    path.write_bytes(bytes(data))
    return path


def _random_ct(shape=(40, 48, 32)) -> Volume:
    rng = np.random.default_rng(0)  # noise compresses badly: damage lands in the voxels
    return Volume(rng.integers(-1000, 1500, shape).astype(np.int16), (0.8, 0.8, 2.0))


@pytest.mark.usefixtures("inflater")
def test_nifti_with_bad_gzip_crc(tmp_path: Path) -> None:
    path = write_volume(_random_ct((64, 64, 40)), tmp_path / "ct.nii.gz")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer; the size trailer is intact
    path.write_bytes(bytes(data))
    with pytest.raises(KidneysegError, match="corrupt") as err:
        read_volume(path)
    one_line(err.value, "ct.nii.gz")
    _damage(write_volume(_random_ct(), tmp_path / "mid.nii.gz"), 0.5)
    with pytest.raises(KidneysegError, match="corrupt|truncated"):
        read_volume(tmp_path / "mid.nii.gz")


@pytest.mark.usefixtures("inflater")
@pytest.mark.parametrize("suffix", ["mha", "nrrd"])
def test_damaged_compressed_mha_nrrd(tmp_path: Path, suffix: str) -> None:
    path = _damage(write_volume(_random_ct(), tmp_path / f"ct.{suffix}"), 0.5)
    with pytest.raises(KidneysegError, match="corrupt") as err:
        read_volume(path)
    one_line(err.value, f"ct.{suffix}")


@pytest.mark.usefixtures("inflater")
def test_itk_messages_while_reading_are_failures(tmp_path: Path) -> None:
    # A MetaImage whose zlib header is broken: ITK prints "Uncompress failed", reads zeros.
    path = write_volume(_random_ct(), tmp_path / "ct.mha")
    data = path.read_bytes()
    start = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    path.write_bytes(data[:start] + b"\xff\xff\xff\xff" + data[start + 4 :])
    with pytest.raises(KidneysegError, match="Uncompress failed"):
        read_sitk(path)  # ITK's own read, without the payload check in front of it
    with pytest.raises(KidneysegError, match="corrupt"):
        read_volume(path)


@pytest.mark.usefixtures("inflater")
def test_truncated_nifti_says_how_much_it_holds(tmp_path: Path) -> None:
    data = write_volume(_random_ct(), tmp_path / "ct.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(KidneysegError, match=r"truncated file: holds (\d+) of the") as err:
        read_volume(cut)
    held = int(str(err.value).split("holds ")[1].split()[0])
    assert 0 < held < 40 * 48 * 32 * 2  # roughly half, never "0 of N"


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


def test_inflate_checks_every_stream_with_either_inflater(tmp_path: Path, inflater) -> None:
    # The same verdicts with ISA-L's inflater and with zlib's (the fallback): every checksum,
    # length and cut is caught, valid multi-member and zero-padded streams pass.
    raw = np.random.default_rng(1).integers(0, 255, 60_000, dtype=np.uint8).tobytes() + bytes(
        200_000
    )
    gz, zl = gzip.compress(raw), zlib.compress(raw)
    good = {"gz": (gz, GZIP), "two members": (gzip.compress(raw[:999]) + gzip.compress(raw[999:]),
            GZIP), "zero padded": (gz + bytes(512), GZIP), "zlib": (zl, ZLIB_OR_GZIP),
            "gzip as auto": (gz, ZLIB_OR_GZIP)}  # fmt: skip
    for name, (data, wbits) in good.items():
        (tmp_path / "f").write_bytes(data)
        assert inflate_checked(tmp_path / "f", len(raw), wbits=wbits) == raw, name
    bad = {
        "corrupt": [(_flip(gz, len(gz) - 8), GZIP), (_flip(gz, len(gz) - 3), GZIP),  # CRC, size
                    (_flip(gz, len(gz) // 2), GZIP), (_flip(zl, len(zl) - 1), ZLIB_OR_GZIP),
                    (b"\x1f\x8c" + gz[2:], GZIP)],
        "truncated": [(gz[: len(gz) // 2], GZIP), (gz[:-4], GZIP), (zl[:-2], ZLIB_OR_GZIP),
                      (gz[:20], GZIP)],
    }  # fmt: skip
    for match, cases in bad.items():
        for data, wbits in cases:
            (tmp_path / "f").write_bytes(data)
            with pytest.raises(KidneysegError, match=match) as err:
                inflate_checked(tmp_path / "f", len(raw), wbits=wbits)
            one_line(err.value, "f")


def test_fast_inflater_is_used_when_installed() -> None:
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    assert compressed.INFLATE is isal_zlib


def test_detached_header_names_missing_data_file(tmp_path: Path) -> None:
    for header, text in (
        ("ct.nhdr", "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 5 6\nencoding: raw\n"
                    "data file: ct.raw\n"),
        ("ct.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_SHORT\n"
                   "ElementDataFile = ct.raw\n"),
    ):  # fmt: skip
        (tmp_path / header).write_text(text)
        with pytest.raises(KidneysegError, match="missing") as err:
            read_volume(tmp_path / header)
        one_line(err.value, header, "ct.raw")


def test_dicom_slice_cut_short_is_named(tmp_path: Path, phantom_volume, dicom_writer) -> None:
    folder = dicom_writer(phantom_volume.image, tmp_path / "series")
    victim = sorted(folder.iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:700])  # header intact, pixel data cut
    with pytest.raises(KidneysegError, match="cut short") as err:
        read_volume(folder)
    one_line(err.value, victim.name)


def test_dicom_instance_number_gap(tmp_path: Path, phantom_volume, dicom_writer) -> None:
    import pydicom

    folder = dicom_writer(phantom_volume.image, tmp_path / "series")
    for f in folder.iterdir():  # renumber so one number is skipped; positions stay regular
        ds = pydicom.dcmread(f)
        if ds.InstanceNumber >= 5:
            ds.InstanceNumber += 1
            ds.save_as(f)
    with pytest.raises(KidneysegError, match="InstanceNumber.*missing") as err:
        read_volume(folder)
    one_line(err.value, "series")


@pytest.mark.parametrize("modality", ["MR", "SEG", "RTSTRUCT"])
def test_dicom_that_is_not_ct(tmp_path: Path, phantom_volume, dicom_writer, modality) -> None:
    folder = dicom_writer(phantom_volume.image, tmp_path / "series", modality=modality)
    with pytest.raises(KidneysegError, match=f"Modality is {modality}") as err:
        read_image(folder)
    one_line(err.value, "series")
    assert read_volume(folder).metadata["modality"] == modality  # info still describes it


def test_real_dicom_seg_is_not_ct(shared_data: Path) -> None:
    with pytest.raises(KidneysegError, match="Modality is SEG"):
        read_image(shared_data / "dcmqi_ct3slice" / "liver.dcm")


def test_series_chosen_by_number_and_unknown_uid(tmp_path, phantom_volume, dicom_writer):
    root = tmp_path / "two"
    dicom_writer(phantom_volume.image, root / "a", blank_uids=True, description="first")
    dicom_writer(phantom_volume.image, root / "b", blank_uids=True, description="second")
    with pytest.raises(KidneysegError, match=r"\[1\].*\[2\].*--series N"):
        read_volume(root)
    assert read_volume(root, series="2").metadata["series_description"] == "second"
    with pytest.raises(KidneysegError, match="no series with UID 1.2.3"):
        read_volume(root, series="1.2.3")


def test_one_ct_rule_refuses_mr_and_8bit_but_keeps_clipped_ct(shared_data: Path) -> None:
    refused = [
        (np.linspace(0, 4000, 1000).astype(np.int16), "MR-like"),
        (np.linspace(0, 255, 1000).astype(np.uint8), "8-bit"),
        (np.linspace(0, 4095, 1000).astype(np.uint16), "rescale intercept"),
    ]
    for values, match in refused:
        with pytest.raises(KidneysegError, match=match):
            check_hounsfield(values, "x.nii.gz")
    check_hounsfield(np.linspace(0, 255, 1000).astype(np.float32))  # CT clipped to [0, 255]
    for image in sorted((shared_data / "kits19_slices").glob("*/imaging.nii.gz"))[:5]:
        check_hounsfield(read_image(image).array, image)  # the real training slices pass


# ---- 3. geometry exact or refused -----------------------------------------------------------


def _nifti(path: Path, pixdim=(1.0, 2.0, 3.0), affine=None) -> Path:
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((4, 5, 6))
    header.set_data_dtype(np.int16)
    header.set_qform(np.diag([1.0, 2.0, 3.0, 1.0]), 1)  # an orthogonal qform, and the sform:
    header.set_sform(np.diag([1.0, 2.0, 3.0, 1.0]) if affine is None else affine, 1)
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), None, header), path)
    data = bytearray(path.read_bytes())  # pixdim[1:4] at bytes 80-91; nibabel refuses <= 0
    data[80:92] = np.asarray(pixdim, "<f4").tobytes()
    path.write_bytes(bytes(data))
    return path


def test_nifti_geometry_itk_would_change(tmp_path: Path) -> None:
    skew = np.diag([1.0, 2.0, 3.0, 1.0])
    skew[0, 1] = 0.02
    cases = {
        "neg.nii": (_nifti(tmp_path / "neg.nii", pixdim=(-1, -2, -3)), "negative voxel size"),
        "zero.nii": (_nifti(tmp_path / "zero.nii", pixdim=(0, 2, 3)), "zero"),
        "skew.nii": (_nifti(tmp_path / "skew.nii", affine=skew), "sheared"),
    }
    for name, (path, match) in cases.items():
        with pytest.raises(KidneysegError, match=match) as err:
            read_volume(path)
        one_line(err.value, name)
    read_volume(_nifti(tmp_path / "fine.nii"))


@pytest.mark.parametrize("spacing", [1e6, 1e-6])
def test_implausible_spacing(tmp_path: Path, spacing: float) -> None:
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    image.SetSpacing((1.0, spacing, 1.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    with pytest.raises(KidneysegError, match="implausible voxel size") as err:
        read_volume(tmp_path / "ct.nrrd")
    one_line(err.value, "ct.nrrd")


def test_non_orthogonal_direction_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "shear.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        b"sizes: 4 5 6\nspace directions: (1,0,0) (0.7,0.7,0) (0,0,1)\nencoding: raw\n"
        b"endian: little\nspace origin: (0,0,0)\n\n" + bytes(4 * 5 * 6 * 2)
    )
    with pytest.raises(KidneysegError, match="orthonormal|sheared") as err:
        read_volume(path)
    one_line(err.value, "shear.nrrd")


# ---- 4. checkpoints and resume --------------------------------------------------------------


def _tiny_checkpoint(path: Path, norm: NormalizationRecord = NORM) -> Path:
    cfg = resolve_config(
        overrides=["model.architecture=unet_plain", "model.base_channels=4", "data.image_size=32"]
    )
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg.model), cfg, "kidney", norm)
    return path


def _rewrite(path: Path, state=None, header=None, raw: str | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["kidneyseg"])
    state = load_file(str(path)) if state is None else state
    text = raw if raw is not None else json.dumps(header(meta) if header else meta)
    save_file(state, str(path), metadata={"kidneyseg": text})
    return path


def test_checkpoint_refusals_name_the_file(tmp_path: Path) -> None:
    def edited(change):
        def apply(meta):
            change(meta)
            return meta

        return apply

    from safetensors.torch import load_file

    def nan_state(p):
        state = load_file(str(p))
        next(v for v in state.values() if v.is_floating_point())[0] = float("nan")
        return state

    cases = {
        "size": (dict(header=edited(lambda m: m["config"]["data"].update(image_size=64))),
                 "digest"),
        "json": (dict(raw="{not json"), "not JSON"),
        "key": (dict(header=edited(lambda m: m["config"]["train"].update(colour=1))),
                "unknown key train.colour"),
        "arch": (dict(header=edited(lambda m: m["config"]["model"].update(base_channels=8))),
                 "do not fit|digest"),
        "std0": (dict(header=edited(lambda m: m["normalization"].update(std=0.0))), "std"),
        "mean": (dict(header=edited(lambda m: m["normalization"].update(mean=float("nan")))),
                 "mean"),
        "window": (dict(header=edited(lambda m: m["normalization"].update(window=[200, 0]))),
                   "window"),
    }  # fmt: skip
    for name, (edit, match) in cases.items():
        path = _rewrite(_tiny_checkpoint(tmp_path / f"{name}.safetensors"), **edit)
        with pytest.raises(KidneysegError, match=match) as err:
            load_checkpoint(path)
        assert len(one_line(err.value, f"{name}.safetensors")) < 400
    path = _tiny_checkpoint(tmp_path / "nan.safetensors")
    _rewrite(path, state=nan_state(path), header=lambda m: {k: v for k, v in m.items()
                                                             if k != "digest"})  # fmt: skip
    with pytest.raises(KidneysegError, match="NaN or infinite") as err:
        load_checkpoint(path)
    one_line(err.value, "nan.safetensors")
    # A checkpoint written before the digest existed still loads.
    old = _rewrite(_tiny_checkpoint(tmp_path / "old.safetensors"),
                   header=lambda m: {k: v for k, v in m.items() if k != "digest"})  # fmt: skip
    load_checkpoint(old)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_resume_state_refusals(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1, "loops": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 1, "loops": {}, "x": _Exploit()}, evil)
    other = tmp_path / "kidney.ckpt"
    torch.save(
        {"state_dict": {}, "epoch": 1, "loops": {},
         "callbacks": {"RunRecorder": {"phase": "kidney", "best_loss": 1.0, "best_epoch": 1}}},
        other,
    )  # fmt: skip
    for path, match in ((truncated, "damaged"), (evil, "damaged"), (other, "kidney phase")):
        with pytest.raises(KidneysegError, match=match) as err:
            check_resume_state(path, "tumor")
        text = one_line(err.value, path.name)
        assert "weights_only" not in text
    assert not (tmp_path / "pwned").exists()
    check_resume_state(other, "kidney")


def test_kill_between_last_ckpt_and_best_is_recoverable(tmp_path: Path, monkeypatch) -> None:
    import kidneyseg.run_recorder as recorder
    from kidneyseg.models import read_checkpoint_meta
    from kidneyseg.training import train_phase
    from test_dataset import write_prep_dir
    from test_training import rows, tiny

    prep = write_prep_dir(tmp_path / "prep", size=32)
    real = recorder.save_checkpoint

    def killed(path, *args, **kwargs):
        if Path(path).name == "best.safetensors":
            raise KeyboardInterrupt("killed")  # after last.ckpt, before best.safetensors
        return real(path, *args, **kwargs)

    monkeypatch.setattr(recorder, "save_checkpoint", killed)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_phase(prep, run, "kidney", tiny("train.epochs=2"), progress=False)
    assert (run / "kidney" / "last.ckpt").is_file()
    assert not (run / "kidney" / "best.safetensors").exists()
    monkeypatch.setattr(recorder, "save_checkpoint", real)
    result = train_phase(prep, run, "kidney", tiny("train.epochs=2"), resume=True, progress=False)
    assert result.best_checkpoint.is_file()
    best_epoch = read_checkpoint_meta(result.best_checkpoint).extra["epoch"]
    assert best_epoch == result.best_epoch
    assert [int(r["epoch"]) for r in rows(run, "kidney")] == [1, 2]


# ---- 5. configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, match",
    [
        ("preprocess.seed=-1", "preprocess.seed"),
        ("train.lr=inf", "finite"),
        ("data.noise_std=inf", "finite"),
        ("data.kidney_window=0,1e400", "finite"),
    ],
)
def test_config_values_refused(override: str, match: str) -> None:
    with pytest.raises(KidneysegError, match=match) as err:
        resolve_config(overrides=[override])
    one_line(err.value)


def test_binary_config_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(gzip.compress(b"train: {lr: 1}") + b"\xff\xfe")
    with pytest.raises(KidneysegError, match="not text") as err:
        resolve_config(config_file=path)
    one_line(err.value, "cfg.yaml")


# ---- every command: exit 2 and one line -----------------------------------------------------


def test_each_command_gives_one_line_errors(tmp_path: Path, phantom_volume, capsys) -> None:
    from test_inference import make_model_dir

    bad = tmp_path / "bad.nii.gz"
    write_volume(_random_ct(), bad)
    data = bytearray(bad.read_bytes())
    data[-8] ^= 0xFF
    bad.write_bytes(bytes(data))
    kits = tmp_path / "kits" / "case_00000"
    kits.mkdir(parents=True)
    (kits / "imaging.nii.gz").write_bytes(bad.read_bytes())
    write_volume(Volume(np.zeros((40, 48, 32), np.uint8), (0.8, 0.8, 2.0)),
                 kits / "segmentation.nii.gz")  # fmt: skip
    binary = tmp_path / "cfg.json"
    binary.write_bytes(b"\x89PNG\x00\xff")
    preds, gt = tmp_path / "preds", tmp_path / "gt"
    write_volume(phantom_volume.labels, preds / "case_00000.nii.gz")
    (gt / "case_00000").mkdir(parents=True)
    (gt / "case_00000" / "segmentation.nii.gz").write_bytes(bad.read_bytes())
    model = make_model_dir(tmp_path / "model")
    commands = [
        ["info", str(bad)],
        ["preprocess", str(tmp_path / "kits"), str(tmp_path / "prep"), "--workers", "1"],
        ["preprocess", str(tmp_path / "kits"), str(tmp_path / "p2"), "--config", str(binary)],
        ["train", str(tmp_path / "prep"), str(tmp_path / "run"), "--phase", "kidney",
         "--set", "preprocess.seed=-1"],
        ["predict", str(bad), str(tmp_path / "out.nii.gz"), "--model", str(model),
         "--device", "cpu", "--no-progress"],
        ["evaluate", str(preds), str(gt), str(tmp_path / "eval"), "--workers", "1"],
    ]  # fmt: skip
    for argv in commands:
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, (argv, captured)
        lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "Traceback" not in captured.err, (argv, captured.err)
