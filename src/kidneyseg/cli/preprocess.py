"""``kidneyseg preprocess DATA_DIR PREP_DIR``: KiTS cases -> the arrays 2D training reads."""

from __future__ import annotations

import argparse

from kidneyseg.cli import add_config_options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "preprocess",
        help="turn KiTS-layout cases into the preprocessed folder training reads",
        description=(
            "Write canonical int16 HU / uint8 label arrays, a per-slice index, the patient-level "
            "split and training-split normalisation statistics into PREP_DIR "
            "(docs/formats.md). Rerunning skips cases already complete."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of case_*/ folders (KiTS)")
    parser.add_argument("prep_dir", metavar="PREP_DIR", help="output folder")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="parallel processes (default: preprocess.workers of the config, 2)",
    )
    parser.add_argument(
        "--split-file",
        metavar="FILE",
        default=None,
        help="JSON with lists train/val/test of case ids, used instead of a random split",
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kidneyseg.config import resolve_config
    from kidneyseg.preprocessing import preprocess

    cfg = resolve_config(args.preset, args.config, args.overrides)
    summary = preprocess(
        args.data_dir, args.prep_dir, cfg, split_file=args.split_file, workers=args.workers
    )
    s = summary.split
    print(
        f"preprocessed {len(summary.processed)} case(s), kept {len(summary.skipped)} done "
        f"before, in {summary.seconds:.1f} s -> {summary.prep_dir} "
        f"(train {len(s.train)}, val {len(s.val)}, test {len(s.test)})"
    )
    return 0
