"""``kidneyseg predict INPUT OUTPUT --model RUN_DIR``: run the cascade on CT files or folders.

Example:
    kidneyseg predict ct.nii.gz labels.nii.gz --model runs/paper
    kidneyseg predict kits21/dataset preds/ --model runs/paper --shard 1/4 --stats stats.json
    kidneyseg predict patients/ preds/ --model runs/paper      # one DICOM folder per patient
"""

from __future__ import annotations

import argparse
import os
import sys

from kidneyseg.cli import add_config_options, add_split_options, split_cases
from kidneyseg.errors import KidneysegError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="segment kidney and tumor in CT (a file, a DICOM folder or a folder of cases)",
        description=(
            "Run the two-phase cascade. INPUT: a NIfTI/NRRD/MHA file, a DICOM series folder, a "
            "KiTS folder (case_*/imaging.nii.gz), or a folder of image files and/or DICOM "
            "folders (e.g. one per patient, nested or not): one case per image file and per "
            "CT series, named after the file or folder (plus _s<SeriesNumber> when a folder "
            "holds several series). OUTPUT: a label file (.nii.gz/.nii/.nrrd/.mha) for one "
            "CT, otherwise a folder that receives <case_id> in the input's format per case "
            "(a.nrrd -> a.nrrd; DICOM -> a.nii.gz + a.seg.dcm; see --output-format); cases "
            "already there are skipped (one CT's existing output file is refused without "
            "--overwrite). Labels: 0 background, 1 kidney, 2 tumor (3 cyst from a model "
            "trained with --preset kits), in the input's exact geometry. Exit status 1 when "
            "some cases of a folder failed (each named on stderr; the others are written), 2 "
            "on an error."
        ),
    )
    parser.add_argument("input", help="CT file, DICOM series folder, or folder of cases")
    parser.add_argument("output", help="output label file (one CT) or folder")
    parser.add_argument(
        "--model",
        required=True,
        metavar="RUN_DIR|MODEL.zip|ID",
        help="model folder holding kidney/best.safetensors and tumor/best.safetensors, a model "
        "package (kidneyseg export) or the id of an installed model (kidneyseg install-model)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="auto (default: CUDA if present), cpu, cuda (alias gpu), cuda:N or mps",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per forward pass (default: the checkpoint's inference.batch_size)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="predict only shard K of N: case i (sorted) goes to shard i %% N + 1",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that already exist (folder mode skips them, one CT refuses)",
    )
    parser.add_argument(
        "--series",
        default=None,
        metavar="UID|N",
        help="one series of a DICOM folder that holds several: its UID or its listed number",
    )
    parser.add_argument(
        "--stats",
        default=None,
        metavar="FILE.json",
        help="also write measurements per case: volumes per kidney side, each tumor's "
        "volume, diameters, centroid and HU (see kidneyseg stats), and the model's id",
    )
    parser.add_argument(
        "--output-format",
        default="auto",
        choices=("auto", "nifti", "nrrd", "mha", "dicom-seg", "both"),
        help="auto (default): the label file in the input's format (.nhdr/.mhd give "
        ".nrrd/.mha), and for DICOM input a .nii.gz plus a DICOM SEG <name>.seg.dcm beside it; "
        "nifti/nrrd/mha: the label file in that format (.nii.gz/.nrrd/.mha), no SEG; "
        "dicom-seg: the SEG only; both: .nii.gz and SEG (DICOM input only). One CT to a "
        "named file: the name's suffix decides the label format",
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <name>_kidney_prob.nii.gz and <name>_tumor_prob.nii.gz (and "
        "<name>_cyst_prob.nii.gz from a model that predicts cysts) beside each output: uint8, "
        "probability x 255, in the input's geometry",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation: average each slice's probabilities with those of "
        "its left-right mirror (about 2x slower; same as --set inference.tta=true)",
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=("auto", "torch", "onnx"),
        help="torch, onnx (ONNX Runtime, CPU fp32, exports on first use) or auto (default: "
        "ONNX on the CPU once exported with kidneyseg export --format onnx); inference.backend",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the networks (torch and ONNX Runtime; default: every core)",
    )
    add_split_options(parser, "predict")
    parser.add_argument(
        "--preview",
        action="store_true",
        help="also write <case>_preview.png beside each output: slices, overlays, volumes",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_options(parser, presets=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kidneyseg.inference import predict

    cases = split_cases(args)
    if args.threads is not None:
        if args.threads < 1:
            raise KidneysegError(f"--threads must be >= 1 (got {args.threads})")
        import torch

        # OMP_NUM_THREADS is what use_all_cores respects; ONNX Runtime copies torch's count.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    # --tta is a shorthand for the config field, so the Python API's overrides do the same.
    overrides = [*args.overrides, "inference.tta=true"] if args.tta else args.overrides
    overrides = [*overrides, f"inference.backend={args.backend}"] if args.backend else overrides
    report = predict(
        args.input,
        args.output,
        args.model,
        device=args.device,
        batch_size=args.batch_size,
        shard=args.shard,
        skip_existing=not args.overwrite,
        stats_path=args.stats,
        progress=not args.no_progress,
        config_file=args.config,
        overrides=overrides,
        cases=cases,
        series=args.series,
        output_format=args.output_format,
        save_probabilities=args.save_probabilities,
    )
    print(f"{report.summary()} -> {args.output}")
    for case_id, message in report.failed:
        print(f"failed: {case_id}: {message}", file=sys.stderr)
    previews_ok = True
    if args.preview:
        from kidneyseg.preview import write_previews

        previews_ok = not write_previews(
            args.input,
            args.output,
            report.written,
            args.shard,
            cases,
            args.series,
            args.output_format,
        )
    return 0 if report.ok and previews_ok else 1
