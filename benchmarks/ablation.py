"""Ablation: one row per switch added to the paper's cascade, at a fixed training budget.

Every row trains (or reuses) both phases on the same phantom cohort and split, with the same
epochs x samples per phase, predicts the test split and evaluates it:

* per-case Dice of the three KiTS classes (kidney + masses, masses, tumor) and their surface
  Dice (`kidneyseg.evaluation`, tolerances of the KiTS metric);
* seconds to train each phase and to predict one case.

A row changes only what it names on top of ``baseline`` (the ``fast`` preset's paper cascade at
the budget). Rows that differ from an earlier row only in ``inference.*`` / ``postprocess.*``
reuse its trained models, and a row whose phase-1 settings equal an earlier row's reuses that
phase-1 model (its train time is then reported as that row's), so the table costs only the
trainings it needs. The multi-planar row trains three models per phase and gives each a third
of the samples, so its budget equals the others'.

Phantoms are a learning signal, not an accuracy claim: a switch that helps here may do nothing
on real CT (see README "Accuracy").

Example:
    python benchmarks/ablation.py --out out/ablation                 # ~40 min, 2 AVX2 cores
    python benchmarks/ablation.py --out /tmp/abl --quick             # smoke run, minutes
    python benchmarks/ablation.py --out out/ablation --rows baseline,tta

Prints a Markdown table and, as its last line, one JSON object (also written to
``OUT/ablation.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from kidneyseg.config import Config, resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.evaluation import evaluate
from kidneyseg.formats import run_dir as rd
from kidneyseg.formats.prep_dir import read_split
from kidneyseg.inference import Predictor
from kidneyseg.preprocessing import preprocess
from kidneyseg.training import train_phase

#: Row name -> (what it adds, ``--set`` overrides on top of the baseline).
ROWS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("paper cascade (fast preset sizes)", []),
    "predicted_regions": (
        "phase 2 trained on phase-1 predicted regions",
        ["data.tumor_region=predicted"],
    ),
    "best_dice": ("checkpoint with the best validation Dice", ["train.checkpoint_metric=dice"]),
    "components": ("keep the 2 largest kidney components", ["postprocess.kidney_components=2"]),
    "tta": ("flip test-time augmentation", ["inference.tta=true"]),
    "context": ("2.5D: 3 slices 3 mm apart", ["data.context_slices=3"]),
    "planes": ("axial + coronal + sagittal, mean fusion", ["data.planes=axial,coronal,sagittal"]),
    "kits": ("phase 2 predicts tumor and cyst", ["data.tumor_classes=tumor,cyst"]),
    "rare": ("phase 1 draws half its foreground from mass slices", ["data.rare_fraction=0.5"]),
    "patch": (
        "phase 2 trains on 64-px patches around its region, 4x as many",
        ["data.tumor_patch=64"],
    ),
    "patch32": ("phase 2 trains on 32-px patches, 16x as many", ["data.tumor_patch=32"]),
    "kidney_patch": ("phase 1 trains on 64-px patches, 4x as many", ["data.kidney_patch=64"]),
}

#: Settings the ``fast`` preset gained after the table's first rows were trained, pinned back to
#: the paper's value in every row (and in the reference the training keys compare with), so the
#: baseline stays the paper's cascade and earlier models keep their keys.
PINNED = [
    "data.rare_fraction=0.0",
    "data.tumor_patch=0",
    "data.kidney_patch=0",
    "inference.tta=false",
    "postprocess.kidney_components=0",
]

#: Keys that only phase 2's training reads: rows differing only in these share phase 1.
TUMOR_ONLY = {
    "tumor_region",
    "tumor_window",
    "tumor_foreground_fraction",
    "region_margin_mm",
    "tumor_patch",
}
TUMOR_ONLY_ANY = {"tumor_classes"}
#: Keys that only phase 1 reads while phase 2 predicts tumor alone (no cyst output).
KIDNEY_ONLY_UNLESS_CYST = {"rare_fraction"}
#: Keys that only phase 1 reads.
KIDNEY_ONLY = {"kidney_patch"}


def _say(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def training_keys(cfg: Config) -> tuple[str, str]:
    """Digests of what each phase's training reads: ``(kidney, tumor)``.

    Only the settings that differ from the ``fast`` preset count, so a package version that
    adds a key (at its default) still finds the models an earlier version trained."""
    default = dataclasses.asdict(resolve_config("fast", overrides=PINNED))
    d = dataclasses.asdict(cfg)
    trained = {
        f"{section}.{key}": value
        for section in ("preprocess", "data", "model", "train")
        for key, value in d[section].items()
        if default[section].get(key) != value
    }
    kidney = {
        k: v for k, v in trained.items() if k.split(".")[1] not in TUMOR_ONLY | TUMOR_ONLY_ANY
    }
    tumor = {k: v for k, v in trained.items() if k.split(".")[1] not in KIDNEY_ONLY}
    if "cyst" not in cfg.data.tumor_classes:
        tumor = {k: v for k, v in tumor.items() if k.split(".")[1] not in KIDNEY_ONLY_UNLESS_CYST}
    return _digest(kidney), _digest(tumor)


def row_config(base: list[str], extra: list[str], planes_share: bool) -> Config:
    cfg = resolve_config("fast", overrides=base + extra)
    n_planes = len([p for p in getattr(cfg.data, "planes", "axial").split(",") if p.strip()])
    if planes_share and n_planes > 1:  # same total budget: each plane model gets a share
        per_plane = max(cfg.train.batch_size, cfg.data.samples_per_epoch // n_planes)
        cfg = resolve_config(
            "fast", overrides=[*base, *extra, f"data.samples_per_epoch={per_plane}"]
        )
    return cfg


def same_best_epoch(phase_dir: Path) -> bool:
    """Whether a run's lowest val_loss and highest val_dice fall in the same epoch."""
    metrics = rd.read_metrics(phase_dir / rd.METRICS_FILE)
    rows = [r for r in metrics if r.get("val_loss") and r.get("val_dice")]
    if not rows:
        return False
    by_loss = min(rows, key=lambda r: float(r["val_loss"]))["epoch"]
    by_dice = max(rows, key=lambda r: float(r["val_dice"]))["epoch"]
    return by_loss == by_dice


def _mean(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key, {}).get("mean")
    return None if value is None else round(float(value), 4)


def run_row(
    name: str,
    cfg: Config,
    overrides: list[str],
    prep: Path,
    data: Path,
    out: Path,
    trained: dict[str, tuple[Path, float]],
) -> dict[str, Any]:
    """Train what is not trained yet, predict the test split, evaluate."""
    run = out / "runs" / name
    keys = dict(zip(("kidney", "tumor"), training_keys(cfg), strict=True))
    seconds: dict[str, float] = {}
    metric = cfg.train.checkpoint_metric
    other = "loss" if metric == "dice" else "dice"
    twin_cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, checkpoint_metric=other)
    )
    twins = dict(zip(("kidney", "tumor"), training_keys(twin_cfg), strict=True))
    for phase in ("kidney", "tumor"):
        key = f"{phase}:{keys[phase]}"
        twin = trained.get(f"{phase}:{twins[phase]}")
        if key not in trained and twin is not None and same_best_epoch(twin[0]):
            # Same training, other checkpoint rule, and both rules pick the same epoch.
            trained[key] = twin
            _say(f"{name}: {phase}: val loss and val Dice pick the same epoch in {twin[0]}")
        if key in trained:
            source, secs = trained[key]
            if source != run / phase:
                if (run / phase).exists():
                    shutil.rmtree(run / phase)
                shutil.copytree(source, run / phase)
            seconds[f"train_{phase}_s"] = secs
            _say(f"{name}: {phase} model reused from {source}")
            continue
        if (run / phase).exists():  # left by an interrupted call: not in the registry
            shutil.rmtree(run / phase)
        t0 = time.perf_counter()
        train_phase(prep, run, phase, cfg, progress=False)
        seconds[f"train_{phase}_s"] = round(time.perf_counter() - t0, 1)
        trained[key] = (run / phase, seconds[f"train_{phase}_s"])
        _say(f"{name}: trained {phase} in {seconds[f'train_{phase}_s']} s")
    test = list(read_split(prep / "split.json").test)
    pred = out / "pred" / name
    if pred.exists():
        shutil.rmtree(pred)
    t0 = time.perf_counter()
    # Reused models carry an earlier row's prediction settings: apply this row's.
    at_predict = [o for o in overrides if o.startswith(("inference.", "postprocess."))]
    predictor = Predictor(run, device="cpu", progress=False, overrides=at_predict)
    report = predictor.predict_paths(data, pred, cases=test)
    predict_s = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"{name}: prediction failed for {len(report.failed)} case(s)")
    summary = evaluate(pred, data, out / "eval" / name, cases=test)
    m = summary["metrics"]
    return {
        "row": name,
        "adds": ROWS[name][0] if name in ROWS else name,
        "dice_kidney_and_mass": _mean(m, "dice_kidney_and_mass"),
        "dice_mass": _mean(m, "dice_mass"),
        "dice_tumor": _mean(m, "dice_tumor"),
        "sd_kidney_and_mass": _mean(m, "sd_kidney_and_mass"),
        "sd_mass": _mean(m, "sd_mass"),
        "sd_tumor": _mean(m, "sd_tumor"),
        **seconds,
        "predict_s_per_case": round(predict_s / max(1, len(test)), 2),
        "test_cases": len(test),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| row | adds | Dice kidney+masses | Dice masses | Dice tumor | SD kidney+masses "
        "| SD masses | SD tumor | train s (kidney / tumor) | predict s/case |"
    )
    lines = [head, "|" + "---|" * 10]

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    for r in rows:
        lines.append(
            f"| {r['row']} | {r['adds']} | {f(r['dice_kidney_and_mass'])} | {f(r['dice_mass'])} "
            f"| {f(r['dice_tumor'])} | {f(r['sd_kidney_and_mass'])} | {f(r['sd_mass'])} "
            f"| {f(r['sd_tumor'])} | {r['train_kidney_s']:.0f} / {r['train_tumor_s']:.0f} "
            f"| {r['predict_s_per_case']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma list of rows to run")
    parser.add_argument(
        "--combine",
        default="",
        help="extra row 'combined': the named rows' switches together (comma list)",
    )
    parser.add_argument("--combine-name", default="combined", help="the --combine row's name")
    parser.add_argument("--cases", type=int, default=60, help="phantom cases (80/10/10 split)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per phase")
    parser.add_argument("--samples", type=int, default=512, help="slices per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="extra overrides, all rows")
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 cases, tiny budget")
    parser.add_argument("--fresh", action="store_true", help="rerun rows already in OUT")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.epochs, args.samples = 12, 1, 32
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    base = [
        *PINNED,
        f"train.epochs={args.epochs}",
        f"data.samples_per_epoch={args.samples}",
        f"train.seed={args.seed}",
        *args.set,
    ]
    if args.quick:
        base += ["train.batch_size=8", "train.limit_val_batches=1", "data.image_size=64"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data, prep = out / "phantoms", out / "prep"
    t0 = time.perf_counter()
    write_cohort(data, cases=args.cases, seed=args.seed, workers=2)
    preprocess(data, prep, resolve_config("fast", overrides=base), progress=False)
    _say(f"cohort + preprocess: {time.perf_counter() - t0:.0f} s")

    plan = [(n, ROWS[n][1]) for n in names]
    if args.combine:
        combined = [n.strip() for n in args.combine.split(",") if n.strip()]
        name = args.combine_name
        ROWS[name] = (" + ".join(combined), [s for n in combined for s in ROWS[n][1]])
        plan.append((name, ROWS[name][1]))
    # Rows and models of an earlier call with the same folder are kept (add rows later).
    registry = out / "trained.json"
    trained: dict[str, tuple[Path, float]] = {}
    if registry.is_file():
        trained = {k: (Path(p), s) for k, (p, s) in json.loads(registry.read_text()).items()}
    done = {}
    if (out / "ablation.json").is_file() and not args.fresh:
        done = {r["row"]: r for r in json.loads((out / "ablation.json").read_text())}
    results = [done[n] for n in done if n not in dict(plan)]
    for name, extra in plan:
        if name in done:
            results.append(done[name])
            continue
        cfg = row_config(base, extra, planes_share=True)
        _say(f"row {name}: {' '.join(extra) or '(baseline)'}")
        results.append(run_row(name, cfg, base + extra, prep, data, out, trained))
        (out / "ablation.json").write_text(json.dumps(results, indent=1))
        registry.write_text(json.dumps({k: [str(p), s] for k, (p, s) in trained.items()}))
    print(table(results))
    print(
        json.dumps(
            {
                "cases": args.cases,
                "epochs": args.epochs,
                "samples_per_epoch": args.samples,
                "rows": results,
            }
        )
    )


if __name__ == "__main__":
    main()
