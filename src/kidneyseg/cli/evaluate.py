"""``kidneyseg evaluate PRED_DIR GT_DIR OUT_DIR``: KiTS metrics of predictions vs references."""

from __future__ import annotations

import argparse
import sys

from kidneyseg.cli import add_split_options, split_cases


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="Dice and surface Dice (official KiTS21/KiTS23 definition) of predicted label maps",
        description="Score PRED_DIR/<case>.nii.gz against GT_DIR/<case>/aggregated_MAJ_seg.nii.gz, "
        "GT_DIR/<case>/segmentation.nii.gz or GT_DIR/<case>.nii.gz: KiTS Dice and surface Dice "
        "for kidney+masses, masses and tumor, plus the paper's per-case and per-slice Dice. "
        "The cases scored are every reference in GT_DIR, or one subset of a split file "
        "(--split/--subset); a case without a prediction is refused unless --allow-missing. "
        "Writes OUT_DIR/per_case.csv, summary.json and summary.md.",
    )
    p.add_argument("pred_dir", help="folder of predicted label maps <case>.nii.gz")
    p.add_argument("gt_dir", help="folder of reference label maps (KiTS layout or <case>.nii.gz)")
    p.add_argument("out_dir", help="output folder for per_case.csv, summary.json, summary.md")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (2)")
    add_split_options(p, "score")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="score a case without a prediction as an empty (all-background) prediction, "
        "Dice 0 where the reference has the structure, as KiTS does, instead of refusing",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kidneyseg.evaluation import evaluate, format_table
    from kidneyseg.formats.eval_dir import PER_CASE_FILE, SUMMARY_FILE, SUMMARY_MD_FILE

    summary = evaluate(
        args.pred_dir,
        args.gt_dir,
        args.out_dir,
        workers=args.workers,
        cases=split_cases(args),
        allow_missing=args.allow_missing,
    )
    print(format_table(summary))
    out = Path(args.out_dir).resolve()
    print(f"wrote {out / PER_CASE_FILE}, {out / SUMMARY_FILE} and {out / SUMMARY_MD_FILE}")
    missing = summary["missing"]
    if missing:
        print(
            f"warning: {len(missing)} of {summary['n_cases']} case(s) had no prediction and were "
            f"scored as empty predictions (--allow-missing): {', '.join(missing)}",
            file=sys.stderr,
        )
    return 0
