"""2.5D context stacks: fixed-mm offsets, interpolation, clamping, region masking, the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kidneyseg.config import resolve_config
from kidneyseg.context import context_offsets, context_stack
from kidneyseg.errors import KidneysegError


def _ramp(depth: int = 10, shape: tuple[int, int] = (4, 5), seed: int = 0) -> np.ndarray:
    """int16 slices that all differ: slice z holds 100 z + noise."""
    rng = np.random.default_rng(seed)
    base = 100 * np.arange(depth, dtype=np.int16)[:, None, None]
    return (base + rng.integers(-20, 20, (depth, *shape))).astype(np.int16)


class _Recorder:
    """A read-only volume that records which slices were read (as a memory map would load)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.read = array, array.shape, set()

    def __getitem__(self, rows: Any) -> np.ndarray:
        index = np.arange(self.shape[0])[rows]
        self.read.update(int(i) for i in np.atleast_1d(index))
        return self.array[rows]


def test_exact_offsets_are_the_neighbouring_slices() -> None:
    vol = _ramp()
    # 3 mm on a 1.5 mm grid: the neighbours are exactly two slices away.
    stack, support = context_stack(vol, [4, 5], 1.5, 3, 3.0)
    assert stack.shape == (2, 3, 4, 5) and stack.dtype == np.float32 and support is None
    for n, z in enumerate((4, 5)):
        for j, dz in enumerate((-2, 0, 2)):
            np.testing.assert_array_equal(stack[n, j], vol[z + dz])
    # Floating-point rounding (3 / 0.6 = 5.000000000000001) still reads whole slices.
    assert context_offsets(3, 3.0, 0.6).tolist() == [-5.0, 0.0, 5.0]
    # k = 1 is the slice itself.
    one, _ = context_stack(vol, [7], 2.5, 1, 3.0)
    assert one.shape == (1, 1, 4, 5)
    np.testing.assert_array_equal(one[0, 0], vol[7])


def test_halfway_is_the_mean_and_the_ends_clamp() -> None:
    vol = _ramp()
    # 1 mm on a 2 mm grid: half a slice either side.
    stack, _ = context_stack(vol, [3], 2.0, 3, 1.0)
    mean_below = (vol[2].astype(np.float64) + vol[3]) / 2
    mean_above = (vol[3].astype(np.float64) + vol[4]) / 2
    np.testing.assert_array_equal(stack[0, 0], mean_below)
    np.testing.assert_array_equal(stack[0, 2], mean_above)
    # Five channels 2 slices apart at the first and last slice: the ends repeat.
    first, _ = context_stack(vol, [0], 1.0, 5, 2.0)
    for j, z in enumerate((0, 0, 0, 2, 4)):
        np.testing.assert_array_equal(first[0, j], vol[z])
    last, _ = context_stack(vol, [9, 8], 1.0, 5, 2.0)
    for j, z in enumerate((5, 7, 9, 9, 9)):
        np.testing.assert_array_equal(last[0, j], vol[z])
    # Half-way beyond the end: the last slice, not an extrapolation.
    for j, z in enumerate((4, 6, 8, 9, 9)):
        np.testing.assert_array_equal(last[1, j], vol[z])
    # The position clamps before interpolating: 1.5 slices below slice 1 is slice 0.
    edge, _ = context_stack(vol, [1], 2.0, 3, 3.0)
    np.testing.assert_array_equal(edge[0, 0], vol[0])


def test_same_anatomy_at_5_mm_and_at_1_mm() -> None:
    """A smooth body sampled every 1 mm and every 5 mm: the same physical position gives the
    same stack (up to the linear interpolation's error), although the slice steps differ."""

    def scan(step_mm: float, length_mm: float = 120.0) -> np.ndarray:
        z = np.arange(0.0, length_mm + 1e-9, step_mm)[:, None, None]
        yy, xx = np.mgrid[:6, :7][:, None]
        return (200 * np.sin(2 * np.pi * z / 80.0 + 0.3 * yy) + 5 * xx).astype(np.float32)

    fine, coarse = scan(1.0), scan(5.0)
    at_mm = 40.0  # where the body changes fastest along z
    a, _ = context_stack(fine, [int(at_mm / 1.0)], 1.0, 3, 3.0)
    b, _ = context_stack(coarse, [int(at_mm / 5.0)], 5.0, 3, 3.0)
    # Linear interpolation of this sine on a 5 mm grid errs by at most
    # 200 * (5**2 / 8) * (2 pi / 80)**2 = 3.9 HU.
    np.testing.assert_allclose(b, a, atol=4.0)
    assert np.abs(a[0, 0] - a[0, 1]).mean() > 20  # the channels do differ: not a trivial pass
    # Fixed indices (one slice either side) would show different anatomy at 5 mm and 1 mm.
    c, _ = context_stack(coarse, [8], 5.0, 3, 5.0)
    assert np.abs(c[0, 0] - a[0, 0]).mean() > 20


def test_reads_only_the_needed_slices_of_a_memory_map(tmp_path: Path) -> None:
    vol = _ramp(depth=40)
    np.save(tmp_path / "image.npy", vol)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    stack, _ = context_stack(mapped, [20], 1.5, 3, 3.0)
    expected = np.stack([vol[18], vol[20], vol[22]])[None].astype(np.float32)
    np.testing.assert_array_equal(stack, expected)
    recorder = _Recorder(vol)
    context_stack(recorder, [20], 1.5, 3, 3.0)
    assert recorder.read == {18, 20, 22}
    recorder = _Recorder(vol)
    context_stack(recorder, [20, 21], 2.0, 3, 3.0)  # +-1.5 slices: 18.5 .. 22.5
    assert recorder.read == set(range(18, 24))


def test_phase_2_masks_each_neighbour_by_its_own_region() -> None:
    vol = _ramp()
    region = np.zeros(vol.shape, bool)
    region[3, 1:3, 1:4] = True  # the kidney's pole: smaller than the slices below
    region[4:7, 0:4, 0:5] = True
    stack, support = context_stack(vol, [4], 1.0, 3, 1.0, region)
    assert support is not None
    for j, z in enumerate((3, 4, 5)):
        np.testing.assert_array_equal(stack[0, j], vol[z] * region[z])
        np.testing.assert_array_equal(support[0, j], region[z])
    # Halfway: the mean of the two masked slices; in the region where either slice is.
    half, inside = context_stack(vol, [4], 2.0, 3, 1.0, region)
    assert inside is not None
    masked = vol.astype(np.float64) * region
    np.testing.assert_array_equal(half[0, 0], (masked[3] + masked[4]) / 2)
    np.testing.assert_array_equal(inside[0, 0], region[3] | region[4])
    # A region given as labels plus a function that makes the mask (as training reads them).
    labels = region.astype(np.uint8) * 2
    same, _ = context_stack(vol, [4], 1.0, 3, 1.0, labels, lambda raw: raw == 2)
    np.testing.assert_array_equal(same, stack)


def test_box_and_no_aliasing() -> None:
    vol = _ramp().astype(np.float32)
    before = vol.copy()
    region = vol > 300
    whole, mask = context_stack(vol, [2, 5, 8], 2.0, 3, 3.0, region)
    part, part_mask = context_stack(vol, [2, 5, 8], 2.0, 3, 3.0, region, box=(1, 3, 2, 5))
    assert mask is not None and part_mask is not None
    np.testing.assert_array_equal(part, whole[..., 1:3, 2:5])
    np.testing.assert_array_equal(part_mask, mask[..., 1:3, 2:5])
    # The caller's (float32, same-dtype) array is never written, even for k = 1.
    one, _ = context_stack(vol, [3, 4], 1.0, 1, 3.0, region)
    one += 1
    np.testing.assert_array_equal(vol, before)
    empty, empty_mask = context_stack(vol, [], 2.0, 3, 3.0, region)
    assert empty.shape == (0, 3, 4, 5) and empty_mask is not None


def test_bad_arguments_and_config() -> None:
    with pytest.raises(ValueError, match="odd"):
        context_offsets(2, 3.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        context_offsets(3, 3.0, 0.0)
    cfg = resolve_config("paper")
    assert (cfg.data.context_slices, cfg.data.context_mm, cfg.model.in_channels) == (1, 3.0, 1)
    three = resolve_config("fast", overrides=["data.context_slices=3", "data.context_mm=2.5"])
    assert (three.data.context_slices, three.model.in_channels) == (3, 3)
    assert resolve_config("paper", overrides=["data.context_slices=1"]).model.in_channels == 1
    with pytest.raises(KidneysegError, match="data.context_slices must be odd"):
        resolve_config("paper", overrides=["data.context_slices=4"])
    with pytest.raises(KidneysegError, match="data.context_slices must be odd"):
        resolve_config("paper", overrides=["data.context_slices=0"])
    with pytest.raises(KidneysegError, match="data.context_mm must be > 0"):
        resolve_config("paper", overrides=["data.context_mm=0"])
    with pytest.raises(KidneysegError, match=r"model.in_channels \(3\) must equal"):
        resolve_config("paper", overrides=["model.in_channels=3"])
    with pytest.raises(KidneysegError, match=r"model.in_channels \(1\) must equal"):
        resolve_config("paper", overrides=["data.context_slices=3", "model.in_channels=1"])
