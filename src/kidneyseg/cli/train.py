"""``kidneyseg train PREP_DIR RUN_DIR --phase kidney|tumor``: one phase of the cascade."""

from __future__ import annotations

import argparse

from kidneyseg.cli import add_config_options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="train one phase (kidney or tumor) on a preprocessed folder",
        description="Train one phase of the cascade with Lightning and write RUN_DIR/<phase>/ "
        "(best.safetensors, last.safetensors, last.ckpt, metrics.csv, curves.png, config.json); "
        "with --set data.planes=axial,coronal,sagittal also RUN_DIR/<phase>_coronal/ and "
        "RUN_DIR/<phase>_sagittal/ (one model per plane; predict averages them).",
    )
    p.add_argument(
        "prep_dir", metavar="PREP_DIR", help="preprocessed folder (kidneyseg preprocess)"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="model folder; writes RUN_DIR/<phase>/")
    p.add_argument(
        "--phase",
        required=True,
        choices=("kidney", "tumor"),
        help="kidney: kidney region incl. masses; tumor: tumor on CT x kidney region",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR/<phase>/last.ckpt (or extend with more epochs)",
    )
    p.add_argument(
        "--kidney-model",
        metavar="FILE",
        default=None,
        help="phase-1 weights for --set data.tumor_region=predicted "
        "(default RUN_DIR/kidney/best.safetensors)",
    )
    p.add_argument("--accelerator", default=None, help="auto, cpu or gpu (train.accelerator)")
    p.add_argument(
        "--devices",
        default=None,
        help="device count or ids, e.g. 4 or 0,1 (train.devices); >1 uses DDP",
    )
    p.add_argument("--num-nodes", type=int, default=None, help="nodes for DDP (train.num_nodes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kidneyseg.config import resolve_config
    from kidneyseg.training import train_phase

    # The dedicated flags win over --set, as the more specific spelling.
    overrides = list(args.overrides)
    for flag, key in (
        ("accelerator", "accelerator"),
        ("devices", "devices"),
        ("num_nodes", "num_nodes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = resolve_config(args.preset, args.config, overrides)
    result = train_phase(
        args.prep_dir,
        args.run_dir,
        args.phase,
        cfg,
        resume=args.resume,
        kidney_model=args.kidney_model,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0
