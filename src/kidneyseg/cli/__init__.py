"""The ``kidneyseg`` command: argument parsing only.

Each subcommand lives in its own small module here with ``register(subparsers)``; its handler
builds the config and calls one public function of the package. Heavy imports (torch,
SimpleITK) happen inside handlers so ``kidneyseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from kidneyseg import __version__
from kidneyseg.errors import KidneysegError

#: Subcommand modules, in the order of the pipeline; each must import (a broken one fails loudly).
SUBCOMMANDS = (
    "info",
    "stats",
    "phantoms",
    "download",
    "preprocess",
    "train",
    "predict",
    "export",
    "install-model",
    "evaluate",
    "report",
    "view",
    "demo",
)


def add_config_options(parser: argparse.ArgumentParser, presets: bool = True) -> None:
    """--preset / --config / --set, shared by every command that takes a config."""
    if presets:
        parser.add_argument(
            "--preset",
            default="paper",
            help="named preset: paper (default, the published settings), fast (minutes on a "
            "CPU) or kits (phase 2 predicts tumor and cyst); combine with commas, e.g. fast,kits",
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="config file (.json/.yaml/.toml) applied over the preset",
    )
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one config field (repeatable)",
    )


def add_split_options(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--split SPLIT.json --subset {train,val,test}``: only the cases of one subset."""
    parser.add_argument(
        "--split",
        default=None,
        metavar="SPLIT.json",
        help=f"{verb} only the cases of one subset of a split file (PREP_DIR/split.json)",
    )
    parser.add_argument(
        "--subset",
        default=None,
        choices=("train", "val", "test"),
        help=f"which subset of --split to {verb} (default: test)",
    )


def split_cases(args: argparse.Namespace) -> list[str] | None:
    """The case ids `add_split_options` selected (None: no ``--split``)."""
    from kidneyseg.formats.prep_dir import read_split

    if args.split is None:
        if args.subset is not None:
            raise KidneysegError("--subset needs --split SPLIT.json (the split file it is of)")
        return None
    name = args.subset or "test"
    cases = list(read_split(args.split).subset(name))
    if not cases:
        raise KidneysegError(f"the {name!r} subset is empty", path=args.split)
    return cases


def build_parser() -> argparse.ArgumentParser:
    """The ``kidneyseg`` parser with every subcommand registered.

    Example:
        >>> build_parser().parse_args(["info", "ct.nii.gz"]).command
        'info'
    """
    parser = argparse.ArgumentParser(
        prog="kidneyseg",
        description="Kidney and kidney-tumor segmentation in abdominal CT (two-phase 2D U-Net).",
    )
    parser.add_argument("--version", action="version", version=f"kidneyseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"kidneyseg.cli.{name.replace('-', '_')}").register(sub)
    for command in sub.choices.values():
        # `kidneyseg predict ... --debug` as well as `kidneyseg --debug predict ...`; SUPPRESS
        # keeps the subcommand from resetting a --debug given before it.
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def os_error_line(exc: OSError) -> str:
    """``<file>: <reason>`` for an operating-system error (the file when it names one).

    Example:
        >>> import errno
        >>> os_error_line(OSError(errno.ENOSPC, "No space left on device", "run/last.ckpt"))
        'run/last.ckpt: No space left on device'
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where else reason


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kidneyseg`` console script; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a `KidneysegError` or an `OSError` (printed as one line) or bad
        usage, 130 when interrupted, 141 when the output pipe closed.

    Example:
        >>> main(["info", "case_00000/imaging.nii.gz"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KidneysegError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # The file system refused (full disk, quota, read-only, permissions) somewhere the
        # package did not wrap the error itself: still one line naming the file.
        if args.debug:
            raise
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
