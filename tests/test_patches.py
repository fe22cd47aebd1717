"""Training on patches (``data.tumor_patch``, ``data.kidney_patch``): where the window goes, that
the image and target are cut alike, and that batches and epochs hold proportionally more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.config import DataConfig, resolve_config
from kidneyseg.dataset import SliceDataset, patch_origin
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.loaders import make_loaders, patch_scale, prepare_training
from kidneyseg.resize import to_model_size
from test_dataset import write_prep_dir
from test_training import tiny


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _inside(mask: np.ndarray, origin: tuple[int, int], patch: int) -> bool:
    y0, y1, x0, x1 = _box(mask)
    oy, ox = origin
    return oy <= y0 and y1 <= oy + patch and ox <= x0 and x1 <= ox + patch


def test_window_holds_the_target_wherever_it_lies() -> None:
    for cy, cx in ((4, 4), (60, 120), (123, 3), (64, 64)):
        target = np.zeros((128, 128), bool)
        target[cy : cy + 4, cx : cx + 4] = True
        region = target.copy()
        region[30:90, 10:120] = True  # a wide region: the target decides
        for z in range(6):
            origin = patch_origin(target, region, 64, case=1, z=z)
            assert 0 <= origin[0] <= 64 and 0 <= origin[1] <= 64
            assert _inside(target, origin, 64), (cy, cx, z, origin)


def test_two_kidneys_alternate_and_each_window_holds_its_kidney() -> None:
    region = np.zeros((128, 128), bool)
    region[50:70, 15:35] = True  # one kidney on each side, 80 px apart: no 64-px window fits both
    region[52:74, 95:113] = True
    target = np.zeros_like(region)
    left, right = region.copy(), region.copy()
    left[:, 64:], right[:, :64] = False, False
    sides = set()
    for z in range(8):
        origin = patch_origin(target, region, 64, case=3, z=z)
        holds = [_inside(kidney, origin, 64) for kidney in (left, right)]
        assert sum(holds) == 1, (z, origin)  # exactly one kidney, whole
        sides.add(holds.index(True))
        assert origin == patch_origin(target, region, 64, case=3, z=z)  # fixed per (case, z)
    assert sides == {0, 1}
    # The shift varies between slices (the batched augmentation adds its own crops).
    assert len({patch_origin(target, region, 64, case=3, z=z) for z in range(0, 16, 2)}) > 1


def test_no_region_and_whole_slice_windows() -> None:
    # A phase-1 slice without kidney: the window lies anywhere in the slice, fixed per (case, z).
    empty = np.zeros((96, 128), bool)
    origins = {patch_origin(empty, empty, 64, case=0, z=z) for z in range(40)}
    assert all(0 <= y <= 32 and 0 <= x <= 64 for y, x in origins)
    ys, xs = zip(*origins, strict=True)
    assert min(ys) < 8 and max(ys) > 24 and min(xs) < 16 and max(xs) > 48
    assert patch_origin(empty, empty, 64, case=0, z=3) == patch_origin(empty, empty, 64, 0, 3)
    assert patch_origin(empty, empty, 96, case=0, z=0) == (0, 0)  # the patch is the slice


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory):
    return open_prep_dir(write_prep_dir(tmp_path_factory.mktemp("prep") / "prep", size=64))


@pytest.mark.parametrize("phase", ["tumor", "kidney"])
def test_patches_cut_image_and_target_alike(prep, phase: str) -> None:
    cfg = DataConfig(image_size=64, **{f"{phase}_patch": 32})  # type: ignore[arg-type]
    patches = SliceDataset(prep, prep.split.train, phase, cfg)
    whole = SliceDataset(prep, prep.split.train, phase, cfg, train_patches=False)
    assert len(patches) == len(whole) and (patches.foreground == whole.foreground).all()
    for i in range(len(patches)):
        x, y = patches[i]
        xw, yw = whole[i]
        assert x.shape == y.shape == (1, 32, 32) and xw.shape == (1, 64, 64)
        # The window patch_origin picks from the whole slice's target and region (phase 2's).
        case, z = (int(v) for v in patches.items[i])
        label = np.load(prep.case_dir(prep.split.train[case]) / "label.npy")[z]
        region = np.zeros((64, 64), bool)
        if phase == "tumor":
            grid = to_model_size(torch.from_numpy((label > 0).astype(np.float32))[None, None], 64)
            region = grid[0, 0].numpy() > 0.5
        y0, x0 = patch_origin(yw[0].numpy() > 0, region, 32, case=case, z=z)
        torch.testing.assert_close(x, xw[:, y0 : y0 + 32, x0 : x0 + 32])
        torch.testing.assert_close(y, yw[:, y0 : y0 + 32, x0 : x0 + 32])
        if phase == "tumor":
            assert y.sum() == yw.sum()  # the (small) tumor is never cut
            if not patches.foreground[i]:  # a kidney slice without tumor: some kidney in view
                assert (x != x.flatten()[0]).any()
        elif patches.foreground[i]:  # two kidneys 26 px apart: one of them, whole, in view
            assert 0.3 * yw.sum() < y.sum() < 0.7 * yw.sum()
    # The other phase ignores the setting: whole slices.
    other = SliceDataset(prep, prep.split.train, "kidney" if phase == "tumor" else "tumor", cfg)
    assert other[0][0].shape == (1, 64, 64)


def test_batches_and_epochs_hold_more_patches_and_validation_whole_slices(tmp_path: Path) -> None:
    root = write_prep_dir(tmp_path / "prep", size=64)
    cfg = tiny("data.image_size=64", "data.tumor_patch=32", "data.samples_per_epoch=16")
    assert patch_scale(cfg.data, "tumor") == 4 and patch_scale(cfg.data, "kidney") == 1
    both = tiny("data.image_size=64", "data.kidney_patch=32").data
    assert patch_scale(both, "kidney") == 4 and patch_scale(both, "tumor") == 1
    assert patch_scale(tiny("data.image_size=96", "data.tumor_patch=64").data, "tumor") == 2
    setup = prepare_training(root, "tumor", cfg)
    train, val = make_loaders(setup)
    assert train.batch_size == 4 * 4 and len(train.sampler) == 16 * 4  # type: ignore[arg-type]
    x, y = next(iter(train))
    assert x.shape == (16, 1, 32, 32) and y.shape == (16, 1, 32, 32)
    assert val is not None and val.batch_size == 4
    assert next(iter(val))[0].shape[-2:] == (64, 64)
    kidney_train, _ = make_loaders(prepare_training(root, "kidney", cfg))
    assert kidney_train.batch_size == 4 and len(kidney_train.sampler) == 16  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["48", "16", "100", "-32"])
@pytest.mark.parametrize("phase", ["tumor", "kidney"])
def test_bad_patch_sizes_are_refused(value: str, phase: str) -> None:
    with pytest.raises(KidneysegError, match=rf"data.{phase}_patch must be 0 or a multiple of 32"):
        resolve_config("fast", overrides=[f"data.{phase}_patch={value}"])
    cfg = resolve_config("fast", overrides=[f"data.{phase}_patch=96"])
    assert getattr(cfg.data, f"{phase}_patch") == 96


def test_a_patch_as_large_as_the_slice_is_the_whole_slice(prep) -> None:
    # The fast preset's 64-px patch with smaller slices (e.g. a 32-px smoke run): whole slices.
    cfg = resolve_config("fast", overrides=["data.image_size=32"]).data
    assert cfg.tumor_patch == 64 and patch_scale(cfg, "tumor") == 1
    ds = SliceDataset(prep, prep.split.train, "tumor", cfg)
    assert ds.patch == 0 and ds[0][0].shape == (1, 32, 32)
