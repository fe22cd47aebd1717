"""``kidneyseg install-model FILE|URL``: put a model package in the user model store.

Example:
    kidneyseg install-model https://example.org/paper.zip
    kidneyseg predict ct.nii.gz labels.nii.gz --model 3f2a9c0d1b7e4a55
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "install-model",
        help="install a model package (file or URL) so predict --model <id> finds it",
        description=(
            "Check a model package (kidneyseg export) and unpack it into the user model "
            "store, ~/.cache/kidneyseg/models/<model id> ($KIDNEYSEG_HOME/models when set). "
            "A URL is downloaded first; an interrupted download resumes when run again."
        ),
    )
    parser.add_argument("source", metavar="FILE|URL", help="model package file or http(s) URL")
    parser.add_argument(
        "--id",
        default=None,
        dest="expected_id",
        metavar="MODEL_ID",
        help="refuse the package unless it holds this model id (e.g. the one its publisher "
        "announced)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kidneyseg.model_package import install_model

    model, folder = install_model(args.source, args.expected_id)
    print(f"installed model {model} in {folder}; use it with --model {model}")
    return 0
