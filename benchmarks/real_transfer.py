"""Does what the models learn here carry over to real CT? Phantoms alone vs phantoms + real slices.

KiTS imaging cannot be reached from our machines, so this is the project's one real-image check:

1. the phantom cohort (`kidneyseg.data.phantoms`) -> ``OUT/phantoms`` -> ``OUT/prep``;
2. two runs of both phases with the same settings: ``OUT/run_phantoms`` (phantoms only) and
   ``OUT/run_mixed`` (phantoms + the 55 real KiTS19 slices of ``../shared/data/kits19_slices``
   through ``data.extra_cases``, their own patient-level split; their test patients stay out);
3. each run predicts the real TotalSegmentator CT (``../shared/data/totalseg_example``) and is
   compared with TotalSegmentator's kidney masks (labels > 0 vs kidney_left | kidney_right: a
   model's output, a sanity reference, not ground truth), per side from the direction cosines
   (patient left = +x in LPS);
4. each run is evaluated on the phantom test split and on the real slices of the held-out
   patients (per-slice Dice; every one of those slices holds kidney).

Prints the time of each stage and, as its last line, one JSON object. The real slices' HU
stop at 255, so both phases clip to windows inside [0, 255] in both runs (phase 1: the
paper's [0, 200]; phase 2: [0, 255] instead of unclipped).

Example:
    python benchmarks/real_transfer.py --out out/real_transfer        # ~25 min on 2 AVX2 cores
    python benchmarks/real_transfer.py --out /tmp/rt --quick          # smoke run, minutes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    SHARED,
    TS_KIDNEY_LEFT,
    TS_KIDNEY_RIGHT,
    SharedData,
    StageClock,
    name_phantoms_apart,
    read_image_labels,
)

from kidneyseg.config import Config, resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.evaluation import evaluate
from kidneyseg.formats.prep_dir import read_split
from kidneyseg.geometry import CanonicalGeometry
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.metrics import dice
from kidneyseg.preprocessing import preprocess
from kidneyseg.stats import body_midline_x
from kidneyseg.training import train_phase
from kidneyseg.types import Volume

_DEFAULT = SharedData()
REAL_SLICES, TS_CT, TS_SEG = _DEFAULT.real_slices, _DEFAULT.ts_ct, _DEFAULT.ts_seg


def use_shared(root: Path) -> None:
    """Point the real-data paths at another copy of ``shared/data``."""
    global REAL_SLICES, TS_CT, TS_SEG
    shared = SharedData(root)
    REAL_SLICES, TS_CT, TS_SEG = shared.real_slices, shared.ts_ct, shared.ts_seg


def side_masks(mask: np.ndarray, ct: Volume) -> dict[str, np.ndarray]:
    """Split a canonical mask into patient left / right, voxel by voxel, at the body midline
    (`kidneyseg.stats.body_midline_x`; LPS x from the direction cosines)."""
    geometry = CanonicalGeometry.of(ct)
    hu = ct.to_canonical()
    index = np.indices(hu.shape, dtype=np.float64).reshape(3, -1).T
    x = geometry.lps_x(index).reshape(hu.shape)
    midline = body_midline_x(geometry, hu.shape, hu)
    return {"left": mask & (x > midline), "right": mask & (x <= midline)}


def compare_with_totalseg(pred: Volume, ct: Volume) -> dict[str, Any]:
    """Kidney Dice vs TotalSegmentator, per-side volumes and whether the sides are right."""
    ts_file = read_image_labels(TS_SEG)
    if ts_file.shape != ct.shape:
        raise SystemExit(f"{TS_SEG}: shape {ts_file.shape} differs from the CT's {ct.shape}")
    ts = Volume(ts_file, ct.spacing, ct.origin, ct.direction).to_canonical()
    ts_left = ts == TS_KIDNEY_LEFT
    ts_right = ts == TS_KIDNEY_RIGHT
    kidney = pred.to_canonical() > 0
    sides = side_masks(kidney, ct)
    ml = ct.voxel_volume_ml
    d_left, d_right = dice(sides["left"], ts_left), dice(sides["right"], ts_right)
    crossed = max(dice(sides["left"], ts_right), dice(sides["right"], ts_left))
    return {
        "kidney_dice_vs_totalseg": round(dice(kidney, ts_left | ts_right), 4),
        "kidney_dice_left": round(d_left, 4),
        "kidney_dice_right": round(d_right, 4),
        "left_right_correct": bool(min(d_left, d_right) > crossed),
        "kidney_ml_left": round(float(sides["left"].sum()) * ml, 1),
        "kidney_ml_right": round(float(sides["right"].sum()) * ml, 1),
        "totalseg_ml_left": round(float(ts_left.sum()) * ml, 1),
        "totalseg_ml_right": round(float(ts_right.sum()) * ml, 1),
    }


def train_both(prep: Path, run: Path, cfgs: dict[str, Config], clock: StageClock, tag: str) -> None:
    for phase in ("kidney", "tumor"):
        cfg = cfgs[phase]
        clock(f"train {tag} {phase}", train_phase, prep, run, phase, cfg, progress=False)


def figure(ct: Volume, preds: dict[str, Volume], path: Path) -> None:
    """Axial and coronal views through the kidneys: TotalSegmentator outline vs our labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hu = ct.to_canonical()
    ts = Volume(read_image_labels(TS_SEG), ct.spacing, ct.origin, ct.direction).to_canonical()
    ts_kidney = (ts == TS_KIDNEY_LEFT) | (ts == TS_KIDNEY_RIGHT)
    z = int(np.argmax(ts_kidney.sum(axis=(1, 2))))
    y = int(np.argmax(ts_kidney.sum(axis=(0, 2))))
    sz, sy, sx = ct.canonical_spacing
    fig = Figure(figsize=(4.2 * len(preds), 8.4), dpi=100)
    FigureCanvasAgg(fig)
    for col, (name, pred) in enumerate(preds.items()):
        labels = pred.to_canonical()
        views = (
            ("axial", hu[z], labels[z], ts_kidney[z], sy / sx),
            ("coronal", hu[::-1, y], labels[::-1, y], ts_kidney[::-1, y], sz / sx),
        )
        for row, (view, img, lab, ref, aspect) in enumerate(views):
            ax = fig.add_subplot(2, len(preds), row * len(preds) + col + 1)
            # Canonical x runs right -> left, so column 0 is the patient's right: radiological.
            ax.imshow(img, cmap="gray", vmin=-160, vmax=240, aspect=aspect)
            overlay = np.zeros((*lab.shape, 4))
            overlay[lab == 1] = (1.0, 0.2, 0.2, 0.45)
            overlay[lab == 2] = (1.0, 0.9, 0.0, 0.7)
            ax.imshow(overlay, aspect=aspect)
            ax.contour(ref.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(f"{name}: {view}", fontsize=9)
            ax.text(0.01, 0.5, "R", color="w", transform=ax.transAxes, fontsize=9)
            ax.text(0.96, 0.5, "L", color="w", transform=ax.transAxes, fontsize=9)
            ax.set_axis_off()
    fig.suptitle(
        "Real CT (TotalSegmentator example): red kidney / yellow tumor = kidneyseg; "
        "green outline = TotalSegmentator kidneys",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def phantom_test_dice(run: Path, data: Path, prep: Path, out: Path) -> dict[str, float]:
    test = list(read_split(prep / "split.json").test)
    Predictor(run, device="cpu", progress=False).predict_paths(data, out / "pred", cases=test)
    summary = evaluate(out / "pred", data, out / "eval", cases=test)
    metrics = summary["metrics"]
    return {
        "kidney": round(float(metrics["paper_case_dice_kidney"]["mean"]), 4),
        "tumor": round(float(metrics["paper_case_dice_tumor"]["mean"] or 0.0), 4),
    }


def real_slice_dice(run: Path, prep_real: Path, out: Path) -> dict[str, Any]:
    """Per-slice Dice on the real slices held out by the extra cases' own split (test set)."""
    split = read_split(prep_real / "split.json")
    pred_dir = out / "pred"
    Predictor(run, device="cpu", progress=False).predict_paths(
        REAL_SLICES, pred_dir, cases=list(split.test)
    )
    kidney, tumor = [], []
    for case in split.test:
        gt = np.asarray(read_labels(REAL_SLICES / case / "segmentation.nii.gz").array)
        pred = np.asarray(read_labels(pred_dir / f"{case}.nii.gz").array)
        kidney.append(dice(pred > 0, gt > 0))
        if (gt == 2).any():
            tumor.append(dice(pred == 2, gt == 2))
    return {
        "cases": len(split.test),
        "kidney": round(float(np.mean(kidney)), 4) if kidney else None,
        "tumor": round(float(np.mean(tumor)), 4) if tumor else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/real_transfer"), help="output folder")
    parser.add_argument("--cases", type=int, default=40, help="phantom cases")
    parser.add_argument("--seed", type=int, default=0, help="phantom cohort seed")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="extra config override for both runs (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (not a measurement)")
    parser.add_argument("--figure", type=Path, default=None, help="also write the figure here")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared/data folder")
    args = parser.parse_args()
    use_shared(args.shared)

    start = time.perf_counter()
    out: Path = args.out
    clock = StageClock("real_transfer")
    # The fast preset's network and input (ResNet34 U-Net, 128 px), with a budget that fits
    # both runs in about 20 minutes on 2 cores without native bf16: phase 1 sees 120 batches
    # of 16 slices, phase 2 (a smaller task: tumor inside the kidney region) 64.
    common = [
        # Real slices stop at 255 HU: clip phase 2 inside that range in both runs.
        "data.tumor_window=0,255",
        *(["data.image_size=64"] if args.quick else []),
        *args.overrides,
    ]
    budget = {
        "kidney": ["train.epochs=6", "data.samples_per_epoch=320", "train.limit_val_batches=4"],
        "tumor": ["train.epochs=4", "data.samples_per_epoch=256", "train.limit_val_batches=4"],
    }
    if args.quick:
        budget = {p: ["train.epochs=1", "data.samples_per_epoch=32"] for p in budget}
    cases = 8 if args.quick else args.cases
    data, prep, prep_real = out / "phantoms", out / "prep", out / "prep_real"
    base_cfg = resolve_config("fast", overrides=common)
    clock("phantoms", write_cohort, data, cases=cases, seed=args.seed, workers=2)
    name_phantoms_apart(data)
    clock("preprocess", preprocess, data, prep, base_cfg, progress=False)
    # The real slices once, with their own patient-level split (their test patients stay out).
    clock("preprocess real", preprocess, REAL_SLICES, prep_real, base_cfg, progress=False)
    runs = {
        "phantoms": {p: resolve_config("fast", overrides=[*common, *b]) for p, b in budget.items()},
        "mixed": {
            p: resolve_config("fast", overrides=[*common, *b, f"data.extra_cases={prep_real}"])
            for p, b in budget.items()
        },
    }

    ct = read_image(TS_CT)
    results: dict[str, dict[str, Any]] = {}
    preds: dict[str, Volume] = {}
    for tag, cfgs in runs.items():
        run = out / f"run_{tag}"
        train_both(prep, run, cfgs, clock, tag)
        predictor = Predictor(run, device="cpu", progress=False)
        pred = clock(f"predict real CT {tag}", predictor.predict_volume, ct)
        write_volume(pred, out / f"totalseg_example_{tag}.nii.gz")
        preds[tag] = pred
        results[tag] = compare_with_totalseg(pred, ct)
        results[tag]["phantom_test_dice"] = phantom_test_dice(run, data, prep, out / f"eval_{tag}")
        results[tag]["real_slice_test_dice"] = real_slice_dice(run, prep_real, out / f"real_{tag}")
    png = out / "real_transfer.png"
    figure(ct, {"phantoms only": preds["phantoms"], "phantoms + real slices": preds["mixed"]}, png)
    if args.figure is not None:
        figure(
            ct,
            {"phantoms only": preds["phantoms"], "phantoms + real slices": preds["mixed"]},
            args.figure,
        )
    mix = results["mixed"]
    summary = {
        "run_dir": str((out / "run_mixed").resolve()),
        "kidney_dice_vs_totalseg": mix["kidney_dice_vs_totalseg"],
        "left_right_correct": mix["left_right_correct"],
        "kidney_ml_left": mix["kidney_ml_left"],
        "kidney_ml_right": mix["kidney_ml_right"],
        "totalseg_ml_left": mix["totalseg_ml_left"],
        "totalseg_ml_right": mix["totalseg_ml_right"],
        "phantom_only": results["phantoms"],
        "mixed": mix,
        "figure": str(png.resolve()),
        "seconds": clock.seconds,
        "total_s": round(time.perf_counter() - start, 1),
        "quick": bool(args.quick),
    }
    clock.say(f"run folder: {summary['run_dir']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
