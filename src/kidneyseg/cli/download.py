"""``kidneyseg download {kits21,kits23} DEST``: fetch KiTS imaging and labels."""

from __future__ import annotations

import argparse

from kidneyseg.data.download import download_dataset


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``download`` subcommand."""
    p = sub.add_parser(
        "download",
        help="download KiTS21/KiTS23 imaging and labels (resumable, verified)",
        description="Download KiTS cases into DEST/case_XXXXX/ (imaging.nii.gz + the label "
        "file) from the official sources. Interrupted downloads resume; files are renamed "
        "into place only once their size and gzip stream check out.",
    )
    p.add_argument("dataset", choices=("kits21", "kits23"), help="which KiTS edition")
    p.add_argument("dest", metavar="DEST", help="output folder")
    p.add_argument(
        "--cases",
        default=None,
        metavar="SPEC",
        help="case numbers, e.g. 0-9,42 (default: all of the dataset's)",
    )
    p.add_argument("--workers", type=int, default=4, help="files in parallel (4)")
    p.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="mirror serving URL/case_XXXXX/<file> instead of the official hosts",
    )
    p.add_argument(
        "--imaging-url",
        default=None,
        metavar="TEMPLATE",
        help="imaging URL template with {case} or {case_id}",
    )
    p.add_argument(
        "--label-url",
        default=None,
        metavar="TEMPLATE",
        help="label URL template with {case} or {case_id}",
    )
    p.add_argument("--retries", type=int, default=5, help="attempts per file (5)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (60)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler: download the requested cases and say how many are complete."""
    cases = download_dataset(
        args.dataset,
        args.dest,
        cases=args.cases,
        workers=args.workers,
        base_url=args.base_url,
        imaging_url=args.imaging_url,
        label_url=args.label_url,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(f"{len(cases)} {args.dataset} cases complete in {args.dest}")
    return 0
