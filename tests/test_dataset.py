"""Slice datasets, foreground sampling, GPU-style augmentation, predicted regions.

`write_prep_dir` builds a tiny preprocessed folder in the documented layout (docs/formats.md);
the training and CLI tests import it from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.augmentation import BatchAugment
from kidneyseg.config import DataConfig
from kidneyseg.dataset import _REGION_LUT, ForegroundSampler, SliceDataset, phase_norm_record
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.normalization import NormalizationRecord, expand_region, hu_histogram, normalize
from kidneyseg.regions import predict_kidney_regions, region_files
from kidneyseg.resize import to_model_size
from kidneyseg.types import MAX_LABEL

KIDNEY_HU, TUMOR_HU, CYST_HU, BODY_HU = 180, 70, 10, 40


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def write_prep_dir(
    root: Path,
    n_cases: int = 4,
    depth: int = 12,
    size: int = 64,
    split: tuple[int, ...] = (2, 1, 1),
    kidney: bool = True,
    seed: int = 0,
) -> Path:
    """A tiny PREP_DIR: ``n_cases`` cases of ``depth`` slices, kidneys in the middle slices,
    a tumor in some of them and a cyst in one; split by counts (train, val, test)."""
    rng = np.random.default_rng(seed)
    cases: dict[str, dict[str, object]] = {}
    ids = [f"case_{i:05d}" for i in range(n_cases)]
    n_train = split[0]
    hist_all = np.zeros(4096, np.int64)
    hist_region = np.zeros(4096, np.int64)
    for n, case_id in enumerate(ids):
        shape = (depth, size, size + 8 * (n % 2))  # uneven in-plane sizes: resizing is exercised
        image = np.full(shape, -1000, np.int16)
        label = np.zeros(shape, np.uint8)
        body = _disc(shape[1:], size / 2, shape[2] / 2, size * 0.45)
        image[:, body] = BODY_HU
        for z in range(depth // 4, depth - depth // 4):
            if not kidney:
                break
            for cx in (shape[2] * 0.3, shape[2] * 0.7):
                k = _disc(shape[1:], size * 0.55, cx + rng.integers(-2, 3), size * 0.12)
                label[z][k] = 1
                image[z][k] = KIDNEY_HU
            if z % 2 == 0:
                t = _disc(shape[1:], size * 0.55, shape[2] * 0.3, size * 0.06)
                label[z][t] = 2
                image[z][t] = TUMOR_HU
            if z == depth // 2:
                c = _disc(shape[1:], size * 0.58, shape[2] * 0.72, size * 0.03)
                label[z][c] = 3
                image[z][c] = CYST_HU
        image += rng.normal(0, 10, shape).astype(np.int16)
        d = root / "cases" / case_id
        d.mkdir(parents=True)
        np.save(d / "image.npy", image)
        np.save(d / "label.npy", label)
        counts = np.stack([(label == v).reshape(depth, -1).sum(1) for v in (1, 2, 3)], 1)
        np.save(d / "slices.npy", counts.astype(np.int64))
        info = {"shape": list(shape), "spacing_mm": [3.0, 0.8, 0.8]}
        (d / "case.json").write_text(json.dumps(info))
        cases[case_id] = {**info, "source_image": "x", "source_label": "y"}
        if n < n_train:
            hist_all += hu_histogram(image)
            hist_region += hu_histogram(image, label > 0)
    np.savez(root / "hu_histogram.npz", all=hist_all, kidney_region=hist_region)
    a, b = split[0], split[0] + split[1]
    (root / "split.json").write_text(
        json.dumps(
            {
                "seed": 0,
                "fractions": [0.5, 0.25, 0.25],
                "train": ids[:a],
                "val": ids[a:b],
                "test": ids[b:],
            }
        )
    )
    (root / "meta.json").write_text(
        json.dumps(
            {
                "format": "kidneyseg-prep",
                "format_version": 1,
                "kidneyseg_version": "0.1.0",
                "config": {},
                "cases": cases,
                "normalization": {},
            }
        )
    )
    return root


@pytest.fixture()
def prep(tmp_path: Path):
    return open_prep_dir(write_prep_dir(tmp_path / "prep"))


def test_kidney_dataset_shapes_targets_and_window(prep) -> None:
    cfg = DataConfig(image_size=32)
    ds = SliceDataset(prep, prep.split.train, "kidney", cfg)
    assert len(ds) == 2 * 12  # every slice of both training cases
    assert ds.foreground.sum() == 2 * 6  # kidney in the 6 middle slices
    z = int(np.flatnonzero(ds.foreground)[0])
    image, target = ds[z]
    assert image.shape == target.shape == (1, 32, 32)
    assert image.dtype == target.dtype == torch.float32
    assert set(target.unique().tolist()) == {0.0, 1.0}
    # Clipped to the window: at most (200 - mean) / std after z-scoring.
    norm = ds.normalization
    assert norm.window == (0.0, 200.0)
    assert image.max() <= (200 - norm.mean) / norm.std + 1e-4
    assert image.min() >= (0 - norm.mean) / norm.std - 1e-4
    # The Table-1 window changes the statistics, computed from the histogram alone.
    narrow = SliceDataset(prep, prep.split.train, "kidney", DataConfig(kidney_window=(20, 45)))
    assert narrow.normalization.window == (20.0, 45.0)
    assert narrow.normalization.mean != norm.mean
    # Native-size slices come back at native size.
    native = SliceDataset(prep, ["case_00000"], "kidney", DataConfig(image_size=64))
    assert native[0][0].shape == (1, 64, 64)


def test_tumor_dataset_masks_region_and_targets_tumor(prep) -> None:
    cfg = DataConfig(image_size=64)
    ds = SliceDataset(prep, ["case_00000"], "tumor", cfg)  # 64x64: no resizing
    assert len(ds) == 6  # only slices with kidney
    assert ds.foreground.sum() == 3  # tumor on every second kidney slice
    label = np.load(prep.case_dir("case_00000") / "label.npy")
    i = int(np.flatnonzero(ds.foreground)[0])
    z = int(ds.items[i, 1])
    image, target = ds[i]
    np.testing.assert_array_equal(target[0].numpy(), (label[z] == 2).astype(np.float32))
    outside = label[z] == 0
    background = (0 - ds.normalization.mean) / ds.normalization.std
    # Outside the kidney region the CT is zeroed (0 HU) before z-scoring: one constant value.
    np.testing.assert_allclose(image[0].numpy()[outside], background, rtol=1e-5)
    assert image[0].numpy()[~outside].std() > 0
    assert ds.normalization.window is None


def test_tumor_without_kidney_and_bad_prep_dirs(tmp_path: Path) -> None:
    empty = open_prep_dir(write_prep_dir(tmp_path / "nokidney", kidney=False))
    cfg = DataConfig(image_size=32)
    assert (
        len(
            SliceDataset(
                empty,
                empty.split.train,
                "tumor",
                cfg,
                normalization=NormalizationRecord("tumor", None, 0.0, 1.0),
            )
        )
        == 0
    )
    with pytest.raises(KidneysegError, match="no tumor-phase statistics.*kidney"):
        phase_norm_record(empty, "tumor", cfg)
    with pytest.raises(KidneysegError, match="no meta.json"):
        open_prep_dir(tmp_path)
    root = write_prep_dir(tmp_path / "nosplit")
    (root / "split.json").unlink()
    with pytest.raises(KidneysegError, match="missing split.json"):
        open_prep_dir(root)
    root = write_prep_dir(tmp_path / "incomplete")
    (root / "cases" / "case_00001" / "label.npy").unlink()
    with pytest.raises(KidneysegError, match="case_00001.*incomplete"):
        SliceDataset(open_prep_dir(root), ["case_00000", "case_00001"], "kidney", cfg)


def test_foreground_sampler_fraction_epochs_and_ranks() -> None:
    fg = np.zeros(1000, bool)
    fg[:50] = True  # 5 % foreground
    sampler = ForegroundSampler(fg, 4000, 0.5, seed=3)
    drawn = np.array(list(sampler))
    assert len(drawn) == 4000
    # 50 % forced + 5 % of the uniform half.
    assert abs(fg[drawn].mean() - (0.5 + 0.5 * 0.05)) < 0.03
    assert (np.bincount(drawn, minlength=1000) > 0).all()  # uniform part covers every slice
    assert list(sampler) == drawn.tolist()  # same epoch: same draw
    sampler.set_epoch(1)
    assert list(sampler) != drawn.tolist()
    ranks = [list(ForegroundSampler(fg, 4000, 0.5, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(drawn.tolist())
    assert fg[np.array(list(ForegroundSampler(fg, 100, 0.0)))].mean() < 0.2


def test_augment_keeps_alignment_and_is_seeded() -> None:
    target = torch.zeros(4, 1, 32, 32)
    target[:, :, 8:20, 4:14] = 1
    image = target.clone()
    flip = BatchAugment(
        DataConfig(rotation_degrees=0, flip_probability=1.0, crop_scale=(1, 1), noise_std=0)
    )
    fi, ft = flip(image, target)
    torch.testing.assert_close(fi, image.flip(-1))
    torch.testing.assert_close(ft, target.flip(-1))
    aug = BatchAugment(DataConfig(noise_std=0.0, rotation_degrees=30, crop_scale=(0.6, 1.0)))
    g = torch.Generator().manual_seed(0)
    ai, at = aug(image, target, g)
    assert not torch.equal(ai, image)
    # Image and target went through the same grid: thresholding the image gives the target.
    assert torch.equal((ai > 0.5).float(), at)
    again = aug(image, target, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], ai)
    other = aug(image, target, torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], ai)
    noisy = BatchAugment(
        DataConfig(rotation_degrees=0, flip_probability=0, crop_scale=(1, 1), noise_std=0.5)
    )
    ni, nt = noisy(image, target, torch.Generator().manual_seed(0))
    assert torch.equal(nt, target)
    assert 0.4 < (ni - image).std() < 0.6


def test_predicted_regions_cache(prep, tmp_path: Path) -> None:
    from kidneyseg.config import Config, ModelConfig
    from kidneyseg.models import build_model, save_checkpoint

    cfg = Config(
        data=DataConfig(image_size=32, tumor_region="predicted"),
        model=ModelConfig(architecture="unet_plain", base_channels=4, encoder_weights="none"),
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ckpt = tmp_path / "kidney.safetensors"
    norm = phase_norm_record(prep, "kidney", cfg.data)
    save_checkpoint(ckpt, model, cfg, "kidney", norm)
    out = tmp_path / "regions"
    cases = prep.split.train
    predict_kidney_regions(prep, cases, ckpt, out, threshold=0.5)
    region = np.load(out / "case_00001.npy")
    assert region.shape == np.load(prep.case_dir("case_00001") / "image.npy").shape
    assert set(np.unique(region)) <= {0, 1}
    counts = np.load(out / "case_00001.slices.npy")
    np.testing.assert_array_equal(counts, region.reshape(len(region), -1).sum(1))
    # A cached case is not recomputed; the dataset uses the cached regions.
    stamp = (out / "case_00001.npy").stat().st_mtime_ns
    predict_kidney_regions(prep, cases, ckpt, out)
    assert (out / "case_00001.npy").stat().st_mtime_ns == stamp
    region[:] = 0
    region[5, :10, :10] = 1
    np.save(out / "case_00001.npy", region)
    np.save(out / "case_00001.slices.npy", region.reshape(len(region), -1).sum(1))
    ds = SliceDataset(
        prep,
        ["case_00001"],
        "tumor",
        DataConfig(image_size=32, tumor_region="predicted"),
        regions_dir=out,
    )
    assert ds.items[:, 1].tolist() == [5]
    # A phase-2 checkpoint is refused as the region source.
    save_checkpoint(tmp_path / "tumor.safetensors", model, cfg, "tumor", norm)
    with pytest.raises(KidneysegError, match="phase-1"):
        predict_kidney_regions(prep, cases, tmp_path / "tumor.safetensors", out)


def _single_slice_item(ds: SliceDataset, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`SliceDataset.__getitem__` as it was before 2.5D context: the reference for k = 1."""
    case_index, z = (int(v) for v in ds.items[i])
    image, label, region = ds._arrays(case_index)
    hu = np.asarray(image[z])
    labels = np.minimum(np.asarray(label[z]), MAX_LABEL)
    mask = None
    if ds.phase == "tumor":
        mask = np.asarray(region[z]) if region is not None else _REGION_LUT[labels]
        mask = expand_region(mask, ds._spacing_yx[case_index], ds.margin_mm)
    x = torch.from_numpy(normalize(hu, ds.normalization, region=mask))[None, None]
    y = torch.from_numpy(ds._target_lut[:, labels])[None]  # one channel per output
    if x.shape[-2:] != (ds.size, ds.size):
        x = to_model_size(x, ds.size)
        y = (to_model_size(y, ds.size) > 0.5).float()
    return x[0], y[0]


def test_one_context_slice_is_bit_identical_to_the_single_slice_input(prep, tmp_path: Path) -> None:
    regions = tmp_path / "regions"
    regions.mkdir()
    rng = np.random.default_rng(1)
    for case_id in prep.split.train:
        shape = np.load(prep.case_dir(case_id) / "image.npy", mmap_mode="r").shape
        region = (rng.random(shape) > 0.7).astype(np.uint8)
        region[:2] = 0  # some slices without a region
        region_path, slices_path = region_files(regions, case_id)
        np.save(region_path, region)
        np.save(slices_path, region.reshape(len(region), -1).sum(1))
    settings = [
        ("kidney", DataConfig(image_size=32), None),
        ("kidney", DataConfig(image_size=64, kidney_window=(20, 45)), None),
        ("tumor", DataConfig(image_size=32), None),
        ("tumor", DataConfig(image_size=64, region_margin_mm=2.0), None),
        ("tumor", DataConfig(image_size=32, tumor_classes="tumor,cyst"), None),  # 2 outputs
        ("tumor", DataConfig(image_size=32, tumor_region="predicted"), regions),
        (
            "tumor",
            DataConfig(image_size=64, tumor_region="predicted", tumor_window=(0, 255)),
            regions,
        ),
    ]
    for phase, cfg, regions_dir in settings:
        ds = SliceDataset(prep, prep.split.train, phase, cfg, regions_dir=regions_dir)
        assert len(ds) > 0
        for i in range(len(ds)):
            image, target = ds[i]
            old_image, old_target = _single_slice_item(ds, i)
            assert torch.equal(image, old_image), (phase, cfg, i)
            assert torch.equal(target, old_target), (phase, cfg, i)


def test_context_items_have_k_channels_each_masked_by_its_own_region(prep) -> None:
    # The prep's z spacing is 3 mm, so 3 mm context channels are whole neighbouring slices.
    assert prep.spacing_mm("case_00000")[0] == 3.0
    volume = np.load(prep.case_dir("case_00000") / "image.npy").astype(np.float64)
    label = np.load(prep.case_dir("case_00000") / "label.npy")
    cfg = DataConfig(image_size=64, context_slices=3, context_mm=3.0)
    kidney = SliceDataset(prep, ["case_00000"], "kidney", cfg)
    z = 5
    image, target = kidney[z]
    assert image.shape == (3, 64, 64) and target.shape == (1, 64, 64)
    norm = kidney.normalization
    for j, dz in enumerate((-1, 0, 1)):
        assert norm.window is not None
        expected = (np.clip(volume[z + dz], *norm.window) - norm.mean) / norm.std
        np.testing.assert_allclose(image[j].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(target[0].numpy(), label[z] > 0)
    resized = SliceDataset(
        prep, ["case_00001"], "kidney", DataConfig(image_size=32, context_slices=5)
    )
    assert resized[3][0].shape == (5, 32, 32) and resized[3][1].shape == (1, 32, 32)
    # Phase 2 on the kidney's first slice (z = 3): below it there is no kidney, so channel 0
    # is all background; above it, the slice is masked by its own region, not the centre's.
    tumor = SliceDataset(prep, ["case_00000"], "tumor", cfg)
    i = int(np.flatnonzero(tumor.items[:, 1] == 3)[0])
    image, target = tumor[i]
    tnorm = tumor.normalization
    background = (0 - tnorm.mean) / tnorm.std
    np.testing.assert_allclose(image[0].numpy(), background, rtol=1e-5)
    for j, zz in ((1, 3), (2, 4)):
        expected = (volume[zz] * (label[zz] > 0) - tnorm.mean) / tnorm.std
        np.testing.assert_allclose(image[j].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert ((label[4] > 0) != (label[3] > 0)).any()  # the two regions differ: a real check
    np.testing.assert_array_equal(target[0].numpy(), label[3] == 2)


def test_augment_moves_every_channel_alike() -> None:
    aug = BatchAugment(DataConfig(noise_std=0.0, rotation_degrees=30, crop_scale=(0.6, 1.0)))
    image = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    target = (image[:, 1:2] > 0.5).float()
    ai, at = aug(image, target, torch.Generator().manual_seed(0))
    assert ai.shape == (4, 3, 32, 32) and at.shape == (4, 1, 32, 32)
    for c in range(3):
        alone, alone_target = aug(image[:, c : c + 1], target, torch.Generator().manual_seed(0))
        torch.testing.assert_close(ai[:, c : c + 1], alone, rtol=0, atol=1e-6)
        assert torch.equal(alone_target, at)
    noisy = BatchAugment(
        DataConfig(rotation_degrees=0, flip_probability=0, crop_scale=(1, 1), noise_std=0.5)
    )
    ni, _ = noisy(image, target, torch.Generator().manual_seed(0))
    noise = ni - image
    assert 0.4 < noise.std() < 0.6 and not torch.equal(noise[:, 0], noise[:, 1])


def test_rare_fraction_draws_the_rarer_class_and_changes_nothing_at_zero(prep) -> None:
    """``data.rare_fraction``: that share of the foreground draws comes from slices holding the
    phase's rarer class (phase 1: masses); at 0 the draw is exactly the paper's."""
    fg = np.zeros(1000, bool)
    fg[:200] = True
    rare = np.zeros(1000, bool)
    rare[:10] = True  # 1 % of all slices, 5 % of the foreground
    plain = list(ForegroundSampler(fg, 4000, 0.5, seed=3))
    assert list(ForegroundSampler(fg, 4000, 0.5, seed=3, rare=rare, rare_fraction=0.0)) == plain
    drawn = np.array(list(ForegroundSampler(fg, 4000, 0.5, seed=3, rare=rare, rare_fraction=0.5)))
    # Half of the 2000 foreground draws + 5 % of the other 1000 foreground + 1 % of 2000 uniform.
    assert abs(rare[drawn].mean() - (1000 + 50 + 20) / 4000) < 0.02
    assert abs(fg[drawn].mean() - (0.5 + 0.5 * 0.2)) < 0.03  # the foreground share is unchanged
    # The dataset flags: phase 1's rarer class is the masses (tumor here), on every second
    # kidney slice of the fixture; the paper's tumor-only phase 2 has none.
    kidney = SliceDataset(prep, ["case_00000"], "kidney", DataConfig(image_size=32))
    assert kidney.rare.sum() == 3 and (kidney.rare <= kidney.foreground).all()
    tumor = SliceDataset(prep, ["case_00000"], "tumor", DataConfig(image_size=32))
    assert not tumor.rare.any()
