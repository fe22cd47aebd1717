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
   A phase 2 with tumor and cyst outputs (``data.tumor_classes = "tumor,cyst"``) averages
   each output on its own, then splits the masses as the axial cascade does
   (`classify_means`, the rule of `kidneyseg.phase_runner.classify_logits`): a mass where
   the higher mean is above the threshold, a cyst where the cyst mean is the higher.

Each plane model runs as the axial ones do: flip TTA (``inference.tta``: the mirror of the
slice's columns, the flip its training augmentation applied: left-right for coronal,
front-back for sagittal) and 2.5D context (``data.context_slices``: neighbours
``data.context_mm`` apart along the plane's slicing axis, the distance between its view's
slices that its training data recorded, `kidneyseg.plane_views`), and on the ONNX backend
when asked (`by_folder` names each model's ``<phase>_<plane>/best.onnx``).

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
from kidneyseg.formats.run_dir import best_checkpoint, phase_dir, trained_planes
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


def by_folder(runners: Runners) -> dict[str, PhaseRunner]:
    """The runners keyed by the name of their model folder (``kidney``, ``tumor_coronal``...;
    `kidneyseg.formats.run_dir.phase_dir`): what `kidneyseg.onnx_backend.use_backend` looks
    for ``<folder>/best.onnx`` under, so the plane models run on ONNX Runtime too.

    Example:
        >>> sorted(by_folder({"kidney": {"axial": 1, "coronal": 2}}))
        ['kidney', 'kidney_coronal']
    """
    return {
        phase_dir(".", phase, plane).name: runner
        for phase, planes in runners.items()
        for plane, runner in planes.items()
    }


def select_planes(
    axial: Mapping[str, PhaseRunner],
    others: Runners,
    settings: InferenceConfig,
) -> dict[str, dict[str, PhaseRunner]]:
    """Each phase's runners by plane, as ``settings.planes`` asks: every plane it has
    ("all") or the listed planes it has.

    Raises:
        KidneysegError: a listed plane that no phase has, a phase left without a plane,
            plane models with ``settings.mode = "fast"``, or a plane model whose outputs are
            not its axial model's (`check_outputs`).
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
    check_outputs(axial, chosen)
    return chosen


def check_outputs(axial: Mapping[str, PhaseRunner], runners: Runners) -> None:
    """Every plane model of a phase must predict the outputs of its axial model (what the
    labels and probability files are made of, `kidneyseg.inference.Predictor`).

    Raises:
        KidneysegError: e.g. a tumor model with cysts beside a coronal one without.
    """
    for phase, planes in runners.items():
        want = axial[phase].outputs
        for plane, runner in planes.items():
            if runner.outputs != want:
                raise KidneysegError(
                    f"the {phase} {plane} model predicts {', '.join(runner.outputs)} but the "
                    f"axial one {', '.join(want)}: a phase's plane models must be trained with "
                    "the same data.tumor_classes (or choose planes with inference.planes)"
                )


def add_plane_probability(
    runner: PhaseRunner,
    ct: npt.NDArray[Any],
    grid: PlaneGrid,
    total: npt.NDArray[np.float32],
    region: npt.NDArray[np.bool_] | None = None,
    seen: npt.NDArray[np.bool_] | None = None,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Run one plane model on the CT's view and add each output's probability (``0..255``,
    back on the canonical grid) to ``total`` (float32 ``(outputs, z, y, x)``).

    A 2.5D model (``data.context_slices > 1``) reads its neighbours ``data.context_mm`` apart
    along the plane's slicing axis (canonical y for coronal, x for sagittal; the plane view's
    slice distance, `kidneyseg.planes.PlaneGrid.view_spacing`), as its training slices did.
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
    spacing_z = grid.view_spacing[0]
    for start in range(0, len(slices), step):
        idx = slices[start : start + step]
        buf = np.empty((len(total), len(idx), height, width), np.uint8)
        runner.segment(
            cast(Any, view),
            idx,
            cast(Any, masks),
            progress=progress,
            probabilities=buf,
            spacing_z=spacing_z,
        )
        inside = None if masks is None else grid.from_view(masks[idx])
        if inside is not None and seen is not None:
            grid.put(seen, idx, grid.take(seen, idx) | inside)
        for output, out_total in zip(buf, total, strict=True):
            prob = np.asarray(grid.from_view(output, linear=True), np.float32)
            if inside is not None:
                prob[~inside] = 0
            grid.put(out_total, idx, grid.take(out_total, idx) + prob)


def fuse_phase(
    runners: Mapping[str, PhaseRunner],
    ct: npt.NDArray[Any],
    spacing: tuple[float, float, float],
    region: npt.NDArray[np.bool_] | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]:
    """One phase over its planes: each output's mean probability over the planes, in steps
    of 1/255 as stored (float32 ``(outputs, z, y, x)`` holding ``round(mean p x 255)``), and
    (with a ``region``) where any plane's phase 2 looked."""
    outputs = next(iter(runners.values())).outputs
    total = np.zeros((len(outputs), *ct.shape), np.float32)
    seen = None if region is None else np.zeros(ct.shape, bool)
    for plane in (p for p in PLANES if p in runners):
        grid = PlaneGrid(plane, ct.shape, spacing)
        add_plane_probability(runners[plane], ct, grid, total, region, seen, progress)
    total /= np.float32(len(runners))
    np.rint(total, out=total)  # the masks are the same whether probabilities are kept or not
    return total, seen


def classify_means(
    means: npt.NDArray[np.float32], threshold: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
    """Masks and classes of fused means (`fuse_phase`), by the rule of
    `kidneyseg.phase_runner.classify_logits`: foreground where the most probable output's
    mean is above ``threshold``, its class that output's index (the first one on ties: a
    tumor where p_tumor >= p_cyst).

    Example:
        >>> means = np.array([[[[200, 100, 60]]], [[[90, 150, 60]]]], np.float32)
        >>> mask, best = classify_means(means, 0.5)
        >>> mask.tolist(), best.tolist()
        ([[[True, True, False]]], [[[0, 1, 0]]])
    """
    best_mean = means[0]
    best = np.zeros(best_mean.shape, np.uint8)
    for c in range(1, len(means)):
        better = means[c] > best_mean  # strictly: the first output wins ties
        best[better] = c
        best_mean = np.maximum(best_mean, means[c])
    return best_mean > threshold * PROBABILITY_SCALE, best


def segment_planes(
    runners: Runners,
    ct: npt.NDArray[Any],
    spacing: tuple[float, float, float],
    settings: InferenceConfig,
    progress: Callable[[int], object] | None = None,
    kidney_prob: npt.NDArray[np.uint8] | None = None,
    tumor_prob: npt.NDArray[np.uint8] | None = None,
    cyst: npt.NDArray[np.bool_] | None = None,
    cyst_prob: npt.NDArray[np.uint8] | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The cascade's raw masks ``(kidney, tumor, region)`` of a canonical CT over the planes
    of ``runners`` (`select_planes`); axial only: `segment_cascade` itself.

    A phase 2 with tumor and cyst outputs averages each output over the planes and splits
    the masses as the axial cascade does (`classify_means`): ``cyst`` (bool, the CT's shape;
    required then) receives the masses whose cyst mean is the higher, the tumor mask the
    rest. ``kidney_prob`` / ``tumor_prob`` / ``cyst_prob`` receive the means.

    Raises:
        KidneysegError: plane models with ``settings.mode = "fast"``.
    """
    kidney_runners, tumor_runners = runners["kidney"], runners["tumor"]
    if list(kidney_runners) == ["axial"] and list(tumor_runners) == ["axial"]:
        return segment_cascade(
            kidney_runners["axial"],
            tumor_runners["axial"],
            *(ct, spacing, settings, progress, kidney_prob, tumor_prob, cyst, cyst_prob),
        )
    if settings.mode == "fast":
        raise KidneysegError("inference.mode=fast runs axial models only; use naive")
    outputs = next(iter(tumor_runners.values())).outputs
    if "cyst" in outputs and cyst is None:
        raise ValueError("this phase-2 model predicts cysts too: pass a cyst array to fill")
    threshold = settings.threshold
    means, _ = fuse_phase(kidney_runners, ct, spacing, None, progress)
    kidney = means[0] > threshold * PROBABILITY_SCALE
    if kidney_prob is not None:
        kidney_prob[...] = means[0]
    means, seen = fuse_phase(tumor_runners, ct, spacing, kidney, progress)
    assert seen is not None
    mass, best = classify_means(means, threshold)
    targets = {"tumor": tumor_prob, "cyst": cyst_prob}
    for array in (*targets.values(), cyst):
        if array is not None:
            array[...] = 0
    for index, name in enumerate(outputs):
        target = targets.get(name)
        if target is not None:
            target[...] = means[index]
    tumor = mass & (best == outputs.index("tumor"))
    if cyst is not None and "cyst" in outputs:
        cyst[...] = mass & (best == outputs.index("cyst"))
    return kidney, tumor, seen
