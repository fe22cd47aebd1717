"""``kidneyseg view CT LABELMAP [-o page.html]``: one HTML page to look through a segmentation.

Example:
    kidneyseg view ct.nii.gz labels.nii.gz -o case_view.html
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``view`` subcommand."""
    parser = sub.add_parser(
        "view",
        help="write a self-contained HTML slice viewer of a CT and its label map",
        description="Write one HTML file (no server, no network; opens from disk) with axial, "
        "coronal and sagittal views of CT and labels (linked crosshair, window presets, "
        "overlay opacity) and the volumes per label and side, each tumor a row that jumps to "
        "it. Large CTs are embedded at 8 bits and averaged in-plane (a 512 x 512 x 300 CT: "
        "2 x 2), so pages stay small.",
    )
    parser.add_argument("ct", help="CT image file or DICOM series folder")
    parser.add_argument("labels", help="label map (0-3) on the CT's grid")
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PAGE.html",
        help="page to write (default: <labels case>_view.html beside the label map)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler: read CT and labels, write the page, print its path."""
    from kidneyseg.viewer import view_files

    page = view_files(args.ct, args.labels, args.output)
    print(f"viewer: {page}")
    return 0
