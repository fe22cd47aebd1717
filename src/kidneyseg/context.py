"""2.5D context: neighbouring axial slices, at fixed millimetre offsets, as input channels.

A 2D slice lacks what lies above and below it. With ``data.context_slices = k`` (odd) a phase's
input is ``k`` channels: channel ``j`` is the canonical ``(z, y, x)`` volume at
``z + (j - k // 2) * context_mm / spacing_z``, linearly interpolated between the two nearest
slices and clamped at the volume's ends. The offsets are millimetres, not indices, so a 0.5 mm
and a 5 mm scan show the network the same anatomy. ``k = 1`` is the paper's single slice.

`context_stack` is the one place that builds these stacks: the training dataset
(`kidneyseg.dataset.SliceDataset`) and inference (`kidneyseg.phase_runner.PhaseRunner`) both
call it, so training and prediction see identical inputs. It reads only the slices it needs,
so the volume may be a memory map.

Phase 2 (input = CT x kidney region): every channel is masked by the region *of its own
slices* (each source slice multiplied by its own region, then interpolated), not by the centre
slice's region. A channel is then exactly the phase-2 input volume (the same CT x region the
single-slice model sees) at another height: what lies outside the kidney stays hidden in every
channel, as the masking intends, and the channels show the kidney's own 3D extent (a pole
ending, a mass bulging above it). Masking neighbours with the centre's region would instead show
unclipped, unmasked tissue (liver, bowel, fat) wherever the neighbouring kidney section is smaller
than the centre's, near the poles, input the single-slice model never sees. Training (regions
from the labels or from phase 1, grown by ``data.region_margin_mm``) and inference (phase 1's
grown region) apply the same rule through this function.

Example:
    >>> vol = np.arange(4, dtype=np.int16)[:, None, None] * np.ones((1, 2, 2), np.int16)
    >>> stack, _ = context_stack(vol, [1], spacing_z=2.0, context_slices=3, context_mm=3.0)
    >>> stack.shape, stack[0, :, 0, 0].tolist()
    ((1, 3, 2, 2), [0.0, 1.0, 2.5])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: Offsets closer than this to a whole slice count as that slice (no interpolation), so e.g.
#: 3 mm on a 0.6 mm grid reads slice z + 5 exactly despite floating-point rounding.
_WHOLE = 1e-6


def context_offsets(
    context_slices: int, context_mm: float, spacing_z: float
) -> npt.NDArray[np.float64]:
    """The channels' offsets along z, in slices: ``(j - k // 2) * context_mm / spacing_z``.

    Example:
        >>> context_offsets(3, 3.0, 1.5).tolist()
        [-2.0, 0.0, 2.0]
    """
    if context_slices < 1 or context_slices % 2 == 0:
        raise ValueError(f"context_slices must be odd and >= 1 (got {context_slices})")
    if not (spacing_z > 0 and context_mm > 0):
        raise ValueError(f"context_mm and spacing_z must be > 0 ({context_mm}, {spacing_z})")
    steps = np.arange(context_slices, dtype=np.float64) - context_slices // 2
    offsets = steps * (float(context_mm) / float(spacing_z))
    whole = np.round(offsets)
    return np.where(np.abs(offsets - whole) < _WHOLE, whole, offsets)


def context_stack(
    volume: npt.NDArray[Any],
    slices: Sequence[int] | npt.NDArray[np.integer[Any]],
    spacing_z: float,
    context_slices: int,
    context_mm: float,
    region: npt.NDArray[Any] | None = None,
    region_mask: Callable[[npt.NDArray[Any]], npt.NDArray[Any]] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]:
    """The ``k``-channel input of the given slices, and (phase 2) where it lies in the region.

    Args:
        volume: canonical ``(z, y, x)`` HU (any dtype; a memory map is read slice by slice).
        slices: indices along z of the centre slices.
        spacing_z: the volume's canonical z spacing (mm).
        context_slices: ``k``, odd.
        context_mm: distance (mm) between neighbouring channels.
        region: phase 2's region source, indexed like ``volume`` (a bool mask, or e.g. a label
            map that ``region_mask`` turns into one); each source slice is multiplied by its
            own region before interpolating.
        region_mask: turns ``region[zs]`` (``(m, y, x)``, whole slices) into a bool mask;
            default ``astype(bool)``.
        box: ``(y0, y1, x0, x1)``: return only this part of each slice.

    Returns:
        ``(stack, support)``: float32 ``(len(slices), k, y, x)`` HU (CT x region with a region),
        and bool ``(len(slices), k, y, x)``, true where a channel draws on a voxel inside the
        region (``None`` without a region). For ``k = 1`` the stack is the slices themselves.
    """
    zs = np.asarray(slices, dtype=np.intp).reshape(-1)
    depth = volume.shape[0]
    offsets = context_offsets(context_slices, context_mm, spacing_z)
    position = np.clip(zs[:, None] + offsets[None, :], 0, depth - 1)
    lo = np.floor(position).astype(np.intp)
    weight = (position - lo).astype(np.float32)
    hi = np.minimum(lo + 1, depth - 1)
    blend = weight > 0
    if len(zs) == 0:
        height, width = volume.shape[1:] if box is None else (box[1] - box[0], box[3] - box[2])
        empty = np.zeros((0, context_slices, height, width), np.float32)
        return empty, None if region is None else empty.astype(bool)
    # Read each needed slice once: one contiguous range when possible (no fancy-index copy).
    need = np.unique(np.concatenate([lo.ravel(), hi[blend]]))
    contiguous = int(need[-1]) - int(need[0]) + 1 == len(need)
    rows: Any = slice(int(need[0]), int(need[-1]) + 1) if contiguous else need
    plane: Any = np.s_[:, :, :] if box is None else np.s_[:, box[0] : box[1], box[2] : box[3]]
    block = np.array(volume[rows][plane], dtype=np.float32)  # a copy: never the caller's array
    mask = None
    if region is not None:
        raw = np.asarray(region[rows])  # whole slices: a margin may grow in from outside a box
        mask = np.asarray(raw.astype(bool) if region_mask is None else region_mask(raw), bool)
        mask = mask[plane]
        block *= mask
    at_lo, at_hi = np.searchsorted(need, lo), np.searchsorted(need, hi)
    if not blend.any() and np.array_equal(at_lo.ravel(), np.arange(len(need))):
        # Every channel a whole slice, read in order (k = 1, or sparse slices): no gather copy.
        stack = block.reshape(len(zs), context_slices, *block.shape[1:])
        support = None if mask is None else mask.reshape(stack.shape)
        return stack, support
    stack = block[at_lo]
    support = None if mask is None else mask[at_lo]
    if blend.any():
        w = weight[blend][:, None, None]
        stack[blend] = (1 - w) * stack[blend] + w * block[at_hi[blend]]
        if support is not None and mask is not None:
            support[blend] |= mask[at_hi[blend]]
    return stack, support
