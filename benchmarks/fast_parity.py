"""Does the fast cascade pay in accuracy? Per-case Dice of both modes on a test split.

Predicts the same cases with ``inference.mode=naive`` and ``inference.mode=fast`` (any extra
``--set`` applies to both, e.g. ``inference.fast_crop=box``), evaluates both against the
ground truth with `kidneyseg.evaluation.evaluate`, and prints per-case and mean Dice of each
mode, their largest per-case difference and the Dice between the two label maps. Last line:
one JSON object.

Example:
    python benchmarks/fast_parity.py --model demo_out/run --data demo_out/phantoms \\
        --split demo_out/prep/split.json --out /tmp/parity
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

from kidneyseg.evaluation import evaluate
from kidneyseg.formats.eval_dir import PER_CASE_FILE
from kidneyseg.formats.prep_dir import read_split
from kidneyseg.inference import Predictor
from kidneyseg.io import read_labels
from kidneyseg.metrics import dice

COLUMNS = ("dice_kidney_and_mass", "dice_mass", "dice_tumor")


def per_case(eval_dir: Path) -> dict[str, dict[str, float]]:
    with (eval_dir / PER_CASE_FILE).open(newline="") as f:
        return {r["case"]: {c: float(r[c] or "nan") for c in COLUMNS} for r in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="RUN_DIR or model package")
    parser.add_argument("--data", type=Path, required=True, help="KiTS-layout cases")
    parser.add_argument("--split", type=Path, required=True, help="split.json (its test cases)")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--set", action="append", default=[], help="override for both modes")
    args = parser.parse_args()
    cases = list(read_split(args.split).test)
    results: dict[str, Any] = {}
    for mode in ("naive", "fast"):
        pred = args.out / mode / "pred"
        t0 = time.perf_counter()
        predictor = Predictor(
            args.model,
            device="cpu",
            progress=False,
            overrides=[*args.set, f"inference.mode={mode}"],
        )
        report = predictor.predict_paths(args.data, pred, cases=cases, skip_existing=False)
        if not report.ok:
            raise SystemExit(f"{mode}: prediction failed for {len(report.failed)} case(s)")
        seconds = time.perf_counter() - t0
        evaluate(pred, args.data, args.out / mode / "eval", cases=cases)
        results[mode] = {"seconds": round(seconds, 1), "cases": per_case(args.out / mode / "eval")}
    naive, fast = results["naive"]["cases"], results["fast"]["cases"]
    worst = {c: max(abs(naive[k][c] - fast[k][c]) for k in naive) for c in COLUMNS}
    means = {
        m: {
            c: round(sum(v[c] for v in results[m]["cases"].values()) / len(cases), 4)
            for c in COLUMNS
        }
        for m in results
    }
    between = {}
    for case in cases:
        a = read_labels(args.out / "naive" / "pred" / f"{case}.nii.gz").array
        b = read_labels(args.out / "fast" / "pred" / f"{case}.nii.gz").array
        between[case] = {
            "kidney": round(dice(a > 0, b > 0), 4),
            "tumor": round(dice(a == 2, b == 2), 4),
        }
    for case in cases:
        print(
            f"{case}: naive {naive[case]} fast {fast[case]} label maps agree (Dice) {between[case]}"
        )
    print(f"mean Dice naive {means['naive']}, fast {means['fast']}; largest per-case gap {worst}")
    print(
        json.dumps(
            {
                "model": str(args.model),
                "overrides": args.set,
                "cases": len(cases),
                "mean_dice": means,
                "max_case_dice_gap": {c: round(v, 4) for c, v in worst.items()},
                "min_dice_between_modes": {
                    k: min(v[k] for v in between.values()) for k in ("kidney", "tumor")
                },
                "seconds": {m: results[m]["seconds"] for m in results},
            }
        )
    )


if __name__ == "__main__":
    main()
