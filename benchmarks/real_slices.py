"""Which 2D choices help on real CT? Few-shot training on the 55 real KiTS19 slices, by patient.

Phantoms cannot judge the choices that depend on how real CT looks (HU window, normalisation,
augmentation, loss, image size), and the 55 real KiTS19 slices of ``../shared/data`` are the
only real labelled CT here. Every one holds kidney, so negatives (slices without kidney) are
mixed in, and false positives are judged on negatives of patients never trained on.

Data (``OUT/data``, one KiTS-layout folder and its split; every image clipped to [0, 255] HU,
the range the real slices were published in, so no source stands out by its intensity range):

* positives: the 55 KiTS19 slices (32 patients), split by patient with
  `kidneyseg.splitting.make_split` (fractions 0.6 / 0.15 / 0.25, seed 0): train / val / test;
* training negatives: the 20 slices of the real TotalSegmentator DICOM series (one patient,
  upper abdomen at the liver dome), and phantom slices at least 20 mm from any labelled slice
  (`kidneyseg.data.phantoms`: mostly upper abdomen; phantoms split 0.7 / 0.1 / 0.2). The fast
  preset draws 0.8 of phase 1's slices from kidney slices and the rest uniformly, so about
  0.18 of the draws are negatives (the JSON gives the figure); phase 2 sees kidney slices only;
* held-out negatives, never trained on: real: the TotalSegmentator example CT's slices at least
  30 mm from its kidneys (pelvis; TotalSegmentator's own kidney masks decide) and the 3 dcmqi
  GE slices (liver level); synthetic: the test phantoms' negative slices.

Each row trains both phases from scratch (the ``fast`` preset: ResNet34 U-Net without ImageNet
weights, batch 16, bce_dice, cosine schedule) with one change against the baseline and the same
budget (phase 1: 1024 slices, phase 2: 384), then scores (`PhaseRunner`, whole slices, fp32, no
postprocessing). The baseline runs at **64 px**, not the preset's 128: on 2 CPU cores the whole
study affords about 24 steps of 16 slices per row at 128 px, after which phase 1 had learnt
nothing (kidney Dice 0.00 on the test slices); at 64 px a step costs a quarter, so every row
gets 64 steps. The image-size row therefore compares 64 with 128 px (256 px would cost 16 times
the baseline's time). Scores:

* kidney: per-slice Dice of phase 1 on the test patients' slices (labels 1-3 vs the mask);
* tumor: per-slice Dice of phase 2 on the slices of the test patients that hold tumor, run on
  the ground-truth kidney region as training does;
* false positives: the share of held-out negative slices with any kidney pixel, and the mean
  predicted volume (mL) and pixels per negative slice.

The 95 % intervals resample the test *patients* (bootstrap, 2000 draws): with a handful of
patients they are wide, and the ``baseline, seed 1`` row shows how far a mere change of the
training seed moves the figures. A window row changes phase 1 only, so it reuses the baseline's
phase 2. Nothing is tuned on the test patients: the best epoch is chosen by validation loss on
the validation patients (and validation phantoms).

Prints a table and writes a JSON (default ``docs/measurements/real_slices.json``; ``--quick``:
``OUT/real_slices.json``). ``OUT`` is this script's work folder: its ``data``, ``prep`` and
``runs`` are rebuilt on every run. ``--quick`` (32 px, one batch per phase, 10 patients, the
baseline and two rows; ``--rows all`` for every row) is a smoke run, not a measurement.

Example:
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/real_slices.py --out out/real_slices
    python benchmarks/real_slices.py --out /tmp/rs --quick          # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    SHARED,
    TS_KIDNEY_LEFT,
    TS_KIDNEY_RIGHT,
    SharedData,
    StageClock,
    name_phantoms_apart,
    read_image_labels,
)
from scipy import ndimage

from kidneyseg.config import Config, resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.formats import run_dir as rd
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.io import read_image, read_labels, write_volume
from kidneyseg.metrics import dice
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.preprocessing import preprocess
from kidneyseg.splitting import make_split, patient_id
from kidneyseg.training import train_phase
from kidneyseg.types import TUMOR, Volume

#: HU range of the real slices' source: every image here is clipped to it.
SOURCE_HU = (0, 255)
#: Patient-level split of the positives (train, val, test) and its seed.
POSITIVE_SPLIT = (0.6, 0.15, 0.25)
SPLIT_SEED = 0
#: Phantom slices at least this far (mm) from any labelled slice are negatives.
PHANTOM_MARGIN_MM = 20.0
#: Held-out real CT slices at least this far (mm) from TotalSegmentator's kidneys.
TS_MARGIN_MM = 30.0
#: Phantoms split by phantom (train, val, test).
PHANTOM_SPLIT = (0.7, 0.1, 0.2)
TRAIN_NEGATIVE_ID = "case_negative_tsdicom"

#: Settings every row shares on top of the ``fast`` preset. Phase 2's window [0, 255] is the
#: whole source range (the paper's "unclipped" cannot be had here); ``data.normalization=window``
#: needs an explicit one.
COMMON = ("data.tumor_window=0,255",)
#: Per phase: (epochs, slices per epoch, validation batches). Same for every row.
BUDGET = {"kidney": (4, 256, 2), "tumor": (3, 128, 2)}
IMAGE_SIZE = 64
QUICK_BUDGET = {"kidney": (1, 16, 1), "tumor": (1, 16, 1)}
QUICK_IMAGE_SIZE = 32
#: ``--quick``'s rows besides the baseline: one of phase 1 only, one of both phases.
QUICK_ROWS = ("window_20_45", "window_scaling")
BOOTSTRAP_DRAWS = 2000


@dataclass(frozen=True)
class Row:
    """One configuration: ``overrides`` on top of the baseline."""

    key: str  # for --rows, the run folder and the JSON
    name: str
    overrides: tuple[str, ...]
    what: str
    #: False: the change touches phase 1 only, so phase 2 is the baseline's.
    tumor: bool = True


def make_rows(size: int) -> list[Row]:
    """The study's rows; ``size`` is the baseline's image size (the size row doubles it)."""
    big = 2 * size
    return [
        Row(
            "baseline",
            "baseline",
            (),
            f"fast preset: window [0, 200], z-score, augmentation, bce_dice, {size} px",
        ),
        Row("seed1", "baseline, seed 1", ("train.seed=1",), "the baseline, another training seed"),
        Row(
            "window_0_255",
            "window [0, 255]",
            ("data.kidney_window=0,255",),
            "phase 1 window [0, 255]: the widest these pixels allow (= [-100, 255] here)",
            tumor=False,
        ),
        Row(
            "window_20_45",
            "window [20, 45]",
            ("data.kidney_window=20,45",),
            "phase 1 window [20, 45] (the paper's Table 1 ablation)",
            tumor=False,
        ),
        Row(
            "window_scaling",
            "window to [0, 1]",
            ("data.normalization=window",),
            "clip, then scale the window onto [0, 1] instead of z-scoring (both phases)",
        ),
        Row(
            "no_augment", "no augmentation", ("data.augment=false",), "no rotation/flip/crop/noise"
        ),
        Row(
            "bce", "loss bce", ("train.loss=bce",), "binary cross-entropy alone (the paper's loss)"
        ),
        Row("size", f"image {big}", (f"data.image_size={big}",), f"slices at {big} px"),
        Row(
            "no_rare",
            "no mass oversampling",
            ("data.rare_fraction=0",),
            "phase 1 draws its foreground from all kidney slices alike (data.rare_fraction=0)",
            tumor=False,
        ),
        # The fast preset's 64-px patches are whole slices at the study's 64 px: "patch" halves
        # the side there; at 128 px (--image-size 128) the baseline has patches, "whole" not.
        Row(
            "patch",
            "phase 2 on patches",
            (f"data.tumor_patch={size // 2}",),
            f"phase 2 trains on {size // 2}-px patches around the kidney, 4x as many per step",
        ),
        Row(
            "whole",
            "phase 2 on whole slices",
            ("data.tumor_patch=0",),
            "phase 2 trains on whole slices (the paper; the fast preset has 64-px patches)",
        ),
    ]


# ----------------------------------------------------------------------------- data


def clip_source(hu: np.ndarray) -> np.ndarray:
    """HU as the real slices' source publishes them: clipped to [0, 255], int16."""
    return np.clip(np.rint(hu), *SOURCE_HU).astype(np.int16)


def write_negative(folder: Path, image: Volume) -> None:
    """A KiTS-layout case without kidney: ``image`` and an all-background label map."""
    write_volume(image, folder / "imaging.nii.gz")
    labels = np.zeros(np.asarray(image.array).shape, np.uint8)
    write_volume(image.with_array(labels), folder / "segmentation.nii.gz")


def lps_volume(canonical: np.ndarray, spacing_zyx: tuple[float, float, float]) -> Volume:
    """A canonical ``(z, y, x)`` array as an LPS volume (identity direction, origin 0)."""
    sz, sy, sx = spacing_zyx
    return Volume(np.ascontiguousarray(canonical.transpose(2, 1, 0)), (sx, sy, sz))


def far_slices(labelled: np.ndarray, step_mm: float, margin_mm: float) -> np.ndarray:
    """Indices of slices at least ``margin_mm`` from every slice flagged in ``labelled``."""
    if not labelled.any():
        return np.arange(len(labelled))
    distance = ndimage.distance_transform_edt(~labelled) * step_mm
    return np.flatnonzero(distance >= margin_mm)


@dataclass
class NegativeSet:
    """Held-out slices without kidney: canonical HU (clipped like the source) and voxel mL."""

    source: str
    group: str  # "real" or "phantom"
    hu: np.ndarray
    voxel_ml: float


def phantom_negatives(
    phantoms: Path, out: Path, split_ids: dict[str, list[str]]
) -> tuple[dict[str, list[str]], list[NegativeSet]]:
    """Write each phantom's runs of negative slices as cases; keep the test ones in memory.

    Returns the split of the written cases (a phantom's runs share its set) and the test
    phantoms' negative slices.
    """
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    held_out = []
    for name, ids in split_ids.items():
        for case_id in ids:
            image = read_image(phantoms / case_id / "imaging.nii.gz")
            labels = read_labels(phantoms / case_id / "segmentation.nii.gz", like=image)
            hu = clip_source(image.to_canonical())
            spacing = image.canonical_spacing
            labelled = labels.to_canonical().any(axis=(1, 2))
            keep = np.isin(np.arange(len(hu)), far_slices(labelled, spacing[0], PHANTOM_MARGIN_MM))
            if name == "test":
                if keep.any():
                    held_out.append(
                        NegativeSet(case_id, "phantom", hu[keep], image.voxel_volume_ml)
                    )
                continue
            runs, n_runs = ndimage.label(keep)
            for run in range(1, n_runs + 1):
                zs = np.flatnonzero(runs == run)
                slab_id = f"{case_id}_z{zs[0]:04d}"
                write_negative(out / slab_id, lps_volume(hu[zs], spacing))
                split[name].append(slab_id)
    return split, held_out


def real_negatives(shared: SharedData) -> list[NegativeSet]:
    """The held-out real negatives: TotalSegmentator's CT far from its kidneys, dcmqi's slices."""
    ct = read_image(shared.ts_ct)
    ts = Volume(read_image_labels(shared.ts_seg), ct.spacing, ct.origin, ct.direction)
    kidney = np.isin(ts.to_canonical(), (TS_KIDNEY_LEFT, TS_KIDNEY_RIGHT)).any(axis=(1, 2))
    zs = far_slices(kidney, ct.canonical_spacing[0], TS_MARGIN_MM)
    ts_hu = clip_source(ct.to_canonical()[zs])
    dcmqi = read_image(shared.dcmqi_ct)
    return [
        NegativeSet("totalseg_example_ct", "real", ts_hu, ct.voxel_volume_ml),
        NegativeSet(
            "dcmqi_ct3slice", "real", clip_source(dcmqi.to_canonical()), dcmqi.voxel_volume_ml
        ),
    ]


@dataclass
class StudyData:
    prep: Path
    test_cases: list[str]
    negatives: list[NegativeSet]
    summary: dict[str, Any]


def build_data(
    out: Path, shared: SharedData, phantoms: int, clock: StageClock, quick: bool
) -> StudyData:
    """Write one KiTS-layout folder and its split, preprocess it, load the held-out negatives.

    Positives, the real training negatives and the phantom negatives share one folder: a folder
    of negatives alone cannot be preprocessed (no kidney-region voxels for phase 2's
    statistics), so ``data.extra_cases`` cannot carry them.
    """
    data = out / "data"
    cases, ph_dir = data / "cases", data / "phantoms"
    cases.mkdir(parents=True)
    positives = sorted(p.name for p in shared.real_slices.glob("case_*") if p.is_dir())
    if quick:  # a few patients only: a smoke run
        keep = sorted({patient_id(c) for c in positives})[:10]
        positives = [c for c in positives if patient_id(c) in keep]
    for case_id in positives:
        (cases / case_id).symlink_to(
            (shared.real_slices / case_id).resolve(), target_is_directory=True
        )
    dicom = read_image(shared.ts_dicom)
    write_negative(
        cases / TRAIN_NEGATIVE_ID, dicom.with_array(clip_source(np.asarray(dicom.array)))
    )
    split = make_split(positives, POSITIVE_SPLIT, SPLIT_SEED)

    clock("phantoms", write_cohort, ph_dir, cases=phantoms, seed=0, workers=1, progress=False)
    name_phantoms_apart(ph_dir)
    ph_ids = sorted(p.name for p in ph_dir.glob("case_phantom*"))
    ph_split = make_split(ph_ids, PHANTOM_SPLIT, SPLIT_SEED)
    by_set = {"train": list(ph_split.train), "val": list(ph_split.val), "test": list(ph_split.test)}
    neg_split, phantom_test = clock("phantom negatives", phantom_negatives, ph_dir, cases, by_set)
    full_split = {
        "train": [*split.train, TRAIN_NEGATIVE_ID, *neg_split["train"]],
        "val": [*split.val, *neg_split["val"]],
        "test": list(split.test),
    }
    (data / "split.json").write_text(json.dumps(full_split, indent=1) + "\n")
    prep = out / "prep"
    base = resolve_config("fast", overrides=list(COMMON))
    # One process: spawning workers costs more than these small cases take.
    clock(
        "preprocess", preprocess, cases, prep, base, data / "split.json", workers=1, progress=False
    )
    negatives = [*clock("real negatives", real_negatives, shared), *phantom_test]

    def slices(ids: Sequence[str]) -> int:
        p = open_prep_dir(prep)
        return sum(int(np.load(p.case_files(c)[0], mmap_mode="r").shape[0]) for c in ids)

    n_train = slices(full_split["train"])
    n_negative = n_train - len(split.train)
    fg = resolve_config("fast").data.foreground_fraction
    summary = {
        "hu_clip_all_images": list(SOURCE_HU),
        "positives": {
            name: {"slices": len(ids), "patients": len({patient_id(c) for c in ids})}
            for name, ids in (("train", split.train), ("val", split.val), ("test", split.test))
        },
        "test_cases": list(split.test),
        "training_negatives": {
            "real_tsdicom_slices": slices([TRAIN_NEGATIVE_ID]),
            "phantom_slices": slices(neg_split["train"]),
            "phantom_slices_val": slices(neg_split["val"]),
            "phantoms_train_val_test": [len(by_set[k]) for k in ("train", "val", "test")],
            "phantom_margin_mm": PHANTOM_MARGIN_MM,
            # fast preset: foreground_fraction of the draws from kidney slices, the rest uniform.
            "expected_share_of_phase1_draws": round((1 - fg) * n_negative / n_train, 3),
        },
        "held_out_negatives": {
            n.source: {"group": n.group, "slices": int(len(n.hu)), "voxel_ml": round(n.voxel_ml, 5)}
            for n in negatives
        },
        "ts_margin_mm": TS_MARGIN_MM,
    }
    return StudyData(prep, list(split.test), negatives, summary)


# ----------------------------------------------------------------------------- scoring


def bootstrap(
    per_case: dict[str, float], seed: int = 0, draws: int = BOOTSTRAP_DRAWS
) -> list[float] | None:
    """95 % interval of the mean per-slice value, resampling patients (their slices together)."""
    if not per_case:
        return None
    patients = sorted({patient_id(c) for c in per_case})
    sums = np.array([sum(v for c, v in per_case.items() if patient_id(c) == p) for p in patients])
    counts = np.array([sum(1 for c in per_case if patient_id(c) == p) for p in patients])
    pick = np.random.default_rng(seed).integers(0, len(patients), (draws, len(patients)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    return [round(float(v), 4) for v in np.percentile(means, (2.5, 97.5))]


def summarise(per_case: dict[str, float], base: dict[str, float] | None) -> dict[str, Any]:
    values = list(per_case.values())
    out: dict[str, Any] = {
        "mean": round(float(np.mean(values)), 4) if values else None,
        "n_slices": len(values),
        "n_patients": len({patient_id(c) for c in per_case}),
        "ci95": bootstrap(per_case),
        "per_slice": {c: round(v, 4) for c, v in per_case.items()},
    }
    if base is not None and values:
        diff = {c: per_case[c] - base[c] for c in per_case}
        out["delta_vs_baseline"] = round(float(np.mean(list(diff.values()))), 4)
        out["delta_ci95"] = bootstrap(diff)
    return out


def score(run: Path, tumor_run: Path, study: StudyData) -> dict[str, Any]:
    """Per-slice Dice on the test patients' slices and false positives on held-out negatives."""
    kidney = PhaseRunner.load(rd.best_checkpoint(run, "kidney"), "kidney", precision="fp32")
    tumor = PhaseRunner.load(rd.best_checkpoint(tumor_run, "tumor"), "tumor", precision="fp32")
    prep = open_prep_dir(study.prep)
    kidney_dice: dict[str, float] = {}
    tumor_dice: dict[str, float] = {}
    tumor_free_fp: dict[str, bool] = {}
    for case in study.test_cases:
        image, label, _ = prep.case_files(case)
        hu, lab = np.load(image), np.load(label)
        zs = np.arange(len(hu))
        region = lab > 0  # labels 1-3: what phase 1 segments and phase 2 is masked with
        pred_k = kidney.segment(hu, zs)
        pred_t = tumor.segment(hu, zs, region=region)
        for z in zs:
            key = case if len(hu) == 1 else f"{case}_z{z}"
            if region[z].any():
                kidney_dice[key] = dice(pred_k[z], region[z])
            if (lab[z] == TUMOR).any():
                tumor_dice[key] = dice(pred_t[z], lab[z] == TUMOR)
            elif region[z].any():
                tumor_free_fp[key] = bool(pred_t[z].any())
    negatives: dict[str, dict[str, Any]] = {}
    for neg in study.negatives:
        pixels = kidney.segment(neg.hu, np.arange(len(neg.hu))).sum(axis=(1, 2))
        negatives[neg.source] = {
            "group": neg.group,
            "pixels": pixels.tolist(),
            "voxel_ml": neg.voxel_ml,
        }
    fp: dict[str, Any] = {}
    for group in ("real", "phantom"):
        sets = [v for v in negatives.values() if v["group"] == group]
        pixels = (
            np.concatenate([np.asarray(v["pixels"], float) for v in sets]) if sets else np.zeros(0)
        )
        ml = (
            np.concatenate([np.asarray(v["pixels"], float) * v["voxel_ml"] for v in sets])
            if sets
            else pixels
        )
        fp[group] = {
            "slices": len(pixels),
            "fraction_with_kidney": round(float((pixels > 0).mean()), 4) if len(pixels) else None,
            "mean_ml": round(float(ml.mean()), 3) if len(ml) else None,
            "mean_pixels": round(float(pixels.mean()), 1) if len(pixels) else None,
        }
    fp["per_source"] = {
        name: {
            "slices": len(v["pixels"]),
            "fraction_with_kidney": round(float(np.mean(np.asarray(v["pixels"]) > 0)), 4),
            "mean_ml": round(float(np.mean(v["pixels"]) * v["voxel_ml"]), 3),
        }
        for name, v in negatives.items()
    }
    return {
        "kidney": kidney_dice,
        "tumor": tumor_dice,
        "tumor_free_slices_with_tumor": (
            round(float(np.mean(list(tumor_free_fp.values()))), 4) if tumor_free_fp else None
        ),
        "tumor_free_slices": len(tumor_free_fp),
        "false_positives": fp,
    }


# ----------------------------------------------------------------------------- study


def budget_overrides(budget: dict[str, tuple[int, int, int]], phase: str) -> list[str]:
    epochs, samples, val_batches = budget[phase]
    return [
        f"train.epochs={epochs}",
        f"data.samples_per_epoch={samples}",
        f"train.limit_val_batches={val_batches}",
    ]


def run_rows(
    rows: list[Row],
    study: StudyData,
    out: Path,
    budget: dict[str, tuple[int, int, int]],
    size: int,
    clock: StageClock,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    base_scores: dict[str, Any] | None = None
    base_run: Path | None = None
    for row in rows:
        run = out / "runs" / row.key
        common = [*COMMON, f"data.image_size={size}", *row.overrides]
        kidney_cfg = resolve_config(
            "fast",
            overrides=[
                *common,
                *budget_overrides(budget, "kidney"),
            ],
        )
        seconds = {
            "kidney": clock(
                f"{row.name}: train kidney",
                train_phase_seconds,
                study.prep,
                run,
                "kidney",
                kidney_cfg,
            )
        }
        tumor_run = run
        if row.tumor or base_run is None:
            tumor_cfg = resolve_config(
                "fast", overrides=[*common, *budget_overrides(budget, "tumor")]
            )
            seconds["tumor"] = clock(
                f"{row.name}: train tumor",
                train_phase_seconds,
                study.prep,
                run,
                "tumor",
                tumor_cfg,
            )
        else:
            tumor_run = base_run
        scores = clock(f"{row.name}: score", score, run, tumor_run, study)
        if base_scores is None:
            base_scores, base_run = scores, run
        reuse = not row.tumor and tumor_run != run
        results.append(
            {
                "key": row.key,
                "name": row.name,
                "overrides": list(row.overrides),
                "what": row.what,
                "phase2_from": "baseline" if reuse else "own",
                "kidney": summarise(
                    scores["kidney"], None if row is rows[0] else base_scores["kidney"]
                ),
                "tumor": summarise(
                    scores["tumor"], None if row is rows[0] or reuse else base_scores["tumor"]
                ),
                "tumor_free_slices_with_tumor": scores["tumor_free_slices_with_tumor"],
                "tumor_free_slices": scores["tumor_free_slices"],
                "false_positives": scores["false_positives"],
                "train_seconds": seconds,
            }
        )
    return results


def train_phase_seconds(prep: Path, run: Path, phase: str, cfg: Config) -> float:
    return round(train_phase(prep, run, phase, cfg, progress=False).seconds, 1)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def delta(entry: dict[str, Any]) -> str:
    if "delta_vs_baseline" not in entry:
        return ""
    lo, hi = entry["delta_ci95"]
    return f" ({entry['delta_vs_baseline']:+.2f} [{lo:+.2f}, {hi:+.2f}])"


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table the README shows."""
    k0, t0 = results[0]["kidney"], results[0]["tumor"]
    fp0 = results[0]["false_positives"]
    lines = [
        f"| row | kidney Dice, {k0['n_slices']} slices (Δ vs baseline [95 % CI]) "
        f"| tumor Dice, {t0['n_slices']} slices (Δ [95 % CI]) "
        f"| share of {fp0['real']['slices']} real negative slices with kidney (mean mL) "
        f"| same, {fp0['phantom']['slices']} phantom negative slices | train s |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    for r in results:
        k, t, fp = r["kidney"], r["tumor"], r["false_positives"]
        tumor = (
            f"{fmt(t['mean'])}{delta(t)}"
            if r["phase2_from"] == "own"
            else "= baseline (phase 1 only)"
        )
        lines.append(
            f"| {r['name']} | {fmt(k['mean'])}{delta(k)} | {tumor} "
            f"| {fmt(fp['real']['fraction_with_kidney'])} ({fmt(fp['real']['mean_ml'], 1)}) "
            f"| {fmt(fp['phantom']['fraction_with_kidney'])} ({fmt(fp['phantom']['mean_ml'], 1)}) "
            f"| {sum(r['train_seconds'].values()):.0f} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "avx2": " avx2" in flags,
        "native_bf16": " avx512_bf16" in flags or " amx_bf16" in flags,
        "torch_threads": torch.get_num_threads(),
        "precision": "fp32 (train.precision auto on a CPU without native bf16; predict fp32)",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/real_slices"), help="work folder")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--phantoms", type=int, default=20, help="phantoms for the negatives")
    parser.add_argument(
        "--rows",
        default="",
        help="comma-separated row keys besides the baseline, or 'all' (default: all; --quick: "
        f"{','.join(QUICK_ROWS)}); keys: seed1, window_0_255, window_20_45, window_scaling, "
        "no_augment, bce, size, no_rare, patch, whole",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, under a minute (not a measurement)"
    )
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared/data folder")
    parser.add_argument("--image-size", type=int, default=None, help="baseline image size")
    for phase in BUDGET:
        parser.add_argument(
            f"--{phase}-budget",
            default=None,
            help=f"{phase} phase: EPOCHS,SAMPLES_PER_EPOCH,VAL_BATCHES (default {BUDGET[phase]})",
        )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    load_start = os.getloadavg()
    out: Path = args.out
    for sub in ("data", "prep", "runs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    clock = StageClock("real_slices")
    size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else IMAGE_SIZE)
    budget = dict(QUICK_BUDGET if args.quick else BUDGET)
    for phase in budget:
        given = getattr(args, f"{phase}_budget")
        if given:
            epochs, samples, val = (int(v) for v in given.split(","))
            budget[phase] = (epochs, samples, val)
    study = build_data(
        out, SharedData(args.shared), 3 if args.quick else args.phantoms, clock, args.quick
    )
    rows = make_rows(size)
    chosen = args.rows or (",".join(QUICK_ROWS) if args.quick else "all")
    if chosen != "all":
        wanted = [w.strip() for w in chosen.split(",")]
        unknown = set(wanted) - {r.key for r in rows}
        if unknown:
            raise SystemExit(f"unknown rows {sorted(unknown)}; known: {[r.key for r in rows]}")
        rows = [rows[0], *(r for r in rows[1:] if r.key in wanted)]
    results = run_rows(rows, study, out, budget, size, clock)
    report = {
        "benchmark": "real_slices",
        "quick": bool(args.quick),
        "command": "python benchmarks/real_slices.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "budget": {
            "training_slices": {p: b[0] * b[1] for p, b in budget.items()},
            "per_phase": {
                p: dict(zip(("epochs", "samples_per_epoch", "limit_val_batches"), b, strict=True))
                for p, b in budget.items()
            },
            "common_overrides": ["preset fast", *COMMON, f"data.image_size={size}"],
        },
        "data": study.summary,
        "rows": results,
        "seconds": clock.seconds,
        "total_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        # Other work shared the machine: 1-minute load averages at the start and the end.
        "load_average": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    path = args.json or (
        out / "real_slices.json" if args.quick else Path("docs/measurements/real_slices.json")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    clock.say(f"{report['total_s']:.0f} s in all; results in {path}")
    return report


if __name__ == "__main__":
    main()
