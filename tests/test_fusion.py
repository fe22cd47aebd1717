"""Multi-planar prediction: the mean of the plane models, checked by hand on fake runners and
end to end on tiny models trained in all three planes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kidneyseg.config import resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.run_dir import file_sha256, model_id, model_id_from_digests
from kidneyseg.fusion import segment_planes
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.localization import segment_cascade
from kidneyseg.model_card import format_card, model_card
from kidneyseg.model_package import export_model
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.planes import PlaneGrid, slices_with
from kidneyseg.training import train_phase
from kidneyseg.types import Volume
from test_dataset import write_prep_dir
from test_inference import KITS_DIRECTION, volume_from_canonical
from test_training import tiny

SHAPE, SPACING = (6, 8, 10), (2.0, 1.0, 1.0)
FP32 = ["inference.precision=fp32"]


class FakeRunner:
    """Fills each plane slice's probability with ``fill(slice index)`` (0..255)."""

    outputs = ("tumor",)

    def __init__(self, fill: Callable[[npt.NDArray[np.intp]], npt.NDArray[np.int64]]) -> None:
        self.fill = fill
        self.batch_size = 4
        self.config = resolve_config()
        self.calls: list[tuple[tuple[int, ...], object, float | None]] = []

    def segment(self, ct, slices, region=None, progress=None, probabilities=None, spacing_z=None):  # noqa: ANN001, ANN201
        want = (1, len(slices), *ct.shape[1:])
        assert probabilities is not None and probabilities.shape == want
        self.calls.append((tuple(int(i) for i in slices), region, spacing_z))
        probabilities[...] = self.fill(np.asarray(slices))[None, :, None, None]
        return probabilities[0] > 127


def _below(limit: int | None) -> FakeRunner:
    """255 on plane slices with an index below ``limit`` (everywhere when None), else 0."""
    if limit is None:
        return FakeRunner(lambda idx: np.full(len(idx), 255))
    return FakeRunner(lambda idx: np.where(idx < limit, 255, 0))


def _fakes(axial: int | None, coronal: int | None, sagittal: int | None) -> dict[str, FakeRunner]:
    return {"axial": _below(axial), "coronal": _below(coronal), "sagittal": _below(sagittal)}


def test_fusion_is_the_mean_of_the_planes() -> None:
    ct = np.zeros(SHAPE, np.int16)
    kidney_runners = _fakes(3, 4, 5)  # 255 where z < 3 / y < 4 / x < 5
    tumor_runners = _fakes(None, None, None)
    tumor_runners["sagittal"].fill = lambda idx: np.zeros(len(idx), np.int64)
    settings = resolve_config().inference
    k_prob, t_prob = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    runners = {"kidney": kidney_runners, "tumor": tumor_runners}
    kidney, tumor, region = segment_planes(
        runners,  # type: ignore[arg-type]
        ct,
        SPACING,
        settings,
        kidney_prob=k_prob,
        tumor_prob=t_prob,
    )
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    votes = (z < 3).astype(int) + (y < 4) + (x < 5)
    np.testing.assert_array_equal(k_prob, np.rint(votes * 255 / 3))  # 0, 85, 170, 255
    np.testing.assert_array_equal(kidney, votes >= 2)
    # Phase 2 sees the fused region: each plane only on the slices that cut it.
    np.testing.assert_array_equal(region, kidney)
    for plane, runner in tumor_runners.items():
        ran = sorted(i for call in runner.calls for i in call[0])
        assert ran == slices_with(kidney, PlaneGrid(plane, SHAPE, SPACING)).tolist()
        assert all(call[1] is not None for call in runner.calls)
    # A 2.5D model's neighbours lie along the plane's slicing axis: its spacing is passed.
    for plane, runner in kidney_runners.items():
        axis = PlaneGrid(plane, SHAPE, SPACING).axis
        assert {call[2] for call in runner.calls} == {SPACING[axis]}
    # Mean of 255, 255 and 0 inside the region, 0 outside it.
    np.testing.assert_array_equal(t_prob, np.where(kidney, 170, 0))
    np.testing.assert_array_equal(tumor, kidney)
    # The masks do not depend on whether the probabilities are kept.
    again = segment_planes(runners, ct, SPACING, settings)  # type: ignore[arg-type]
    for a, b in zip(again, (kidney, tumor, region), strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_plane_grows_the_region_in_its_own_slices() -> None:
    ct = np.zeros(SHAPE, np.int16)
    kidney_runners = _fakes(1, 1, 1)  # kidney where two of z, y, x are 0: three lines
    tumor_runners = _fakes(None, None, None)
    for runner in tumor_runners.values():
        runner.config = resolve_config(overrides=["data.region_margin_mm=1.5"])
    t_prob = np.zeros(SHAPE, np.uint8)
    runners = {"kidney": kidney_runners, "tumor": tumor_runners}
    settings = resolve_config().inference
    kidney, _, region = segment_planes(runners, ct, SPACING, settings, tumor_prob=t_prob)  # type: ignore[arg-type]
    assert kidney.sum() == 8 + 6 + 10 - 2 and region[kidney].all() and region.sum() > kidney.sum()
    # Each plane's probability is 255 inside its own grown region and 0 outside it.
    assert set(np.unique(t_prob)) <= {0, 85, 170, 255}
    np.testing.assert_array_equal(t_prob > 0, region)
    assert (t_prob[kidney] == 255).all() and (t_prob[region & ~kidney] < 255).any()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny phantom PREP_DIR and a RUN_DIR with both phases in all three planes."""
    root = tmp_path_factory.mktemp("planes")
    prep = write_prep_dir(root / "prep", size=32)
    cfg = tiny("train.epochs=1", "data.planes=axial,coronal,sagittal")
    for phase in ("kidney", "tumor"):
        train_phase(prep, root / "run", phase, cfg, progress=False)
    return prep, root / "run"


def _volume(prep: Path) -> Volume:
    """A test case as a file-order volume (KiTS-like direction, uneven spacing)."""
    ct = np.load(prep / "cases" / "case_00003" / "image.npy")
    return volume_from_canonical(ct, KITS_DIRECTION, (3.0, 0.8, 0.8))


def _axial_copy(run: Path, dest: Path) -> Path:
    for phase in ("kidney", "tumor"):
        shutil.copytree(run / phase, dest / phase)
    return dest


def test_axial_only_folder_is_the_cascade_unchanged(
    cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    prep, run = cohort
    axial = _axial_copy(run, tmp_path / "axial")
    volume = _volume(prep)
    ct, spacing = volume.to_canonical(), volume.canonical_spacing
    predictor = Predictor(axial, device="cpu", progress=False, overrides=FP32)
    assert {p: list(r) for p, r in predictor.planes.items()} == {
        "kidney": ["axial"],
        "tumor": ["axial"],
    }
    k_prob, t_prob = np.zeros(ct.shape, np.uint8), np.zeros(ct.shape, np.uint8)
    got = predictor.segment_canonical(ct, spacing, None, k_prob, t_prob)
    runners = [PhaseRunner.load(axial / p / "best.safetensors", p) for p in ("kidney", "tumor")]
    for runner in runners:
        runner.configure(predictor.device, "fp32", predictor.batch_size, 0.5)
    k_ref, t_ref = np.zeros(ct.shape, np.uint8), np.zeros(ct.shape, np.uint8)
    want = segment_cascade(*runners, ct, spacing, predictor.config.inference, None, k_ref, t_ref)
    for a, b in zip((*got, k_prob, t_prob), (*want, k_ref, t_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same axial models in a multi-planar folder, asked for the axial planes only.
    only_axial = Predictor(
        run, device="cpu", progress=False, overrides=[*FP32, "inference.planes=axial"]
    )
    labels = only_axial.predict_volume(volume)
    np.testing.assert_array_equal(labels.array, predictor.predict_volume(volume).array)
    # An axial-only folder keeps its model id; plane models change the id.
    old = {p: file_sha256(axial / p / "best.safetensors") for p in ("kidney", "tumor")}
    assert model_id(axial) == model_id_from_digests(old) != model_id(run)


def test_three_planes_end_to_end(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    prep, run = cohort
    volume = _volume(prep)
    predictor = Predictor(run, device="cpu", progress=False, overrides=FP32)
    assert {p: list(r) for p, r in predictor.planes.items()} == {
        "kidney": ["axial", "coronal", "sagittal"],
        "tumor": ["axial", "coronal", "sagittal"],
    }
    labels, k_prob, t_prob = predictor.predict_probabilities(volume)
    for out in (labels, k_prob, t_prob):
        assert out.same_geometry(volume) and out.array.dtype == np.uint8
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    # Phase 1's fused probability is the mean of each plane's own (within rounding), and
    # the kidney region is where that mean is above the threshold.
    single = []
    for plane in ("axial", "coronal", "sagittal"):
        alone = Predictor(
            run, device="cpu", progress=False, overrides=[*FP32, f"inference.planes={plane}"]
        )
        single.append(alone.predict_probabilities(volume)[1].array.astype(float))
    np.testing.assert_allclose(k_prob.array, np.mean(single, axis=0), atol=1.0)
    ct, spacing = volume.to_canonical(), volume.canonical_spacing
    kidney, _, _ = predictor.segment_canonical(ct, spacing)
    np.testing.assert_array_equal(kidney, volume.with_array(k_prob.array).to_canonical() > 127.5)
    # Written to a file: read back on the input's exact grid.
    image_path = write_volume(volume, tmp_path / "ct.nii.gz")
    predictor.predict_file(image_path, tmp_path / "labels.nii.gz")
    written = read_labels(tmp_path / "labels.nii.gz", like=read_image(image_path))
    np.testing.assert_array_equal(written.array, labels.array)


def test_a_folder_with_fewer_planes(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    prep, run = cohort
    fewer = _axial_copy(run, tmp_path / "fewer")
    shutil.copytree(run / "kidney_coronal", fewer / "kidney_coronal")
    shutil.copytree(run / "tumor_sagittal", fewer / "tumor_sagittal")
    predictor = Predictor(fewer, device="cpu", progress=False, overrides=FP32)
    assert {p: list(r) for p, r in predictor.planes.items()} == {
        "kidney": ["axial", "coronal"],
        "tumor": ["axial", "sagittal"],
    }
    volume = _volume(prep)
    assert predictor.predict_volume(volume).same_geometry(volume)
    with pytest.raises(KidneysegError, match="inference.mode=fast runs axial models only"):
        Predictor(fewer, device="cpu", progress=False, overrides=["inference.mode=fast"])
    fast = ["inference.mode=fast", "inference.planes=axial"]
    assert Predictor(fewer, device="cpu", progress=False, overrides=fast).planes[
        "kidney"
    ].keys() == {"axial"}
    with pytest.raises(KidneysegError, match="has no sagittal model|no kidney model"):
        Predictor(fewer, device="cpu", progress=False, overrides=["inference.planes=sagittal"])
    with pytest.raises(KidneysegError, match="inference.planes"):
        Predictor(
            _axial_copy(run, tmp_path / "a"), progress=False, overrides=["inference.planes=coronal"]
        )


def test_model_package_carries_the_plane_models(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = cohort
    manifest = export_model(run, tmp_path / "model.zip")
    assert manifest["model_id"] == model_id(run)
    assert {"kidney_sagittal/best.safetensors", "tumor_coronal/config.json"} <= set(
        manifest["files"]
    )
    predictor = Predictor(tmp_path / "model.zip", device="cpu", progress=False)
    assert list(predictor.planes["tumor"]) == ["axial", "coronal", "sagittal"]
    assert predictor.provenance["model_id"] == model_id(run)
    card = model_card(run)
    assert card["planes"] == {p: ["axial", "coronal", "sagittal"] for p in ("kidney", "tumor")}
    assert "planes       kidney: axial, coronal, sagittal" in format_card(card)
