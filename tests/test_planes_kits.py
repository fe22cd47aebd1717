"""Multi-planar fusion with the other features: two-output phase 2 (tumor and cyst), 2.5D
context, flip TTA and ``postprocess.kidney_components``, end to end through `Predictor`.

* Hand-set pixelwise networks (`test_cysts`) in the axial and coronal planes of a cube of
  1 mm voxels, 32 = ``data.image_size`` on a side: a coronal slice is then a canonical (z, x)
  plane as it is (no resampling, no padding, no resize), so each plane's probabilities are
  known exactly, and the labels must follow the fused rule: each output's mean over the
  planes, a mass where the higher mean is above the threshold, a cyst where the cyst mean is
  the higher. The coronal cyst head alone would call kidney tissue a cyst; the mean must not.
* Tiny trained models (``data.planes=axial,coronal``, ``data.tumor_classes=tumor,cyst``,
  ``data.context_slices=3``) on uneven spacing: the coronal models read their neighbours along
  canonical y, and the fused probabilities are each plane's mean.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kidneyseg.config import resolve_config
from kidneyseg.formats.pred_dir import probability_path
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.fusion import fuse_phase
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.model_package import export_model
from kidneyseg.models import phase_config, read_checkpoint_meta, save_checkpoint
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.training import train_phase
from kidneyseg.types import CYST, KIDNEY, TUMOR
from test_cysts import CYST_HEAD, KITS, TUMOR_HEAD, kits_phantom, multi_output_unet
from test_dataset import write_prep_dir
from test_inference import KIDNEY_NORM, TINY, TUMOR_NORM, pixelwise_unet, volume_from_canonical
from test_training import tiny

#: The coronal model's cyst head: alone it would make the kidneys (160-170 HU) cysts.
CORONAL_CYST_HEAD = (0.5, 0.5)
CUBE = (32, 32, 32)
TTA = ["inference.tta=true"]


def _q(logit: np.ndarray) -> np.ndarray:
    """A plane's stored probability: round(sigmoid x 255)."""
    return np.rint(255.0 / (1.0 + np.exp(-logit)))


def _fused_labels(hu: np.ndarray, cyst_heads: list[tuple[float, float]]) -> np.ndarray:
    """Labels of the hand-set planes fused: the mean of each output's stored probability."""
    kidney = _q((np.clip(hu, 0, 200) - 100.0) / 50) > 127.5  # the same in every plane
    x = (hu * kidney - 250.0) / 100
    tumor = _q(TUMOR_HEAD[0] * x + TUMOR_HEAD[1])
    cyst = np.rint(np.mean([_q(a * x + b) for a, b in cyst_heads], axis=0))
    mass = kidney & (np.maximum(tumor, cyst) > 127.5)
    labels = np.where(kidney, KIDNEY, 0)
    labels[mass & (tumor >= cyst)] = TUMOR
    labels[mass & (cyst > tumor)] = CYST
    return labels.astype(np.uint8)


@pytest.fixture(scope="module")
def hand_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN_DIR: hand-set kidney and (tumor, cyst) models, axial and coronal."""
    root = tmp_path_factory.mktemp("planes_kits")
    cfg = resolve_config(overrides=[*TINY, *KITS])
    for folder, cyst_head in (("", CYST_HEAD), ("_coronal", CORONAL_CYST_HEAD)):
        kidney, tumor = root / f"kidney{folder}", root / f"tumor{folder}"
        save_checkpoint(kidney / "best.safetensors", pixelwise_unet(), cfg, "kidney", KIDNEY_NORM)
        net = multi_output_unet([TUMOR_HEAD, cyst_head])
        tumor_cfg = phase_config(cfg, "tumor")
        save_checkpoint(tumor / "best.safetensors", net, tumor_cfg, "tumor", TUMOR_NORM)
    return root


def _speckled_phantom() -> np.ndarray:
    hu = kits_phantom(CUBE)
    hu[0, 30, 30] = 150  # a third, one-voxel "kidney": kidney_components=2 removes it
    return hu


def test_two_outputs_fused_with_tta_and_kidney_components(hand_set: Path, tmp_path: Path) -> None:
    hu = _speckled_phantom()
    want = _fused_labels(hu, [CYST_HEAD, CORONAL_CYST_HEAD])
    assert set(np.unique(want).tolist()) == {0, KIDNEY, TUMOR, CYST}
    assert (want[hu == 260] == CYST).all() and (want[hu == 320] == TUMOR).all()
    coronal_alone = _fused_labels(hu, [CORONAL_CYST_HEAD])
    assert (coronal_alone[(hu == 160) | (hu == 170)] == CYST).all()  # the mean matters
    assert not (want[(hu == 160) | (hu == 170)] == CYST).any()
    want[0, 30, 30] = 0

    volume = volume_from_canonical(hu, spacing_zyx=(1.0, 1.0, 1.0))
    overrides = [*TTA, "postprocess.kidney_components=2"]
    predictor = Predictor(
        hand_set, device="cpu", progress=False, overrides=overrides, save_probabilities=True
    )
    assert {p: list(r) for p, r in predictor.planes.items()} == {
        "kidney": ["axial", "coronal"],
        "tumor": ["axial", "coronal"],
    }
    runners = [r for plane in predictor.planes.values() for r in plane.values()]
    assert all(r.tta for r in runners) and predictor.predicts_cysts
    source = write_volume(volume, tmp_path / "ct.nii.gz")
    out = tmp_path / "labels.nii.gz"
    predictor.predict_file(source, out)
    labels = read_labels(out, like=volume).to_canonical()
    np.testing.assert_array_equal(labels, want)
    # The probability files hold each output's mean over the planes.
    region = np.isin(want, (KIDNEY, TUMOR, CYST))
    x = (hu * region - 250.0) / 100
    cyst = read_image(probability_path(out, "cyst")).to_canonical()
    mean = np.rint((_q(0.5 * x + 0.1) + _q(0.5 * x + 0.5)) / 2)
    np.testing.assert_allclose(cyst[region], mean[region], atol=1)  # TTA: rounding only
    tumor = read_image(probability_path(out, "tumor")).to_canonical()
    np.testing.assert_allclose(tumor[region], _q(x)[region], atol=1)
    # The axial models alone: the ordinary cascade's answer with the axial cyst head.
    axial = Predictor(hand_set, device="cpu", progress=False, overrides=["inference.planes=axial"])
    alone = axial.predict_volume(volume).to_canonical()
    np.testing.assert_array_equal(alone, _fused_labels(hu, [CYST_HEAD]))


# ----------------------------------------------------------------------------- trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny PREP_DIR (with a cyst) and RUN_DIR: both phases, axial and coronal, kits, 2.5D."""
    root = tmp_path_factory.mktemp("planes_kits_trained")
    prep = write_prep_dir(root / "prep", size=32)
    cfg = tiny("train.epochs=1", "data.planes=axial,coronal", *KITS, "data.context_slices=3")
    for phase in ("kidney", "tumor"):
        train_phase(prep, root / "run", phase, cfg, progress=False)
    return prep, root / "run"


def test_trained_planes_with_cysts_context_and_tta(trained: tuple[Path, Path]) -> None:
    prep, run = trained
    meta = read_checkpoint_meta(run / "tumor_coronal" / "best.safetensors")
    assert meta.outputs == ("tumor", "cyst")
    assert (meta.config.model.in_channels, meta.config.model.classes) == (3, 2)
    # The coronal training data: slices along canonical y, 'z' spacing = the y spacing.
    view = open_prep_dir(run / "planes" / "coronal")
    case = view.split.train[0]
    assert view.spacing_mm(case)[0] == open_prep_dir(prep).spacing_mm(case)[1]
    slices = np.load(view.case_files(case)[2])
    assert slices.shape[1] == 3 and slices[:, 2].sum() > 0  # cyst pixels to learn from

    ct = np.load(prep / "cases" / "case_00003" / "image.npy")
    volume = volume_from_canonical(ct, spacing_zyx=(3.0, 0.8, 0.7))
    predictor = Predictor(run, device="cpu", progress=False, overrides=[*TTA, *TINY[-1:]])
    assert all(r.tta for p in predictor.planes.values() for r in p.values())
    spacings: dict[str, set[float]] = {}
    for phase, planes in predictor.planes.items():
        for plane, runner in planes.items():
            _record_spacing(runner, spacings.setdefault(f"{phase}_{plane}", set()))
    labels, maps = predictor.predict_probability_maps(volume)
    assert set(np.unique(labels.array).tolist()) <= {0, KIDNEY, TUMOR, CYST}
    assert list(maps) == ["kidney", "tumor", "cyst"]
    assert spacings["kidney_axial"] == {3.0} and spacings["kidney_coronal"] == {0.8}
    assert spacings["tumor_coronal"] <= {0.8}

    # The raw masks follow the rule on the fused probabilities ...
    ct_c, spacing = volume.to_canonical(), volume.canonical_spacing
    probs = {name: np.zeros(ct_c.shape, np.uint8) for name in ("kidney", "tumor", "cyst")}
    cyst = np.zeros(ct_c.shape, bool)
    kidney, tumor, _ = predictor.segment_canonical(
        ct_c, spacing, None, probs["kidney"], probs["tumor"], cyst, probs["cyst"]
    )
    np.testing.assert_array_equal(kidney, probs["kidney"] > 127.5)
    mass = np.maximum(probs["tumor"], probs["cyst"]) > 127.5
    np.testing.assert_array_equal(tumor, mass & (probs["tumor"] >= probs["cyst"]))
    np.testing.assert_array_equal(cyst, mass & (probs["cyst"] > probs["tumor"]))
    # ... which are each plane's own, averaged (phase 2 on the fused kidney region).
    tumor_runners = predictor.planes["tumor"]
    single = [fuse_phase({p: r}, ct_c, spacing, kidney)[0] for p, r in tumor_runners.items()]
    fused = np.stack([probs["tumor"], probs["cyst"]]).astype(float)
    np.testing.assert_allclose(fused, np.mean(single, axis=0), atol=1.0)


def _record_spacing(runner: PhaseRunner, seen: set[float]) -> None:
    """Wrap ``runner.segment`` to record the ``spacing_z`` of every call."""
    segment = runner.segment

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.add(kwargs.get("spacing_z"))
        return segment(*args, **kwargs)

    runner.segment = recording  # type: ignore[method-assign]


def test_plane_models_on_the_onnx_backend(
    hand_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from kidneyseg.onnx_backend import OnnxNetwork, export_run

    monkeypatch.setenv("KIDNEYSEG_HOME", str(tmp_path / "home"))
    run = Path(shutil.copytree(hand_set, tmp_path / "run"))
    assert Predictor(run, device="cpu", progress=False).backend == "torch"  # nothing exported
    exported = export_run(run)
    assert set(exported) == {"kidney", "tumor", "kidney_coronal", "tumor_coronal"}
    assert (run / "tumor_coronal" / "best.onnx").is_file()
    overrides = [*TTA, "postprocess.kidney_components=2"]
    predictor = Predictor(run, device="cpu", progress=False, overrides=overrides)
    assert predictor.backend == "onnx"
    runners = [r for plane in predictor.planes.values() for r in plane.values()]
    assert len(runners) == 4 and all(isinstance(r.model, OnnxNetwork) for r in runners)
    hu = _speckled_phantom()
    want = _fused_labels(hu, [CYST_HEAD, CORONAL_CYST_HEAD])
    want[0, 30, 30] = 0
    volume = volume_from_canonical(hu, spacing_zyx=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(predictor.predict_volume(volume).to_canonical(), want)
    # auto takes ONNX only when every model that runs is exported.
    (run / "kidney_coronal" / "best.onnx").unlink()
    assert Predictor(run, device="cpu", progress=False).backend == "torch"
    only_axial = ["inference.planes=axial"]
    assert Predictor(run, device="cpu", progress=False, overrides=only_axial).backend == "onnx"
    # A package of the plane models: exports by checkpoint digest in the user cache.
    package = tmp_path / "model.zip"
    export_model(run, package)
    assert len(export_run(package)) == 4 and not (run / "kidney_coronal" / "best.onnx").exists()
    assert Predictor(package, device="cpu", progress=False).backend == "onnx"
