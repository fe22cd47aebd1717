"""``kidneyseg demo [OUT_DIR]``: the whole pipeline on the phantom cohort."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from kidneyseg.cli import add_config_options

    p = sub.add_parser(
        "demo",
        help="phantoms -> preprocess -> train both phases -> predict -> evaluate -> report",
        description="Run the whole pipeline on the synthetic phantom cohort (fast preset: "
        "minutes on 2 CPU cores) and print the Dice table. Stages already done are reused.",
    )
    p.add_argument("out_dir", nargs="?", default="demo_out", help="output folder (demo_out)")
    p.add_argument(
        "--cases", type=int, default=60, help="phantom cases (60: 48 train, 6 val, 6 test)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the phantom cohort (0)")
    add_config_options(p)
    p.set_defaults(func=run, preset="fast")


def run(args: argparse.Namespace) -> int:
    from kidneyseg.config import resolve_config
    from kidneyseg.demo import run_demo
    from kidneyseg.errors import KidneysegError
    from kidneyseg.evaluation import format_table

    if args.cases < 5:
        # 80/10/10 rounds to an empty test split below 5 cases.
        raise KidneysegError(f"--cases must be >= 5 for a train/val/test split (got {args.cases})")
    cfg = resolve_config(args.preset, args.config, args.overrides)
    result = run_demo(args.out_dir, cases=args.cases, seed=args.seed, cfg=cfg)
    print(format_table(result.summary))
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"\nstage times: {timing} (total {sum(result.seconds.values()):.0f} s)")
    print(f"report: {result.report}")
    return 0
