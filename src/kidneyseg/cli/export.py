"""``kidneyseg export RUN_DIR MODEL.zip``: pack a trained model into one file.

Example:
    kidneyseg export runs/paper paper.zip
    kidneyseg predict ct.nii.gz labels.nii.gz --model paper.zip
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="pack a model folder into one .zip file (both phases, model card, manifest)",
        description=(
            "Write MODEL.zip: both phases' best checkpoints and config.json, the model card, "
            "and a manifest with the model id and each file's SHA-256. predict --model "
            "accepts the file; kidneyseg install-model puts it in the user model store."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="model folder (kidney/ and tumor/)")
    parser.add_argument("package", metavar="MODEL.zip", help="the model package to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kidneyseg.model_package import export_model

    manifest = export_model(args.run_dir, args.package)
    size = Path(args.package).stat().st_size / 1e6
    print(f"model {manifest['model_id']} -> {args.package} ({size:.1f} MB)")
    return 0
