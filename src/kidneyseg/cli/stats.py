"""``kidneyseg stats LABELMAP [--image CT] [--json|--csv]``: measurements of a label map.

Example:
    $ kidneyseg stats kits23/case_00160/segmentation.nii.gz --json
    $ kidneyseg stats pred/case_00001.nii.gz --image case_00001/imaging.nii.gz --csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``stats`` subcommand."""
    parser = sub.add_parser(
        "stats",
        help="kidney volumes per side and each tumor's size, place and HU, from a label map",
        description="Measure a label map (ours or a ground truth; no model run) in its own "
        "geometry: per kidney side (patient left/right from the direction cosines) the kidney "
        "volume without and with its masses, tumor and cyst volume and the number of tumors; "
        "per tumor (3D connected component) its volume, maximum 3D and axial diameter, "
        "centroid (LPS mm), side and, with --image, mean and std HU. Sides: with --image, "
        "each kidney's centroid against the body midline; without, halfway between the two "
        "kidneys, or the image centre when there is one.",
    )
    parser.add_argument("labelmap", help="label map (0 background, 1 kidney, 2 tumor, 3 cyst)")
    parser.add_argument(
        "--image", default=None, metavar="CT", help="the CT on the same grid (HU, body midline)"
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    fmt.add_argument("--csv", action="store_true", help="print CSV: kidney sides, then tumors")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler: measure and print."""
    stats = file_statistics(args.labelmap, args.image)
    if args.json:
        print(json.dumps(stats, indent=2))
    elif args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows(stats))
        print(out.getvalue(), end="")
    else:
        print(format_stats(stats))
    return 0


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable text of a `kidneyseg.stats.file_statistics` dict."""
    lines = [
        f"label map  {stats['labelmap']}" + (f"  (CT {stats['image']})" if stats["image"] else ""),
        f"midline    {stats['sides']['rule']} (LPS x = {stats['sides']['midline_x_mm']:.1f} mm); "
        "each kidney counts on its centroid's side",
        "kidney     volume mL  with masses mL  tumor mL  cyst mL  tumors",
    ]
    for side in ("right", "left"):
        k = stats["kidneys"][side]
        lines.append(
            f"  {side:<7} {k['volume_ml']:>10.2f} {k['volume_with_masses_ml']:>15.2f} "
            f"{k['tumor_volume_ml']:>9.2f} {k['cyst_volume_ml']:>8.2f} {k['tumor_count']:>7}"
        )
    if not stats["tumors"]:
        lines.append("tumors     none")
    for t in stats["tumors"]:
        hu = "" if t["hu_mean"] is None else f", {t['hu_mean']:.0f} +/- {t['hu_std']:.0f} HU"
        where = ", ".join(f"{v:.1f}" for v in t["centroid_mm"])
        lines.append(
            f"tumor {t['number']:<4} {t['side']}: {t['volume_ml']:.2f} mL, max diameter "
            f"{t['max_diameter_mm']:.1f} mm (axial {t['axial_diameter_mm']:.1f} mm), "
            f"centroid ({where}) {stats['coordinates']}{hu}"
        )
    return "\n".join(lines)


def file_statistics(
    labels_path: str | Path, image_path: str | Path | None = None
) -> dict[str, Any]:
    """``kidneyseg stats LABELMAP [--image CT]``: read the files, measure, name the sources.

    Raises:
        KidneysegError: unreadable files, values outside 0-3, a label map off the CT's grid.

    Example:
        >>> stats = file_statistics("case_00160/segmentation.nii.gz")  # doctest: +SKIP
        >>> stats["total"]["tumor_count"], stats["tumors"][0]["side"]  # doctest: +SKIP
        (1, 'right')
    """
    from kidneyseg.io import read_image, read_labels
    from kidneyseg.stats import label_statistics
    from kidneyseg.utils import package_version

    ct = None if image_path is None else read_image(image_path)
    labels = read_labels(labels_path, like=ct)
    return {
        "labelmap": str(labels_path),
        "image": None if image_path is None else str(image_path),
        "kidneyseg_version": package_version(),
        **label_statistics(labels, ct),
    }


#: Columns of ``kidneyseg stats --csv``: one row per kidney side, then one per tumor.
CSV_COLUMNS = (
    "row", "side", "number", "volume_ml", "volume_with_masses_ml", "tumor_volume_ml",
    "cyst_volume_ml", "tumor_count", "max_diameter_mm", "axial_diameter_mm",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "hu_mean", "hu_std",
)  # fmt: skip


def csv_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``kidneyseg stats --csv`` from a `label_statistics` dict (blank = n/a)."""
    rows: list[dict[str, Any]] = []
    for side in ("right", "left", "total"):
        entry = stats["total"] if side == "total" else stats["kidneys"][side]
        rows.append({"row": "kidney", "side": side, **entry})
    for t in stats["tumors"]:
        x, y, z = t["centroid_mm"]
        rows.append(
            {"row": "tumor", **{k: v for k, v in t.items() if k in CSV_COLUMNS},
             "centroid_x_mm": x, "centroid_y_mm": y, "centroid_z_mm": z}
        )  # fmt: skip
    return [{c: "" if row.get(c) is None else row[c] for c in CSV_COLUMNS} for row in rows]
