"""``kidneyseg export RUN_DIR MODEL.zip``: pack a trained model into one file;
``kidneyseg export RUN_DIR --format onnx``: export its networks for ONNX Runtime.

Example:
    kidneyseg export runs/paper paper.zip
    kidneyseg predict ct.nii.gz labels.nii.gz --model paper.zip
    kidneyseg export runs/paper --format onnx      # runs/paper/{kidney,tumor}/best.onnx
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="pack a model folder into one .zip file, or export its networks to ONNX",
        description=(
            "--format zip (default): write MODEL.zip: both phases' best checkpoints and "
            "config.json, the model card, and a manifest with the model id and each file's "
            "SHA-256. predict --model accepts the file; kidneyseg install-model puts it in the "
            "user model store. --format onnx: export every phase's best checkpoint to ONNX "
            "(verified against torch: probabilities within 1e-3) as best.onnx beside it, or, "
            "for a package, an installed model or a read-only folder, in the user cache "
            "($KIDNEYSEG_HOME/onnx, default ~/.cache/kidneyseg/onnx); predict then runs them "
            "with ONNX Runtime on the CPU (inference.backend auto or onnx)."
        ),
    )
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="model folder (kidney/ and tumor/); --format onnx also takes a package or model id",
    )
    parser.add_argument(
        "package", metavar="MODEL.zip", nargs="?", help="the model package to write (zip)"
    )
    parser.add_argument(
        "--format",
        default="zip",
        choices=("zip", "onnx"),
        help="zip (default): one model package file; onnx: ONNX files of every phase",
    )
    parser.add_argument(
        "--force", action="store_true", help="onnx: export again even when up to date"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kidneyseg.errors import KidneysegError

    if args.format == "onnx":
        from kidneyseg.onnx_backend import export_run

        if args.package is not None:
            raise KidneysegError(
                "export --format onnx writes beside the checkpoints (or in the user cache); "
                f"give only RUN_DIR, not {args.package}"
            )
        for phase, path in export_run(args.run_dir, force=args.force).items():
            print(f"{phase}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    if args.package is None:
        raise KidneysegError("export needs MODEL.zip (or --format onnx)", path=args.run_dir)
    from kidneyseg.model_package import export_model

    manifest = export_model(args.run_dir, args.package)
    size = Path(args.package).stat().st_size / 1e6
    print(f"model {manifest['model_id']} -> {args.package} ({size:.1f} MB)")
    return 0
