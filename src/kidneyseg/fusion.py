"""Multi-planar prediction: each phase runs every plane model it has, probabilities averaged.

A model folder trained with ``data.planes`` holds coronal and sagittal models beside the axial
ones (``RUN_DIR/<phase>_<plane>/``, `kidneyseg.formats.run_dir`). `segment_planes` then runs,
for each phase, every plane model on the matching view of the canonical CT
(`kidneyseg.planes.PlaneView`: whole slices, as the naive cascade does), maps each model's
probability back onto the canonical grid (linear), and averages them; the mean above
``inference.threshold`` is the phase's mask:

1. phase 1 in every plane -> fused kidney region;
2. phase 2 in every plane on the CT x the fused region (each plane's region grown by its
   model's ``data.region_margin_mm`` in that plane's slices, as its training slices were),
   only on plane slices that cut the region; a plane's probability is 0 outside its region.

A folder (or an ``inference.planes`` choice) with axial models only takes
`kidneyseg.localization.segment_cascade` unchanged, so its results are bit-identical to a
cascade without planes. The planes' probabilities are averaged at the 8-bit resolution of the
probability files (`kidneyseg.phase_runner.quantize_probability`, within 1/510 of each
sigmoid). Fast mode is axial only: with plane models it is refused (say
``inference.planes=axial`` to run it on the axial models of a multi-planar folder).

Example:
    >>> runners = select_planes({"kidney": k, "tumor": t}, load_plane_runners("run"),
    ...                         cfg.inference)  # doctest: +SKIP
    >>> kidney, tumor, region = segment_planes(runners, ct, spacing,
    ...                                        cfg.inference)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from kidneyseg.config import InferenceConfig
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.pred_dir import PROBABILITY_SCALE
from kidneyseg.formats.run_dir import best_checkpoint, trained_planes
from kidneyseg.localization import segment_cascade
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.planes import PLANES, PlaneGrid, PlaneView, parse_planes, slices_with
from kidneyseg.types import PHASES

#: Voxels of plane probabilities held at a time (besides the canonical sums).
_CHUNK_VOXELS = 1 << 24

Runners = Mapping[str, Mapping[str, PhaseRunner]]


def load_plane_runners(run_dir: str | Path) -> dict[str, dict[str, PhaseRunner]]:
    """The coronal and sagittal models ``run_dir`` holds, per phase (loaded on the CPU).

    Raises:
        KidneysegError: a corrupt checkpoint, or one of another phase.
    """
    return {
        phase: {
            plane: PhaseRunner.load(best_checkpoint(run_dir, phase, plane), phase)
            for plane in trained_planes(run_dir, phase)
            if plane != "axial"
        }
        for phase in PHASES
    }


def select_planes(
    axial: Mapping[str, PhaseRunner],
    others: Runners,
    settings: InferenceConfig,
) -> dict[str, dict[str, PhaseRunner]]:
    """Each phase's runners by plane, as ``settings.planes`` asks: every plane it has
    ("all") or the listed planes it has.

    Raises:
        KidneysegError: a listed plane that no phase has, a phase left without a plane, or
            plane models with ``settings.mode = "fast"``.
    """
    held = {p: {"axial": axial[p], **others.get(p, {})} for p in PHASES}
    chosen = held
    if settings.planes.strip().lower() != "all":
        wanted = parse_planes(settings.planes)
        chosen = {p: {k: r for k, r in held[p].items() if k in wanted} for p in PHASES}
        missing = [k for k in wanted if not any(k in held[p] for p in PHASES)]
        empty = [p for p in PHASES if not chosen[p]]
        if missing or empty:
            what = f"no {missing[0]} model" if missing else f"no {empty[0]} model of these planes"
            raise KidneysegError(
                f"inference.planes={settings.planes}: the model folder has {what} (it has "
                + "; ".join(f"{p}: {', '.join(held[p])}" for p in PHASES)
                + ")"
            )
    if settings.mode == "fast" and any(list(c) != ["axial"] for c in chosen.values()):
        raise KidneysegError(
            "inference.mode=fast runs axial models only, and this model folder holds "
            "coronal/sagittal models too: use inference.mode=naive to average the planes, or "
            "inference.planes=axial for the fast axial cascade"
        )
    return chosen


def add_plane_probability(
    runner: PhaseRunner,
    ct: npt.NDArray[Any],
    grid: PlaneGrid,
    total: npt.NDArray[np.float32],
    region: npt.NDArray[np.bool_] | None = None,
    seen: npt.NDArray[np.bool_] | None = None,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Run one plane model on the CT's view and add its probability (``0..255``, back on
    the canonical grid) to ``total``.

    With a ``region`` (phase 2), the model runs only on plane slices that cut it, on CT x
    region grown by the model's ``data.region_margin_mm`` in the plane's slices; its
    probability is 0 outside that grown region, which is or-ed into ``seen``.
    """
    view = PlaneView(grid, ct)
    masks = None
    slices: npt.NDArray[np.intp] = np.arange(grid.view_shape[0])
    if region is not None:
        masks = PlaneView(grid, region, "mask", runner.config.data.region_margin_mm)
        slices = slices_with(region, grid)
    _, height, width = grid.view_shape
    step = max(runner.batch_size, _CHUNK_VOXELS // (height * width))
    for start in range(0, len(slices), step):
        idx = slices[start : start + step]
        buf = np.empty((len(idx), height, width), np.uint8)
        runner.segment(cast(Any, view), idx, cast(Any, masks), progress=progress, probabilities=buf)
        prob = np.asarray(grid.from_view(buf, linear=True), np.float32)
        if masks is not None:
            inside = grid.from_view(masks[idx])
            prob[~inside] = 0
            if seen is not None:
                grid.put(seen, idx, grid.take(seen, idx) | inside)
        grid.put(total, idx, grid.take(total, idx) + prob)


def fuse_phase(
    runners: Mapping[str, PhaseRunner],
    ct: npt.NDArray[Any],
    spacing: tuple[float, float, float],
    threshold: float,
    region: npt.NDArray[np.bool_] | None = None,
    progress: Callable[[int], object] | None = None,
    probabilities: npt.NDArray[np.uint8] | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_] | None]:
    """One phase over its planes: the mask where the planes' mean probability (in steps of
    1/255, as stored) is above ``threshold``, and (with a ``region``) where any plane's
    phase 2 looked.

    ``probabilities`` (uint8, the CT's shape), when given, receives that mean
    (``round(p x 255)``)."""
    total = np.zeros(ct.shape, np.float32)
    seen = None if region is None else np.zeros(ct.shape, bool)
    for plane in (p for p in PLANES if p in runners):
        grid = PlaneGrid(plane, ct.shape, spacing)
        add_plane_probability(runners[plane], ct, grid, total, region, seen, progress)
    total /= np.float32(len(runners))
    np.rint(total, out=total)  # the mask is the same whether probabilities are kept or not
    if probabilities is not None:
        probabilities[...] = total
    return total > threshold * PROBABILITY_SCALE, seen


def segment_planes(
    runners: Runners,
    ct: npt.NDArray[Any],
    spacing: tuple[float, float, float],
    settings: InferenceConfig,
    progress: Callable[[int], object] | None = None,
    kidney_prob: npt.NDArray[np.uint8] | None = None,
    tumor_prob: npt.NDArray[np.uint8] | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The cascade's raw masks ``(kidney, tumor, region)`` of a canonical CT over the planes
    of ``runners`` (`select_planes`); axial only: `segment_cascade` itself.

    Raises:
        KidneysegError: plane models with ``settings.mode = "fast"``.
    """
    kidney_runners, tumor_runners = runners["kidney"], runners["tumor"]
    if list(kidney_runners) == ["axial"] and list(tumor_runners) == ["axial"]:
        return segment_cascade(
            kidney_runners["axial"],
            tumor_runners["axial"],
            *(ct, spacing, settings, progress, kidney_prob, tumor_prob),
        )
    if settings.mode == "fast":
        raise KidneysegError("inference.mode=fast runs axial models only; use naive")
    threshold = settings.threshold
    kidney, _ = fuse_phase(kidney_runners, ct, spacing, threshold, None, progress, kidney_prob)
    tumor, seen = fuse_phase(tumor_runners, ct, spacing, threshold, kidney, progress, tumor_prob)
    assert seen is not None
    return kidney, tumor, seen
