"""The cascade on whole volumes, with a hand-set network whose output is known exactly.

`make_model_dir` writes a tiny plain U-Net per phase whose logit is ``a * x + b`` at every
pixel (x = the normalised input), so with the normalisation records below the cascade labels
a voxel: kidney where HU > 100, tumor where HU > 250 inside the kidney region. Expected labels
then follow from the input file's own array, in its own index order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.config import resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.inference import Predictor
from kidneyseg.inputs import find_inputs, parse_shard, plan_prediction
from kidneyseg.io import check_hounsfield, read_image, read_labels, write_volume
from kidneyseg.models import build_model, save_checkpoint
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.stats import label_statistics
from kidneyseg.types import Volume, from_canonical

KIDNEY_NORM = NormalizationRecord("kidney", (0.0, 200.0), 100.0, 50.0)
TUMOR_NORM = NormalizationRecord("tumor", None, 250.0, 100.0)
TINY = [
    "model.architecture=unet_plain",
    "model.base_channels=4",
    "model.encoder_weights=none",
    "data.image_size=32",
    "inference.batch_size=4",
    # Exact expected labels need fp32: "auto" may pick bf16 on CPUs with native bf16.
    "inference.precision=fp32",
]
#: Direction of a KiTS-like file: index axes point I, P, L (axial axis first, flipped).
KITS_DIRECTION = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0))


def pixelwise_unet(a: float = 1.0, b: float = 0.0) -> torch.nn.Module:
    """A plain U-Net (base 4) set by hand so that logit = a * input + b at every pixel
    (`mixing_unet` with one input channel and one output)."""
    return mixing_unet((1.0,), [(a, b)], TINY)


def mixing_unet(
    weights: Sequence[float], heads: Sequence[tuple[float, float]], cfg_overrides: list[str]
) -> torch.nn.Module:
    """A plain U-Net with ``len(weights)`` input channels and one output per ``(a, b)`` of
    ``heads``: logit_c = a_c * sum_j(weights_j x_j) + b_c at every pixel.

    The first block carries s = sum_j(weights_j x_j) and -s (so ReLU loses nothing) to the last
    skip connection; the upsampling path is zeroed, the last block passes the skip through,
    head c takes a_c * (relu(s) - relu(-s)) + b_c.
    """
    overrides = [*cfg_overrides, f"model.classes={len(heads)}"]
    net = build_model(resolve_config(overrides=overrides).model)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)  # BN becomes the identity
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        first, last = net.down[0], net.merge[-1]
        for j, w in enumerate(weights):
            first[0].weight[0, j, 1, 1] = w
            first[0].weight[1, j, 1, 1] = -w
        first[3].weight[0, 0, 1, 1] = 1.0
        first[3].weight[1, 1, 1, 1] = 1.0
        width = last[0].weight.shape[1] // 2  # input = cat([upsampled, skip])
        last[0].weight[0, width + 0, 1, 1] = 1.0
        last[0].weight[1, width + 1, 1, 1] = 1.0
        last[3].weight[0, 0, 1, 1] = 1.0
        last[3].weight[1, 1, 1, 1] = 1.0
        for c, (a, b) in enumerate(heads):
            net.head.weight[c, 0] = a
            net.head.weight[c, 1] = -a
            net.head.bias[c] = b
    return net.eval()


def make_model_dir(root: Path, overrides: list[str] | None = None, **extra: object) -> Path:
    """RUN_DIR with kidney/ and tumor/ checkpoints of `pixelwise_unet`."""
    cfg = resolve_config(overrides=TINY + list(overrides or []))
    for phase, norm in (("kidney", KIDNEY_NORM), ("tumor", TUMOR_NORM)):
        save_checkpoint(
            root / phase / "best.safetensors", pixelwise_unet(), cfg, phase, norm, extra or None
        )
    return root


def expected_labels(hu: np.ndarray) -> np.ndarray:
    """What the hand-set cascade must predict, voxel by voxel."""
    return np.select([hu > 250, hu > 100], [2, 1], 0).astype(np.uint8)


def phantom_canonical(shape: tuple[int, int, int] = (6, 32, 32), seed: int = 0) -> np.ndarray:
    """Canonical (z, y, x) HU: air, a body, two kidneys (one with a tumor); empty end slices."""
    z, y, x = shape
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, np.int16)
    hu[:, 2 : y - 2, 2 : x - 2] = 40 + rng.integers(-20, 20, (z, y - 4, x - 4))  # soft tissue
    hu[1 : z - 1, y // 4 : y // 2 + 4, 3 : x // 2 - 2] = 160  # right kidney
    hu[2 : z - 2, y // 4 + 2 : y // 4 + 6, 5:9] = 320  # its tumor
    hu[2 : z - 1, y // 3 : y // 2 + 6, x // 2 + 3 : x - 4] = 170  # left kidney
    return hu


def volume_from_canonical(
    canonical: np.ndarray,
    direction: tuple[tuple[float, ...], ...] = KITS_DIRECTION,
    spacing_zyx: tuple[float, float, float] = (2.5, 0.8, 0.7),
) -> Volume:
    """A file-order `Volume` whose canonical array is ``canonical``."""
    d = np.asarray(direction, dtype=np.float64)
    array = from_canonical(canonical, d)
    probe = Volume(array, (1.0, 1.0, 1.0), direction=direction)
    world = [w for w, _ in probe.world_axes]  # LPS axis of each index axis
    spacing = tuple(spacing_zyx[2 - w] for w in world)
    return Volume(np.ascontiguousarray(array), spacing, (-12.0, 30.0, 7.5), direction, "phantom")


def write_dicom_series(volume: Volume, folder: Path) -> Path:
    """A classic one-slice-per-file CT series of ``volume`` (axial axis last, LPS directions)."""
    import SimpleITK as sitk

    from kidneyseg.sitk import to_sitk

    folder.mkdir(parents=True)
    image = sitk.Cast(to_sitk(volume), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        for tag, value in {
            "0008|0060": "CT",
            "0020|000e": uid,
            "0020|000d": uid + ".1",
            "0008|0018": f"{uid}.2.{k}",
            "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3])),
            "0020|0032": "\\".join(
                f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))
            ),
            "0018|0050": str(image.GetSpacing()[2]),
            "0028|1052": "0",
            "0028|1053": "1",
        }.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(piece)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir, device="cpu", progress=False)


# ----------------------------------------------------------------------------- the cascade


def test_hand_set_network_is_affine() -> None:
    net = pixelwise_unet(a=2.0, b=-1.0)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(net(x), 2.0 * x - 1.0, atol=1e-4, rtol=1e-4)


def test_predict_volume_exact_labels_in_input_geometry(predictor: Predictor) -> None:
    volume = volume_from_canonical(phantom_canonical())
    labels = predictor.predict_volume(volume)
    assert labels.array.dtype == np.uint8
    assert labels.same_geometry(volume, atol=0)
    assert labels.spacing == volume.spacing and labels.origin == volume.origin
    np.testing.assert_array_equal(labels.array, expected_labels(volume.array))
    assert set(np.unique(labels.array).tolist()) == {0, 1, 2}


def test_phase2_runs_only_on_slices_with_kidney(predictor: Predictor) -> None:
    canonical = phantom_canonical((7, 32, 32))
    volume = volume_from_canonical(canonical)  # axial axis is file axis 0 here
    seen: dict[str, list[tuple[int, ...]]] = {"kidney": [], "tumor": []}
    hooks = [
        predictor.phases[name].model.register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].append(tuple(args[0].shape))
        )
        for name in seen
    ]
    try:
        predictor.predict_volume(volume)
    finally:
        for hook in hooks:
            hook.remove()
    kidney_slices = int(((canonical > 100).any(axis=(1, 2))).sum())
    assert 0 < kidney_slices < canonical.shape[0]
    assert sum(s[0] for s in seen["kidney"]) == canonical.shape[0]
    assert sum(s[0] for s in seen["tumor"]) == kidney_slices
    assert all(s[1:] == (1, 32, 32) for s in seen["kidney"] + seen["tumor"])
    assert max(s[0] for s in seen["kidney"]) <= predictor.batch_size


@pytest.mark.parametrize(
    "perm, flips",
    [((2, 0, 1), (1,)), ((1, 2, 0), (0, 2)), ((0, 1, 2), (0, 1, 2))],
)
def test_permuted_or_flipped_copy_gives_permuted_labels(
    predictor: Predictor, perm: tuple[int, ...], flips: tuple[int, ...]
) -> None:
    # In-plane 40 x 36 (not the model's 32): the resize path must commute with orientation.
    base = volume_from_canonical(phantom_canonical((5, 40, 36)))
    d = base.direction_matrix
    array = base.array.transpose(perm)
    direction = d[:, list(perm)].copy()
    for axis in flips:
        array = np.flip(array, axis)
        direction[:, axis] *= -1
    copy = Volume(
        np.ascontiguousarray(array),
        tuple(base.spacing[p] for p in perm),
        base.origin,
        tuple(tuple(row) for row in direction),
        "copy",
    )
    np.testing.assert_array_equal(copy.to_canonical(), base.to_canonical())
    labels_base = predictor.predict_volume(base).array
    labels_copy = predictor.predict_volume(copy).array
    expected = labels_base.transpose(perm)
    for axis in flips:
        expected = np.flip(expected, axis)
    np.testing.assert_array_equal(labels_copy, expected)
    # The resize makes edges approximate, but the bulk is still right.
    assert (labels_base == expected_labels(base.array)).mean() > 0.97


def test_nifti_file_round_trip(predictor: Predictor, tmp_path: Path) -> None:
    volume = volume_from_canonical(
        phantom_canonical(), direction=((1, 0, 0), (0, 0, -1), (0, 1, 0))
    )
    src = write_volume(volume, tmp_path / "ct.nii.gz")
    out = tmp_path / "pred" / "labels.nii.gz"
    predictor.predict_file(src, out)
    ct = read_image(src)
    labels = read_labels(out)
    assert labels.same_geometry(ct)
    np.testing.assert_array_equal(labels.array, expected_labels(ct.array))
    assert [p.name for p in out.parent.iterdir()] == ["labels.nii.gz"]  # no temp files left


def test_dicom_series_input(predictor: Predictor, tmp_path: Path) -> None:
    pytest.importorskip("kidneyseg.dicom", reason="DICOM reader (kidneyseg.dicom) not available")
    lps = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    volume = volume_from_canonical(phantom_canonical(), direction=lps, spacing_zyx=(3.0, 0.9, 0.9))
    folder = write_dicom_series(volume, tmp_path / "series")
    out = tmp_path / "labels.nii.gz"
    predictor.predict_file(folder, out)
    ct = read_image(folder)
    labels = read_labels(out)
    assert labels.shape == volume.shape and labels.same_geometry(ct)
    np.testing.assert_allclose(labels.spacing, (0.9, 0.9, 3.0), rtol=1e-4)
    np.testing.assert_array_equal(labels.array, expected_labels(ct.array))


def test_min_component_override_removes_specks(model_dir: Path) -> None:
    canonical = phantom_canonical()
    canonical[0, 30, 30] = 150  # a one-voxel "kidney" speck, apart from everything
    volume = volume_from_canonical(canonical)
    plain = Predictor(model_dir, device="cpu", progress=False).predict_volume(volume)
    assert plain.to_canonical()[0, 30, 30] == 1
    strict = Predictor(
        model_dir, device="cpu", progress=False, overrides=["postprocess.min_component_ml=0.01"]
    )
    assert strict.config.postprocess.min_component_ml == 0.01
    cleaned = strict.predict_volume(volume).to_canonical()
    assert cleaned[0, 30, 30] == 0  # 1.4 uL < 10 uL
    np.testing.assert_array_equal(cleaned[1:], plain.to_canonical()[1:])  # big blocks stay


def test_tta_and_kidney_components_at_prediction_time(model_dir: Path) -> None:
    canonical = phantom_canonical()
    canonical[0, 30, 30] = 150  # a third, one-voxel "kidney", apart from the two real ones
    volume = volume_from_canonical(canonical)
    plain = Predictor(model_dir, device="cpu", progress=False)
    tuned = Predictor(
        model_dir,
        device="cpu",
        progress=False,
        overrides=["inference.tta=true", "postprocess.kidney_components=2"],
    )
    assert all(r.tta for r in tuned.phases.values())
    assert not any(r.tta for r in plain.phases.values())
    labels, kidney_prob, tumor_prob = tuned.predict_probabilities(volume)
    expected = expected_labels(canonical)
    expected[0, 30, 30] = 0  # the smallest of three components goes
    # The hand-set network is pixelwise, so it commutes with a flip: TTA keeps its answer.
    np.testing.assert_array_equal(labels.to_canonical(), expected)
    plain_labels, plain_kidney, plain_tumor = plain.predict_probabilities(volume)
    assert plain_labels.to_canonical()[0, 30, 30] == 1
    for ours, theirs in ((kidney_prob, plain_kidney), (tumor_prob, plain_tumor)):
        assert np.abs(ours.array.astype(int) - theirs.array).max() <= 1


def test_label_statistics_match_counts(predictor: Predictor) -> None:
    volume = volume_from_canonical(phantom_canonical())
    labels = predictor.predict_volume(volume)
    stats = label_statistics(labels)
    voxel_ml = 2.5 * 0.8 * 0.7 / 1000
    exp = expected_labels(volume.array)
    assert stats["voxels"]["kidney"] == int((exp == 1).sum()) > 0
    assert stats["voxels"]["tumor"] == int((exp == 2).sum()) > 0
    tumor_ml = stats["total"]["tumor_volume_ml"]
    assert tumor_ml == pytest.approx((exp == 2).sum() * voxel_ml, rel=1e-4)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "values, match",
    [
        (np.linspace(0.0, 1.0, 6 * 32 * 32), "normalised image or a mask"),
        (np.tile(np.arange(4), 6 * 32 * 8), "label map"),
        (np.random.default_rng(0).normal(0, 1, 6 * 32 * 32) * 3, "standardised or constant"),
    ],
)
def test_not_ct_is_refused(predictor: Predictor, values: np.ndarray, match: str) -> None:
    volume = Volume(values.reshape(6, 32, 32).astype(np.float32), (1.0, 1.0, 1.0), case_id="x")
    with pytest.raises(KidneysegError, match=match):
        predictor.predict_volume(volume)


def test_not_ct_error_names_the_file(predictor: Predictor, tmp_path: Path) -> None:
    src = write_volume(
        Volume(np.random.rand(4, 32, 32).astype(np.float32), (1, 1, 1)), tmp_path / "unit.nii.gz"
    )
    out = tmp_path / "out.nii.gz"
    with pytest.raises(KidneysegError, match="unit.nii.gz: not CT in HU: values lie in") as info:
        predictor.predict_file(src, out)
    assert str(src) in str(info.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["unit.nii.gz"]


def test_check_hounsfield_accepts_real_ct_ranges() -> None:
    check_hounsfield(np.array([-1024, -100, 40, 1200], np.int16))
    check_hounsfield(np.array([-3024.0, 0.0, 3071.0]))


def test_missing_phase(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    (run / "tumor" / "best.safetensors").unlink()
    with pytest.raises(KidneysegError, match="no tumor/best.safetensors"):
        Predictor(run, device="cpu")
    with pytest.raises(KidneysegError, match="model folder not found"):
        Predictor(tmp_path / "nowhere", device="cpu")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    (run / "kidney" / "best.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(KidneysegError, match="corrupt") as info:
        Predictor(run, device="cpu")
    assert "kidney" in str(info.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    path = run / "tumor" / "best.safetensors"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(KidneysegError, match="corrupt"):
        Predictor(run, device="cpu")


def test_incompatible_checkpoint_version(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run", format_version=99)
    with pytest.raises(KidneysegError, match="incompatible"):
        Predictor(run, device="cpu")


def test_checkpoint_of_the_wrong_phase(tmp_path: Path) -> None:
    run = make_model_dir(tmp_path / "run")
    (run / "tumor" / "best.safetensors").write_bytes(
        (run / "kidney" / "best.safetensors").read_bytes()
    )
    with pytest.raises(KidneysegError, match="phase 'kidney', expected 'tumor'"):
        Predictor(run, device="cpu")


def test_prediction_time_settings_only(model_dir: Path) -> None:
    with pytest.raises(KidneysegError, match="data come from the checkpoints"):
        Predictor(model_dir, device="cpu", overrides=["data.image_size=64"])
    with pytest.raises(KidneysegError, match="batch size"):
        Predictor(model_dir, device="cpu", batch_size=-1)
    with pytest.raises(KidneysegError, match="unknown device"):
        Predictor(model_dir, device="gpu7")


# ----------------------------------------------------------------------------- planning


def test_parse_shard() -> None:
    assert parse_shard("3/3") == (3, 3) and parse_shard((1, 2)) == (1, 2)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(KidneysegError, match="1 <= K <= N"):
            parse_shard(bad)


def test_find_inputs_layouts(tmp_path: Path) -> None:
    volume = volume_from_canonical(phantom_canonical((3, 32, 32)))
    kits = tmp_path / "kits"
    for case in ("case_00002", "case_00001"):
        write_volume(volume, kits / case / "imaging.nii.gz")
    found, collection = find_inputs(kits)
    assert collection and [f.case_id for f in found] == ["case_00001", "case_00002"]
    plain = tmp_path / "plain"
    write_volume(volume, plain / "b.nrrd")
    write_volume(volume, plain / "a.nii.gz")
    (plain / "notes.txt").write_text("not an image")
    found, collection = find_inputs(plain)
    assert collection and found == [("a", plain / "a.nii.gz", None), ("b", plain / "b.nrrd", None)]
    assert find_inputs(plain / "a.nii.gz") == ([("a", plain / "a.nii.gz", None)], False)
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"")
    assert find_inputs(dicom) == ([("dicom", dicom, None)], False)
    with pytest.raises(KidneysegError, match="no such file"):
        find_inputs(tmp_path / "missing")


def test_plan_shards_and_outputs(tmp_path: Path) -> None:
    volume = volume_from_canonical(phantom_canonical((3, 32, 32)))
    for name in ("c", "a", "d", "b", "e"):
        write_volume(volume, tmp_path / "in" / f"{name}.nii.gz")
    out = tmp_path / "out"
    shards = [
        [c.case_id for c in plan_prediction(tmp_path / "in", out, f"{k}/2").cases] for k in (1, 2)
    ]
    assert shards == [["a", "c", "e"], ["b", "d"]]
    assert plan_prediction(tmp_path / "in", out).cases[0].target == out / "a.nii.gz"
    assert not out.exists()  # planning creates nothing
    with pytest.raises(KidneysegError, match="must be a folder"):
        plan_prediction(tmp_path / "in", tmp_path / "x.nii.gz")
    with pytest.raises(KidneysegError, match="overwrite an input"):
        plan_prediction(tmp_path / "in", tmp_path / "in")
    with pytest.raises(KidneysegError, match="unsupported output format"):
        plan_prediction(tmp_path / "in" / "a.nii.gz", tmp_path / "x.mhd")


def test_predict_paths_report_and_stats(predictor: Predictor, tmp_path: Path) -> None:
    volume = volume_from_canonical(phantom_canonical())
    for name in ("one", "two"):
        write_volume(volume, tmp_path / "in" / f"{name}.nii.gz")
    stats = tmp_path / "stats.json"
    report = predictor.predict_paths(tmp_path / "in", tmp_path / "out", stats_path=stats)
    assert report.ok and len(report.written) == 2 and not report.skipped
    again = predictor.predict_paths(tmp_path / "in", tmp_path / "out", stats_path=stats)
    assert not again.written and len(again.skipped) == 2
    data = json.loads(stats.read_text(encoding="utf-8"))
    assert set(data["cases"]) == {"one", "two"}  # skipped cases still get statistics
    assert (
        data["cases"]["one"]
        == report.stats["one"]
        == label_statistics(
            read_labels(tmp_path / "out" / "one.nii.gz"), read_image(tmp_path / "in" / "one.nii.gz")
        )
    )
    assert "2 skipped" in again.summary()


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    "relative", ["totalseg_example/example_ct.nii.gz", "totalseg_example/example_ct_dicom"]
)
def test_real_ct_prediction_in_input_geometry(
    predictor: Predictor, tmp_path: Path, relative: str
) -> None:
    src = SHARED / relative
    if not src.exists():
        pytest.skip(f"real test data not found at {src}")
    if src.is_dir():
        pytest.importorskip("kidneyseg.dicom", reason="DICOM reader not available")
    out = tmp_path / "labels.nii.gz"
    predictor.predict_file(src, out)
    ct, labels = read_image(src), read_labels(out)
    assert labels.same_geometry(ct) and labels.shape == ct.shape
    # 512/122-voxel slices go through the 32-pixel model and back: edges blur, bulk agrees.
    assert (labels.array == expected_labels(ct.array)).mean() > 0.9
