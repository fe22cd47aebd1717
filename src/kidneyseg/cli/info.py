"""``kidneyseg info PATH``: geometry and values of an image, label map or DICOM series.

Example:
    $ kidneyseg info kits23/case_00061/segmentation.nii.gz
    $ kidneyseg info example_ct_dicom/ --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kidneyseg.io import volume_info

_LABEL_RULE = (
    "An image counts as a label map when its values are all whole numbers in 0-3 "
    "(integer type, or float holding only 0/1/2/3); --labels forces it (values outside 0-3 "
    "are then an error), --no-labels turns it off."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``info`` subcommand."""
    parser = sub.add_parser(
        "info",
        help="show an image's geometry, HU range and label volumes",
        description="Print shape (as stored), spacing (mm, same order), origin, direction, "
        "axcodes, axial axis and value range of an image file or DICOM series folder, and "
        "voxel counts and mL per label for label maps. A model folder (RUN_DIR) prints its "
        "model card: model id, licence, what each phase was trained on. " + _LABEL_RULE,
    )
    parser.add_argument(
        "path",
        type=Path,
        help="image file (.nii.gz, .nrrd, .mha, ...), DICOM series folder or model folder",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--labels",
        dest="labels",
        action="store_const",
        const=True,
        default=None,
        help="treat the image as a label map (0 background .. 3 cyst)",
    )
    kind.add_argument(
        "--no-labels",
        dest="labels",
        action="store_const",
        const=False,
        help="never treat the image as a label map",
    )
    parser.add_argument(
        "--series",
        metavar="UID",
        default=None,
        help="DICOM SeriesInstanceUID, for a folder holding several series",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler: read the file and print its summary (a model folder: its model card)."""
    from kidneyseg.model_card import format_card, is_run_dir, model_card

    if is_run_dir(args.path):
        card = model_card(args.path)
        print(json.dumps(card, indent=2) if args.json else format_card(card))
        return 0
    info = volume_info(args.path, labels=args.labels, series=args.series)
    print(json.dumps(info) if args.json else format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of a `kidneyseg.io.volume_info` dict."""

    def nums(values: list[float]) -> str:
        return " x ".join(f"{v:g}" for v in values)

    lines = [
        f"path         {info['path']}",
        f"shape        {nums(info['shape'])}  (as stored; {info['dtype']})",
        f"spacing mm   {nums(info['spacing_mm'])}",
        f"origin mm    {', '.join(f'{v:g}' for v in info['origin'])}  (LPS)",
        "direction    "
        + "; ".join(" ".join(f"{v:g}" for v in row) for row in info["direction"])
        + "  (rows; column c = LPS direction of axis c)",
        f"axcodes      {','.join(info['axcodes'])}",
        f"axial axis   {info['axial_axis']}",
        f"canonical    {nums(info['canonical_shape'])} (z, y, x) at "
        f"{nums(info['canonical_spacing_mm'])} mm",
        f"values       {info['hu_min']} .. {info['hu_max']}"
        + ("" if info["is_label_map"] else " HU"),
    ]
    if "dicom" in info:
        lines.append("dicom        " + ", ".join(f"{k}={v}" for k, v in info["dicom"].items()))
    if info.get("labels"):
        lines.append("labels       id  name     voxels        mL")
        for key, row in info["labels"].items():
            lines.append(
                f"             {key:>2}  {row['name']:<7} {row['voxels']:>8} {row['ml']:>9.3f}"
            )
    return "\n".join(lines)
