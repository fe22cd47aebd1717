"""``kidneyseg phantoms OUT``: write the synthetic phantom cohort in the KiTS layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantoms",
        help="write synthetic abdominal CT phantoms with kidney/tumor/cyst labels",
        description="Write OUT/case_XXXXX/imaging.nii.gz + segmentation.nii.gz: synthetic "
        "abdominal CTs (int16 HU, random file orientations, four contrast phases) with "
        "labels 1 kidney, 2 tumor, 3 cyst; everything else (liver, spleen, bowel, muscles, "
        "bones, vessels) is background. The same seed gives identical files; finished cases "
        "are kept on a rerun.",
    )
    p.add_argument("out_dir", metavar="OUT", help="output folder")
    p.add_argument("--cases", type=int, default=30, help="number of cases (30)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("SLICES", "ROWS", "COLS"),
        default=None,
        help="voxels per case, axial slices first (default 48 128 128; KiTS-like: 300 512 512)",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel processes (1)")
    p.add_argument(
        "--phases",
        nargs="+",
        metavar="PHASE",
        default=None,
        help="contrast phases to draw among: noncontrast arterial venous delayed (default: all "
        "four, mostly arterial like KiTS)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kidneyseg.data.phantoms import write_cohort

    cases = write_cohort(
        args.out_dir,
        cases=args.cases,
        seed=args.seed,
        shape=args.shape,
        workers=args.workers,
        phases=args.phases,
    )
    print(f"wrote {len(cases)} phantom cases to {args.out_dir}")
    return 0
