"""The fast cascade: find the kidneys on a coarse pass, then segment only around them.

Most of an abdominal CT holds no kidney, and the networks are fully convolutional, so the
cascade's answer inside a generous crop equals its answer on the whole slice. Fast mode:

1. **Coarse pass.** Phase 1 on every k-th axial slice (k = ``inference.coarse_step_mm`` / slice
   spacing; a kidney is longer than 40 mm, so a 10 mm step cannot miss one), only inside the
   body's bounding box (air around the patient is skipped).
2. **Boxes.** The kidney pixels found are grouped by body side (left / right of the body's
   midline); each group gets an axial range (one step beyond its outermost hits) and an
   in-plane box, both grown by ``inference.crop_margin_mm``.
3. **Dense phase 1** on every slice of each box, at full resolution. A mask that touches its
   box's edge (where the box is not already the image edge) grows the box and runs again.
4. **Phase 2** only on slices whose region is non-empty, on a box around the region.

``inference.fast_crop`` says what the boxes cut: ``"axial"`` (default) keeps whole slices and
cuts only the axial range, so every slice that runs gets exactly the naive cascade's answer
(the only difference: kidney the naive cascade would find beyond the range); ``"box"`` also
crops in-plane, which is faster but lets the crop edge change what a network with a large
receptive field answers near it (README "Speed").

`segment_cascade` runs this when ``inference.mode = "fast"`` and the whole-slice cascade with
``"naive"`` (the default). Given uint8 arrays to fill (``kidney_prob``, ``tumor_prob``,
``cyst_prob``), it also keeps each output's probability
(`kidneyseg.phase_runner.quantize_probability`): 0 wherever the phase did not run, and phase 2's
also 0 outside the region it saw. A phase-2 model that predicts cysts too
(``data.tumor_classes = "tumor,cyst"``) splits its masses into the tumor mask and a ``cyst``
array the caller gives (`kidneyseg.phase_runner.classify_logits`).
`kidneyseg.inference.Predictor` and the phase-1 regions of phase-2 training
(`kidneyseg.regions`) both call it. ``benchmarks/predict_speed.py`` times both modes and
reports the Dice between their label maps.

Example:
    >>> kidney, tumor, region = segment_cascade(k_runner, t_runner, ct, spacing,
    ...                                         cfg.inference)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.config import InferenceConfig
from kidneyseg.errors import KidneysegError
from kidneyseg.normalization import expand_region
from kidneyseg.phase_runner import PhaseRunner

#: HU above which a voxel belongs to the patient (or the table), not the air around them.
BODY_HU = -500
#: Most times a box grows when the mask touches its edge.
MAX_GROWTH = 3


@dataclass
class Box:
    """An axial range ``[z0, z1)`` and an in-plane box ``[y0, y1) x [x0, x1)`` (canonical)."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def plane(self) -> tuple[int, int, int, int]:
        return self.y0, self.y1, self.x0, self.x1

    @property
    def voxels(self) -> int:
        return (self.z1 - self.z0) * (self.y1 - self.y0) * (self.x1 - self.x0)


def merge_if_cheaper(boxes: list[Box]) -> list[Box]:
    """The boxes, or their bounding box when that costs no more voxels than they do together
    (two crops that overlap heavily run faster as one).

    Example:
        >>> merge_if_cheaper([Box(0, 4, 0, 8, 0, 5), Box(0, 4, 0, 8, 3, 8)])
        [Box(z0=0, z1=4, y0=0, y1=8, x0=0, x1=8)]
    """
    if len(boxes) < 2:
        return boxes
    union = Box(
        min(b.z0 for b in boxes),
        max(b.z1 for b in boxes),
        min(b.y0 for b in boxes),
        max(b.y1 for b in boxes),
        min(b.x0 for b in boxes),
        max(b.x1 for b in boxes),
    )
    return [union] if union.voxels <= sum(b.voxels for b in boxes) else boxes


def body_box(ct: npt.NDArray[Any], slices: npt.NDArray[np.intp]) -> tuple[int, int, int, int]:
    """In-plane bounding box ``(y0, y1, x0, x1)`` of voxels above `BODY_HU` on some slices.

    Example:
        >>> ct = np.full((3, 8, 8), -1000); ct[:, 2:5, 1:7] = 40
        >>> body_box(ct, np.arange(3))
        (2, 5, 1, 7)
    """
    inside = np.zeros(ct.shape[1:], bool)
    for z in slices:
        inside |= np.asarray(ct[int(z)]) > BODY_HU
    if not inside.any():
        return 0, ct.shape[1], 0, ct.shape[2]
    ys, xs = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _grow(box: Box, limits: Box, dz: int, dy: int, dx: int) -> Box:
    """``box`` grown by ``(dz, dy, dx)`` voxels on every side, kept inside ``limits``."""
    return Box(
        max(limits.z0, box.z0 - dz),
        min(limits.z1, box.z1 + dz),
        max(limits.y0, box.y0 - dy),
        min(limits.y1, box.y1 + dy),
        max(limits.x0, box.x0 - dx),
        min(limits.x1, box.x1 + dx),
    )


def _touches(mask: npt.NDArray[np.bool_], box: Box, limits: Box) -> bool:
    """True when ``mask`` (the box's part) reaches a box face that could still move out (is
    not a face of ``limits``: the volume's ends and the body's bounding box)."""
    if not mask.any():
        return False
    faces = (
        (box.z0 > limits.z0, mask[0]),
        (box.z1 < limits.z1, mask[-1]),
        (box.y0 > limits.y0, mask[:, 0]),
        (box.y1 < limits.y1, mask[:, -1]),
        (box.x0 > limits.x0, mask[:, :, 0]),
        (box.x1 < limits.x1, mask[:, :, -1]),
    )
    return any(inner and face.any() for inner, face in faces)


def side_boxes(mask: npt.NDArray[np.bool_], mid: float) -> list[Box]:
    """Tight boxes of a ``(z, y, x)`` mask's voxels on each side of column ``mid`` (x < mid,
    then x >= mid; a side without voxels has no box). Sides are cut by slicing, not by masking
    a copy of the whole volume.

    Example:
        >>> m = np.zeros((3, 4, 8), bool); m[1, 1:3, 1] = m[0, 2, 6] = True
        >>> side_boxes(m, 4.0)
        [Box(z0=1, z1=2, y0=1, y1=3, x0=1, x1=2), Box(z0=0, z1=1, y0=2, y1=3, x0=6, x1=7)]
    """
    split = max(0, min(mask.shape[2], int(math.ceil(mid))))  # integer x < mid <=> x < split
    boxes = []
    for start, part in ((0, mask[:, :, :split]), (split, mask[:, :, split:])):
        zs = np.flatnonzero(part.any(axis=(1, 2)))
        if not len(zs):
            continue
        ys = np.flatnonzero(part.any(axis=(0, 2)))
        xs = np.flatnonzero(part.any(axis=(0, 1)))
        boxes.append(
            Box(
                int(zs[0]),
                int(zs[-1]) + 1,
                int(ys[0]),
                int(ys[-1]) + 1,
                start + int(xs[0]),
                start + int(xs[-1]) + 1,
            )
        )
    return boxes


def kidney_boxes(
    hits: npt.NDArray[np.bool_],
    coarse: npt.NDArray[np.intp],
    step: int,
    body: tuple[int, int, int, int],
    depth: int,
    margin: tuple[int, int, int],
) -> list[Box]:
    """One box per body side holding kidney pixels on the coarse slices.

    Args:
        hits: phase-1 masks of the coarse slices, ``(len(coarse), y, x)``.
        coarse: their z indices.
        step: the coarse step in slices (a kidney may reach one step beyond its outer hits).
        body: the body's in-plane box (its centre splits left from right; boxes stay inside).
        depth: the number of axial slices.
        margin: ``(dz, dy, dx)`` voxels added around each group.
    """
    limits = Box(0, depth, *body)
    boxes = []
    for side in side_boxes(hits, (body[2] + body[3]) / 2):
        box = Box(
            int(coarse[side.z0]) - step + 1,
            int(coarse[side.z1 - 1]) + step,
            side.y0,
            side.y1,
            side.x0,
            side.x1,
        )
        boxes.append(_grow(box, limits, *margin))
    return boxes


def in_plane_crop(settings: InferenceConfig) -> bool:
    """Whether fast mode also crops in-plane (``inference.fast_crop``: "box") or only along the
    axial axis ("axial")."""
    if settings.fast_crop not in ("axial", "box"):
        raise KidneysegError(
            f"inference.fast_crop must be 'axial' or 'box' (got {settings.fast_crop!r})"
        )
    return settings.fast_crop == "box"


def segment_kidneys(
    runner: PhaseRunner,
    ct: npt.NDArray[Any],
    spacing: tuple[float, float, float],
    settings: InferenceConfig,
    progress: Callable[[int], object] | None = None,
    probabilities: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.bool_]:
    """Phase 1's mask of a canonical CT: around the kidneys only (``settings.mode = "fast"``)
    or on every whole slice (``"naive"``). Prediction and phase-2 training both call this.

    ``probabilities`` (uint8, the CT's shape), when given, receives the phase's probability
    where it ran densely (0 elsewhere; the coarse pass does not count)."""
    step = max(1, int(round(settings.coarse_step_mm / spacing[0])))
    # A short volume (a few slices, or thick ones) gains nothing from a coarse pass.
    if settings.mode == "naive" or ct.shape[0] < 3 * step:
        everything = np.arange(ct.shape[0])
        return runner.segment(
            ct, everything, progress=progress, probabilities=probabilities, spacing_z=spacing[0]
        )
    if probabilities is not None:
        probabilities[...] = 0
    shape = ct.shape
    kidney = np.zeros(shape, bool)
    coarse = np.arange(min(step // 2, shape[0] - 1), shape[0], step)
    body = body_box(ct, coarse)
    hits = runner.segment(ct, coarse, progress=progress, box=body, spacing_z=spacing[0])
    dz, dy, dx = (int(math.ceil(settings.crop_margin_mm / s)) for s in spacing)
    limits = Box(0, shape[0], *body)
    boxes = kidney_boxes(hits, coarse, step, body, shape[0], (dz, dy, dx))
    if not in_plane_crop(settings):  # whole slices over each kidney's axial range
        limits = Box(0, shape[0], 0, shape[1], 0, shape[2])
        boxes = [Box(b.z0, b.z1, *limits.plane) for b in boxes]
    for box in merge_if_cheaper(boxes):
        for _ in range(MAX_GROWTH + 1):
            zs = np.arange(box.z0, box.z1)
            buf = None if probabilities is None else np.empty((len(zs), *shape[1:]), np.uint8)
            plane = box.plane if in_plane_crop(settings) else None
            part = runner.segment(
                ct, zs, progress=progress, box=plane, probabilities=buf, spacing_z=spacing[0]
            )
            if not _touches(part[:, box.y0 : box.y1, box.x0 : box.x1], box, limits):
                break
            box = _grow(box, limits, dz, dy, dx)
        kidney[box.z0 : box.z1] |= part
        if probabilities is not None and buf is not None:
            np.maximum(probabilities[box.z0 : box.z1], buf, out=probabilities[box.z0 : box.z1])
    return kidney


def segment_tumors(
    runner: PhaseRunner,
    ct: npt.NDArray[Any],
    region: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
    settings: InferenceConfig,
    progress: Callable[[int], object] | None = None,
    probabilities: npt.NDArray[np.uint8] | None = None,
    cyst: npt.NDArray[np.bool_] | None = None,
    cyst_probabilities: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.bool_]:
    """Phase 2's tumor mask: only on slices where ``region`` is non-empty; in fast mode with
    ``inference.fast_crop = "box"`` only on a box (per body side) around the region, grown by
    ``settings.crop_margin_mm``.

    ``probabilities`` (uint8, the CT's shape), when given, receives the tumor probability on
    the slices and boxes it ran on (0 elsewhere). A model that predicts cysts too fills
    ``cyst`` (bool, the CT's shape; required then) with the masses whose cyst output is the more
    probable, and ``cyst_probabilities`` when given; the tumor mask holds the other masses.
    Where two boxes overlap and disagree, tumor wins (as on ties)."""
    tumor = np.zeros(ct.shape, bool)
    outputs = runner.outputs
    if "cyst" in outputs and cyst is None:
        raise ValueError("this phase-2 model predicts cysts too: pass a cyst array to fill")
    targets = {"tumor": probabilities, "cyst": cyst_probabilities}
    for array in (*targets.values(), cyst):
        if array is not None:
            array[...] = 0
    want = [(i, targets[name]) for i, name in enumerate(outputs) if targets.get(name) is not None]

    def run(zs: npt.NDArray[np.intp], box: tuple[int, int, int, int] | None) -> None:
        shape = (len(zs), *ct.shape[1:])
        buf = np.empty((len(outputs), *shape), np.uint8) if want else None
        best = np.empty(shape, np.uint8) if cyst is not None and "cyst" in outputs else None
        mask = runner.segment(
            ct,
            zs,
            region,
            progress=progress,
            box=box,
            probabilities=buf,
            best_output=best,
            spacing_z=spacing[0],
        )
        if best is not None and cyst is not None:
            is_cyst = best == outputs.index("cyst")
            cyst[zs] |= mask & is_cyst
            mask &= ~is_cyst
        tumor[zs] |= mask
        for index, target in want:
            if buf is not None and target is not None:
                target[zs] = np.maximum(target[zs], buf[index])

    if settings.mode == "naive" or not in_plane_crop(settings):  # whole region slices
        zs = np.flatnonzero(region.any(axis=(1, 2)))
        if len(zs):
            run(zs, None)
        return tumor  # one run per slice: tumor and cyst cannot overlap
    dy, dx = (int(math.ceil(settings.crop_margin_mm / s)) for s in spacing[1:])
    body = body_box(ct, np.flatnonzero(region.any(axis=(1, 2)))[::4])
    whole = Box(0, ct.shape[0], 0, ct.shape[1], 0, ct.shape[2])
    boxes = [_grow(b, whole, 0, dy, dx) for b in side_boxes(region, (body[2] + body[3]) / 2)]
    for box in merge_if_cheaper(boxes):
        inside = region[box.z0 : box.z1, box.y0 : box.y1, box.x0 : box.x1]
        zs = box.z0 + np.flatnonzero(inside.any(axis=(1, 2)))
        run(zs, box.plane)
    if cyst is not None:
        cyst &= ~tumor
    return tumor


def segment_cascade(
    kidney_runner: PhaseRunner,
    tumor_runner: PhaseRunner,
    ct: npt.NDArray[Any],
    spacing: tuple[float, float, float],
    settings: InferenceConfig,
    progress: Callable[[int], object] | None = None,
    kidney_prob: npt.NDArray[np.uint8] | None = None,
    tumor_prob: npt.NDArray[np.uint8] | None = None,
    cyst: npt.NDArray[np.bool_] | None = None,
    cyst_prob: npt.NDArray[np.uint8] | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The cascade's raw masks ``(kidney, tumor, region)`` of a canonical CT.

    Phase 2 sees phase 1's mask grown by the tumor model's ``data.region_margin_mm``, as it
    was trained (0 mm: the paper's tight region). ``kidney_prob`` / ``tumor_prob`` /
    ``cyst_prob`` (uint8, the CT's shape), when given, receive each output's probability
    (``round(p x 255)``); phase 2's are 0 outside the region. A phase-2 model that predicts
    cysts too needs ``cyst`` (bool, the CT's shape), which receives its cyst mask
    (`segment_tumors`); a tumor-only model leaves it all False.
    """
    kidney = segment_kidneys(kidney_runner, ct, spacing, settings, progress, kidney_prob)
    margin_mm = tumor_runner.config.data.region_margin_mm
    region = expand_region(kidney, (spacing[1], spacing[2]), margin_mm)
    tumor = segment_tumors(
        tumor_runner, ct, region, spacing, settings, progress, tumor_prob, cyst, cyst_prob
    )
    for prob in (tumor_prob, cyst_prob):
        if prob is not None:
            prob[~region] = 0
    return kidney, tumor, region
