"""Cysts, the third KiTS class: a phase 2 that predicts tumor *and* cyst (``data.tumor_classes =
"tumor,cyst"``, the ``kits`` preset), from training targets to DICOM SEG.

Hand-set networks (`test_inference.pixelwise_unet`) make every output's logit an affine function
of the normalised input, so the labels of each voxel follow from its HU alone:

* phase 1: kidney region where HU > 100;
* phase 2, x = (HU - 250) / 100 inside the region: tumor logit ``x``, cyst logit
  ``0.5 x + 0.1``. A mass where the larger is > 0 (HU > 230), a tumor where the tumor logit
  is the larger (HU > 270), a cyst otherwise. Between 250 and 270 HU both outputs are above the
  threshold and the cyst wins by being the more probable: the argmax, not the first output.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.cli import main
from kidneyseg.config import PostprocessConfig, config_to_dict, resolve_config
from kidneyseg.dataset import SliceDataset
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.pred_dir import probability_path, seg_path
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.losses import BceDiceLoss
from kidneyseg.models import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_model,
    checkpoint_digest,
    phase_config,
    read_checkpoint_meta,
    save_checkpoint,
)
from kidneyseg.phase_runner import PhaseRunner, classify_logits, logit_threshold
from kidneyseg.postprocessing import assemble_labels, postprocess
from kidneyseg.types import CYST, KIDNEY, TUMOR, from_canonical, phase_outputs
from test_dataset import write_prep_dir
from test_end_to_end import TINY as TRAIN_TINY
from test_inference import (
    KIDNEY_NORM,
    TINY,
    TUMOR_NORM,
    expected_labels,
    make_model_dir,
    phantom_canonical,
    pixelwise_unet,
    volume_from_canonical,
    write_dicom_series,
)
from test_localization import tall_phantom

KITS = ["data.tumor_classes=tumor,cyst"]
#: (a, b) of each phase-2 output: logit = a * x + b.
TUMOR_HEAD, CYST_HEAD = (1.0, 0.0), (0.5, 0.1)


def multi_output_unet(heads: Sequence[tuple[float, float]]) -> torch.nn.Module:
    """`pixelwise_unet` with one output per ``(a, b)`` of ``heads``: logit_c = a_c x + b_c."""
    one = pixelwise_unet()
    net = build_model(resolve_config(overrides=[*TINY, f"model.classes={len(heads)}"]).model)
    state = one.state_dict()
    state["head.weight"] = torch.cat([state["head.weight"] * a for a, _ in heads])
    state["head.bias"] = torch.tensor([b for _, b in heads], dtype=torch.float32)
    net.load_state_dict(state)
    return net.eval()


def make_kits_model_dir(
    root: Path, cyst_head: tuple[float, float] = CYST_HEAD, overrides: Sequence[str] = ()
) -> Path:
    """RUN_DIR: the hand-set kidney phase and a two-output (tumor, cyst) phase 2."""
    cfg = resolve_config(overrides=[*TINY, *KITS, *overrides])
    save_checkpoint(
        root / "kidney" / "best.safetensors", pixelwise_unet(), cfg, "kidney", KIDNEY_NORM
    )
    tumor = multi_output_unet([TUMOR_HEAD, cyst_head])
    save_checkpoint(
        root / "tumor" / "best.safetensors", tumor, phase_config(cfg, "tumor"), "tumor", TUMOR_NORM
    )
    return root


def expected_kits_labels(hu: np.ndarray) -> np.ndarray:
    """What the hand-set two-output cascade must predict, voxel by voxel (module doc)."""
    return np.select([hu > 270, hu > 230, hu > 100], [TUMOR, CYST, KIDNEY], 0).astype(np.uint8)


def kits_phantom(shape: tuple[int, int, int] = (6, 32, 32)) -> np.ndarray:
    """`phantom_canonical` (two kidneys, a 320-HU tumor in the right one) with two cysts in the
    left kidney: 260 HU (both outputs above threshold, cyst the larger) and 240 HU."""
    hu = phantom_canonical(shape)
    z, y, x = shape
    hu[2:4, y // 3 + 2 : y // 3 + 5, x // 2 + 4 : x // 2 + 7] = 260
    hu[3:5, y // 2 + 1 : y // 2 + 4, x // 2 + 8 : x // 2 + 11] = 240
    return hu


@pytest.fixture(scope="module")
def kits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kits_model_dir(tmp_path_factory.mktemp("kits"))


@pytest.fixture(scope="module")
def kits_predictor(kits_dir: Path) -> Predictor:
    return Predictor(kits_dir, device="cpu", progress=False)


# ----------------------------------------------------------------------------- the rule


def test_phase_outputs() -> None:
    assert phase_outputs("kidney", "tumor,cyst") == ("kidney",)
    assert phase_outputs("tumor") == ("tumor",)
    assert phase_outputs("tumor", "tumor,cyst") == ("tumor", "cyst")
    assert phase_config(resolve_config("kits"), "tumor").model.classes == 2
    assert phase_config(resolve_config("kits"), "kidney").model.classes == 1


def test_mass_where_max_probability_above_threshold_class_by_argmax() -> None:
    # Pixels (tumor logit, cyst logit):
    pairs = [(2.0, -1.0), (-1.0, 2.0), (0.5, 0.5), (-3.0, -2.0), (1.0, 3.0), (0.3, -0.2)]
    logits = torch.tensor(pairs).T.reshape(1, 2, 1, len(pairs))
    mask, best = classify_logits(logits, logit_threshold(0.5))
    assert mask[0, 0].tolist() == [True, True, True, False, True, True]
    # tumor, cyst, tie -> tumor, (below threshold: still the larger), cyst, tumor
    assert best[0, 0].tolist() == [0, 1, 0, 1, 1, 0]
    # A higher threshold: max(p) > 0.8 only where the larger logit > logit(0.8) = 1.39.
    mask, _ = classify_logits(logits, logit_threshold(0.8))
    assert mask[0, 0].tolist() == [True, True, False, False, True, False]
    # One output: exactly logit > threshold, class 0.
    mask, best = classify_logits(logits[:, :1], 0.0)
    assert mask[0, 0].tolist() == [True, False, True, False, True, True] and not best.any()


def test_assembly_tumor_inside_kidney_and_components_on_masses() -> None:
    kidney = np.zeros((3, 8, 8), bool)
    kidney[:, 1:7, 1:7] = True
    tumor = np.zeros_like(kidney)
    cyst = np.zeros_like(kidney)
    tumor[1, 2, 2] = True  # one tumor voxel, joined by a cyst into one mass of 5 voxels
    cyst[1, 2, 3:7] = True
    cyst[1, 2, 7] = True  # cyst voxel outside the kidney
    cyst[1, 5, 5] = True  # a lone one-voxel cyst
    tumor[1, 5, 5] = True  # ... where tumor is set too: tumor wins
    cyst[0, 5, 2] = True  # a lone one-voxel cyst
    spacing = (1.0, 1.0, 1.0)
    labels = postprocess(kidney, tumor, spacing, cyst=cyst)
    assert labels[1, 2, 2] == TUMOR and (labels[1, 2, 3:7] == CYST).all()
    assert labels[1, 2, 7] == 0  # tumor_inside_kidney applies to cysts
    assert labels[1, 5, 5] == TUMOR and labels[0, 5, 2] == CYST
    assert (labels == CYST).sum() == 5
    kept = postprocess(
        kidney, tumor, spacing, PostprocessConfig(tumor_inside_kidney=False), cyst=cyst
    )
    assert kept[1, 2, 7] == CYST
    # Small components: the tumor voxel lives on as part of its 5-voxel mass; lone voxels go.
    small = postprocess(
        kidney, tumor, spacing, PostprocessConfig(min_component_ml=0.003), cyst=cyst
    )
    assert small[1, 2, 2] == TUMOR and (small[1, 2, 3:7] == CYST).all()
    assert small[1, 5, 5] == KIDNEY and small[0, 5, 2] == KIDNEY
    # A tumor-only phase 2 (no cyst mask) gives exactly what an empty cyst mask gives.
    for cfg in (PostprocessConfig(), PostprocessConfig(min_component_ml=0.003)):
        np.testing.assert_array_equal(
            postprocess(kidney, tumor, spacing, cfg),
            postprocess(kidney, tumor, spacing, cfg, cyst=np.zeros_like(cyst)),
        )
    np.testing.assert_array_equal(
        assemble_labels(kidney, tumor, cyst * 0), assemble_labels(kidney, tumor)
    )


# ----------------------------------------------------------------------------- training side


def test_bce_dice_loss_is_the_mean_over_outputs() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8)
    target = (torch.rand(3, 2, 8, 8) > 0.9).float()
    loss = BceDiceLoss()
    both = loss(logits, target)
    apart = [loss(logits[:, c : c + 1], target[:, c : c + 1]) for c in range(2)]
    assert float(both) == pytest.approx(float(sum(apart) / 2), rel=1e-6)


def test_two_channel_targets_and_foreground_with_cysts(tmp_path: Path) -> None:
    root = write_prep_dir(tmp_path / "prep")
    # A cyst on slice 5, which holds no tumor (tumors are on even slices).
    case = root / "cases" / "case_00000"
    label = np.load(case / "label.npy")
    label[5, 34:37, 44:47] = CYST
    np.save(case / "label.npy", label)
    counts = np.stack([(label == v).reshape(len(label), -1).sum(1) for v in (1, 2, 3)], 1)
    np.save(case / "slices.npy", counts.astype(np.int64))
    prep = open_prep_dir(root)
    paper = SliceDataset(
        prep, ["case_00000"], "tumor", resolve_config(overrides=["data.image_size=64"]).data
    )
    kits = SliceDataset(
        prep, ["case_00000"], "tumor", resolve_config("kits", overrides=["data.image_size=64"]).data
    )
    zs = kits.items[:, 1]
    np.testing.assert_array_equal(zs, paper.items[:, 1])  # the same eligible slices
    assert set(zs[kits.foreground]) - set(zs[paper.foreground]) == {5}  # + the cyst-only slice
    for z in (5, 6):  # 6 holds tumor and the fixture's cyst
        i = int(np.flatnonzero(zs == z)[0])
        _, target = kits[i]
        assert target.shape == (2, 64, 64)
        np.testing.assert_array_equal(target[0].numpy(), label[z] == TUMOR)
        np.testing.assert_array_equal(target[1].numpy(), label[z] == CYST)
        assert target[1].sum() > 0
        np.testing.assert_array_equal(paper[i][1].numpy(), (label[z] == TUMOR)[None])


# ----------------------------------------------------------------------------- checkpoints


def _write_raw_checkpoint(
    path: Path, net: torch.nn.Module, cfg_overrides: list[str], **header: object
) -> Path:
    """A checkpoint as some other writer could leave it (save_checkpoint refuses these)."""
    from safetensors.torch import save_file

    cfg = resolve_config(overrides=[*TINY, *cfg_overrides])
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "kidneyseg_version": "0.1.0",
        "phase": "tumor",
        "labels": {"0": "background", "1": "kidney", "2": "tumor", "3": "cyst"},
        "config": config_to_dict(cfg),
        "normalization": TUMOR_NORM.to_dict(),
        **header,
    }
    meta = json.loads(json.dumps(meta))
    meta["digest"] = checkpoint_digest(meta, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"kidneyseg": json.dumps(meta)})
    return path


def test_checkpoints_record_outputs_and_inconsistent_ones_are_refused(
    kits_dir: Path, tmp_path: Path
) -> None:
    tumor = read_checkpoint_meta(kits_dir / "tumor" / "best.safetensors")
    assert tumor.outputs == ("tumor", "cyst") and tumor.config.model.classes == 2
    assert read_checkpoint_meta(kits_dir / "kidney" / "best.safetensors").outputs == ("kidney",)
    runner = PhaseRunner.load(kits_dir / "tumor" / "best.safetensors", "tumor")
    assert runner.outputs == ("tumor", "cyst")
    # The writer refuses a config whose model.classes disagrees with the phase's outputs.
    cfg = resolve_config(overrides=[*TINY, *KITS])
    with pytest.raises(KidneysegError, match="model.classes=1 but the tumor phase has 2"):
        save_checkpoint(tmp_path / "x.safetensors", pixelwise_unet(), cfg, "tumor", TUMOR_NORM)
    # A two-output network whose config says tumor only (a file without recorded outputs).
    two = multi_output_unet([TUMOR_HEAD, CYST_HEAD])
    odd = _write_raw_checkpoint(tmp_path / "a.safetensors", two, ["model.classes=2"])
    with pytest.raises(KidneysegError, match="has 2 outputs but its tumor phase predicts 1"):
        PhaseRunner.load(odd, "tumor")
    # A one-output network whose config says tumor and cyst.
    odd = _write_raw_checkpoint(tmp_path / "b.safetensors", pixelwise_unet(), KITS)
    with pytest.raises(KidneysegError, match="has 1 outputs but its tumor phase predicts 2"):
        PhaseRunner.load(odd, "tumor")
    # Recorded outputs that contradict the config.
    odd = _write_raw_checkpoint(
        tmp_path / "c.safetensors", two, [*KITS, "model.classes=2"], outputs=["tumor"]
    )
    with pytest.raises(KidneysegError, match="names outputs"):
        read_checkpoint_meta(odd)


# ----------------------------------------------------------------------------- prediction


def test_labels_hold_tumor_and_cyst_exactly(kits_predictor: Predictor) -> None:
    assert kits_predictor.predicts_cysts
    assert kits_predictor.probability_outputs == ("kidney", "tumor", "cyst")
    hu = kits_phantom()
    volume = volume_from_canonical(hu)
    labels = kits_predictor.predict_volume(volume)
    want = expected_kits_labels(hu)
    assert set(np.unique(want).tolist()) == {0, 1, 2, 3}
    assert (want[hu == 260] == CYST).all() and (want[hu == 320] == TUMOR).all()
    np.testing.assert_array_equal(labels.array, from_canonical(want, np.asarray(volume.direction)))


def test_probabilities_match_the_outputs(kits_predictor: Predictor) -> None:
    hu = kits_phantom()
    volume = volume_from_canonical(hu)
    labels, maps = kits_predictor.predict_probability_maps(volume)
    assert list(maps) == ["kidney", "tumor", "cyst"]
    canonical = {name: vol.to_canonical() for name, vol in maps.items()}
    lab = labels.to_canonical()
    region = hu > 100
    x = (hu.astype(np.float32) * region - TUMOR_NORM.mean) / TUMOR_NORM.std
    for name, (a, b) in (("tumor", TUMOR_HEAD), ("cyst", CYST_HEAD)):
        p = np.round(255 / (1 + np.exp(-(a * x + b)))).astype(np.uint8)
        p[~region] = 0
        np.testing.assert_allclose(canonical[name], p, atol=1)  # sigmoid rounding only
    t, c = canonical["tumor"].astype(int), canonical["cyst"].astype(int)
    assert (np.maximum(t, c)[lab >= TUMOR] >= 128).all()
    assert (t[lab == TUMOR] >= c[lab == TUMOR]).all() and (c[lab == CYST] > t[lab == CYST]).all()
    # predict_probabilities keeps its three-volume form.
    again = kits_predictor.predict_probabilities(volume)
    np.testing.assert_array_equal(again[2].array, maps["tumor"].array)


def test_a_silent_cyst_output_gives_the_one_output_results(tmp_path: Path) -> None:
    one = Predictor(make_model_dir(tmp_path / "one"), device="cpu", progress=False)
    dead = make_kits_model_dir(tmp_path / "dead", cyst_head=(0.0, -100.0))
    two = Predictor(dead, device="cpu", progress=False)
    volume = volume_from_canonical(kits_phantom())
    labels_one, maps_one = one.predict_probability_maps(volume)
    labels_two, maps_two = two.predict_probability_maps(volume)
    np.testing.assert_array_equal(labels_one.array, labels_two.array)
    hu = volume.to_canonical()
    np.testing.assert_array_equal(labels_one.to_canonical(), expected_labels(hu))  # the old rule
    for name in ("kidney", "tumor"):
        np.testing.assert_array_equal(maps_one[name].array, maps_two[name].array)
    assert "cyst" not in maps_one and not maps_two["cyst"].array.any()


def test_fast_mode_equals_naive_with_cysts(tmp_path: Path) -> None:
    run = make_kits_model_dir(tmp_path / "run", overrides=["data.image_size=160"])
    hu = tall_phantom(depth=80)
    z = 80 // 2
    hu[z - 5 : z + 5, 80:90, 108:116] = 260  # cysts in the left kidney
    hu[z - 3 : z + 3, 95:100, 118:124] = 240
    spacing = (2.5, 1.5, 1.5)
    out = {}
    for mode in ("naive", "fast"):
        predictor = Predictor(
            run, device="cpu", progress=False, overrides=[f"inference.mode={mode}"]
        )
        cyst, t, c = (
            np.zeros(hu.shape, bool),
            np.zeros(hu.shape, np.uint8),
            np.zeros(hu.shape, np.uint8),
        )
        kidney, tumor, region = predictor.segment_canonical(hu, spacing, None, None, t, cyst, c)
        out[mode] = (tumor, cyst, t, c)
        assert cyst.any() and tumor.any() and not (cyst & tumor).any()
        np.testing.assert_array_equal(cyst & region, (hu > 230) & (hu <= 270) & region)
    for a, b in zip(out["naive"], out["fast"], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="pass a cyst array"):
        predictor.segment_canonical(hu, spacing)


def test_cli_writes_cyst_probabilities_and_stats(kits_dir: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    volume = volume_from_canonical(kits_phantom())
    write_volume(volume, cases / "a.nii.gz")
    out, stats = tmp_path / "pred", tmp_path / "stats.json"
    argv = ["predict", str(cases), str(out), "--model", str(kits_dir), "--no-progress"]
    assert main([*argv, "--save-probabilities", "--stats", str(stats)]) == 0
    labels = read_labels(out / "a.nii.gz", like=read_image(cases / "a.nii.gz"))
    files = [probability_path(out / "a.nii.gz", n) for n in ("kidney", "tumor", "cyst")]
    assert [f.name for f in files if f.is_file()] == [
        "a_kidney_prob.nii.gz",
        "a_tumor_prob.nii.gz",
        "a_cyst_prob.nii.gz",
    ]
    _, maps = Predictor(kits_dir, device="cpu", progress=False).predict_probability_maps(
        read_image(cases / "a.nii.gz")
    )
    np.testing.assert_array_equal(np.asarray(read_image(files[2]).array), maps["cyst"].array)
    # kidneyseg stats counts the predicted cysts.
    case = json.loads(stats.read_text(encoding="utf-8"))["cases"]["a"]
    n_cyst = int((np.asarray(labels.array) == CYST).sum())
    assert case["voxels"]["cyst"] == n_cyst > 0
    assert case["total"]["cyst_volume_ml"] == pytest.approx(
        n_cyst * labels.voxel_volume_ml, abs=1e-4
    )
    # Folder mode predicts a case again when its cyst probability file is missing.
    files[2].unlink()
    predictor = Predictor(kits_dir, device="cpu", progress=False, save_probabilities=True)
    assert len(predictor.predict_paths(cases, out).written) == 1 and files[2].is_file()


# ----------------------------------------------------------------------------- DICOM SEG


def test_dicom_seg_has_a_cyst_segment_when_the_model_predicts_cysts(
    kits_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("highdicom")
    import highdicom as hd
    import pydicom

    from kidneyseg.dicom import series_files
    from kidneyseg.dicom_seg import BlankUIDWarning, write_dicom_seg
    from test_dicom_seg import PROV, _check_agreement

    lps = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    volume = volume_from_canonical(kits_phantom(), direction=lps, spacing_zyx=(3.0, 0.9, 0.9))
    folder = write_dicom_series(volume, tmp_path / "series")
    out = tmp_path / "out" / "ct.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlankUIDWarning)  # the helper writes no frame of ref.
        Predictor(kits_dir, device="cpu", progress=False).predict_file(folder, out)
        labels = read_labels(out)
        assert (np.asarray(labels.array) == CYST).any()
        seg = pydicom.dcmread(seg_path(out))
        names = [s.SegmentLabel for s in seg.SegmentSequence]
        assert names == ["Kidney", "Kidney tumor", "Kidney cyst"]
        cyst = seg.SegmentSequence[2]
        kind = cyst.SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == (
            "367643001",
            "SCT",
            "Cyst",
        )
        assert cyst.AnatomicRegionSequence[0].CodeValue == "64033007"  # kidney
        assert cyst.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        _check_agreement(seg, labels, series_files(folder))
        assert hd.seg.segread(seg_path(out)).number_of_segments == 3
        # A case without cysts: the segment is still there when the model predicts cysts (empty),
        # and absent for a tumor-only model.
        no_cyst = labels.with_array(
            np.where(np.asarray(labels.array) == CYST, KIDNEY, labels.array).astype(np.uint8)
        )
        for cysts, want in ((True, 3), (False, 2)):
            path = write_dicom_seg(
                no_cyst, folder, tmp_path / f"{cysts}.seg.dcm", PROV, cysts=cysts
            )
            back = hd.seg.segread(path)
            assert back.number_of_segments == want
            _check_agreement(pydicom.dcmread(path), no_cyst, series_files(folder))


# ----------------------------------------------------------------------------- end to end


def test_kits_preset_end_to_end_on_phantoms(tmp_path: Path) -> None:
    """phantoms -> preprocess -> train both phases (kits) -> predict -> evaluate -> report."""
    data, prep, run, pred, ev, rep = (
        tmp_path / n for n in ("data", "prep", "run", "pred", "eval", "report")
    )
    assert (
        main(["phantoms", str(data), "--cases", "5", "--seed", "3", "--shape", "12", "48", "48"])
        == 0
    )
    assert main(["preprocess", str(data), str(prep), "--workers", "1"]) == 0
    train_ids = open_prep_dir(prep).split.train
    cysts = sum(int(np.load(prep / "cases" / c / "slices.npy")[:, 2].sum()) for c in train_ids)
    assert cysts > 0  # the training cases hold cyst labels to learn from
    for phase in ("kidney", "tumor"):
        argv = ["train", str(prep), str(run), "--phase", phase, "--quiet", "--preset", "fast,kits"]
        assert main([*argv, *(a for s in TRAIN_TINY for a in ("--set", s))]) == 0
    meta = read_checkpoint_meta(run / "tumor" / "best.safetensors")
    assert meta.outputs == ("tumor", "cyst") and meta.config.model.classes == 2
    assert meta.config.train.loss == "bce_dice"  # the fast settings came along
    rows = list(csv.DictReader((run / "tumor" / "metrics.csv").open(encoding="utf-8")))
    assert np.isfinite(float(rows[-1]["train_loss"]))
    argv = [
        "predict",
        str(data),
        str(pred),
        "--model",
        str(run),
        "--no-progress",
        "--save-probabilities",
    ]
    assert main(argv) == 0
    for case in sorted(p.name for p in data.iterdir() if p.name.startswith("case_")):
        assert set(np.unique(read_labels(pred / f"{case}.nii.gz").array).tolist()) <= {0, 1, 2, 3}
        assert probability_path(pred / f"{case}.nii.gz", "cyst").is_file()
    assert main(["evaluate", str(pred), str(data), str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text(encoding="utf-8"))
    for name in ("kidney_and_mass", "mass", "tumor"):
        assert summary["metrics"][f"dice_{name}"]["n"] == 5
    assert main(["report", str(run), str(ev), str(rep)]) == 0
    page = (rep / "report.md").read_text(encoding="utf-8")
    assert "KiTS classes" in page and "masses: tumor + cyst (labels 2-3)" in page
