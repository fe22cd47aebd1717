"""``kidneyseg report RUN_DIR EVAL_DIR OUT_DIR``: curves, overlays and tables as HTML/Markdown."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="loss curves, overlays and Dice tables as one HTML page and Markdown",
        description="Write OUT_DIR/report.html (self-contained), report.md, table1.csv and PNG "
        "figures: training curves from RUN_DIR/<phase>/metrics.csv, overlays of the best, "
        "median and worst cases, and the per-case / Table-1-style summary from EVAL_DIR "
        "(per_case.csv, summary.json). An OUT_DIR holding a previous report is replaced.",
    )
    p.add_argument("run_dir", help="model folder (kidney/ and tumor/ with metrics.csv)")
    p.add_argument("eval_dir", help="evaluation folder (per_case.csv, summary.json)")
    p.add_argument("out_dir", help="report folder to write")
    p.add_argument(
        "--max-cases", type=int, default=6, help="most cases to draw overlays for (6; 0 = none)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kidneyseg.reporting import make_report

    html = make_report(args.run_dir, args.eval_dir, args.out_dir, max_cases=args.max_cases)
    print(f"report: {html}")
    return 0
