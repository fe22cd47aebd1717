"""The fast cascade: the same labels as the whole-slice cascade, from far fewer pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyseg.errors import KidneysegError
from kidneyseg.inference import Predictor
from kidneyseg.localization import Box, body_box, merge_if_cheaper
from test_inference import make_model_dir, volume_from_canonical

# 2.5 mm slices, 1.5 mm pixels: a 10 mm coarse step is every 4th slice, the 30 mm crop margin
# 20 pixels.
SPACING = (2.5, 1.5, 1.5)


def tall_phantom(depth: int = 200, size: int = 160, kidneys: bool = True) -> np.ndarray:
    """Canonical HU: a body over every slice, two kidneys (one with a tumor) in 30 slices."""
    rng = np.random.default_rng(4)
    hu = np.full((depth, size, size), -1000, np.int16)
    hu[:, 20:-20, 15:-15] = 40 + rng.integers(-20, 20, (depth, size - 40, size - 30))
    if kidneys:
        z0, z1 = depth // 2 - 15, depth // 2 + 15
        hu[z0:z1, 70:100, 30:55] = 160  # right kidney (canonical x runs right -> left)
        hu[z0 + 5 : z1 - 8, 78:88, 36:44] = 320  # its tumor
        hu[z0 + 2 : z1 - 3, 72:104, 105:128] = 170  # left kidney
    return hu


def _predictor(run: Path, mode: str, crop: str = "box") -> Predictor:
    settings = [f"inference.mode={mode}", f"inference.fast_crop={crop}"]
    return Predictor(run, device="cpu", progress=False, overrides=settings)


def _count_pixels(predictor: Predictor, volume: object) -> tuple[np.ndarray, dict[str, int]]:
    seen = {"kidney": 0, "tumor": 0}
    hooks = [
        predictor.phases[name].model.register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, seen[name] + args[0][:, 0].numel())
        )
        for name in seen
    ]
    try:
        labels = predictor.predict_volume(volume)  # type: ignore[arg-type]
    finally:
        for hook in hooks:
            hook.remove()
    return np.asarray(labels.array), seen


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Models at the slices' own size: crops are cut in slice pixels (the fast path's main case).
    return make_model_dir(tmp_path_factory.mktemp("run"), ["data.image_size=160"])


@pytest.fixture(scope="module")
def run_dir_resized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Models at 64 px on 160-px slices: crops are cut in model pixels after resizing.
    return make_model_dir(tmp_path_factory.mktemp("run64"), ["data.image_size=64"])


# Crops snap to the network's 32-pixel grid: at 64 model pixels a crop is at least half a
# slice wide, so a model smaller than the slice saves less. "axial" runs whole slices over the
# kidneys' 30 slices + 2 x 12 margin slices, plus the coarse pass (every 4th slice, body box).
@pytest.mark.parametrize(
    "which, crop, share",
    [
        ("run_dir", "box", 0.5),
        ("run_dir_resized", "box", 0.75),
        ("run_dir", "axial", 0.55),
        ("run_dir_resized", "axial", 0.55),
    ],
)
def test_fast_equals_naive_with_far_fewer_pixels(
    which: str, crop: str, share: float, request: pytest.FixtureRequest
) -> None:
    run = request.getfixturevalue(which)
    volume = volume_from_canonical(tall_phantom(), spacing_zyx=SPACING)
    naive, naive_px = _count_pixels(_predictor(run, "naive"), volume)
    fast, fast_px = _count_pixels(_predictor(run, "fast", crop), volume)
    assert set(np.unique(naive).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(fast, naive)
    assert fast_px["kidney"] < share * naive_px["kidney"], (fast_px, naive_px)
    assert fast_px["tumor"] <= naive_px["tumor"]
    if crop == "axial":  # whole slices: phase 2 runs exactly where the naive cascade does
        assert fast_px["tumor"] == naive_px["tumor"]


def test_no_kidney_costs_only_the_coarse_pass(run_dir: Path) -> None:
    volume = volume_from_canonical(tall_phantom(kidneys=False), spacing_zyx=SPACING)
    labels, px = _count_pixels(_predictor(run_dir, "fast"), volume)
    assert not labels.any() and px["tumor"] == 0
    assert px["kidney"] <= (200 // 4 + 1) * 160 * 160  # every 4th slice at most


def test_bad_fast_crop_is_refused(run_dir: Path) -> None:
    with pytest.raises(KidneysegError, match="fast_crop"):
        _predictor(run_dir, "fast", "planes")


def test_boxes() -> None:
    ct = np.full((4, 10, 12), -1000, np.int16)
    ct[:, 2:8, 3:11] = 40
    assert body_box(ct, np.arange(4)) == (2, 8, 3, 11)
    apart = [Box(0, 5, 0, 10, 0, 10), Box(0, 5, 0, 10, 90, 100)]
    assert merge_if_cheaper(apart) == apart  # two kidneys far apart stay two crops
    assert merge_if_cheaper([Box(0, 5, 0, 10, 0, 10), Box(0, 5, 0, 10, 5, 15)]) == [
        Box(0, 5, 0, 10, 0, 15)
    ]


def test_model_box_snaps_to_the_network_grid(run_dir_resized: Path) -> None:
    runner = _predictor(run_dir_resized, "fast").phases["kidney"]
    y0, y1, x0, x1 = runner.model_box((50, 90, 10, 30), (160, 160))  # 64/160 = 0.4 per pixel
    assert (y0, y1, x0, x1) == (0, 64, 0, 32)
    assert all(v % 32 == 0 for v in (y0, y1, x0, x1))
    with torch.inference_mode():
        assert runner.model(torch.zeros(1, 1, y1 - y0, x1 - x0)).shape[-2:] == (64, 32)
