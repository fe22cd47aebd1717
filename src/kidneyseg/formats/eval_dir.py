"""The evaluation folder ``EVAL_DIR`` (``kidneyseg evaluate``): per-case table and summary.

Layout (docs/formats.md "Evaluation")::

    EVAL_DIR/per_case.csv   one row per case, columns `PER_CASE_COLUMNS`
    EVAL_DIR/summary.json   statistics over cases (`SUMMARY_FORMAT`, `SUMMARY_FORMAT_VERSION`)
    EVAL_DIR/summary.md     the summary as a Markdown table

``per_case.csv``
    ``case``; ``dice_<class>`` and ``sd_<class>`` (Dice and surface Dice) for the three KiTS
    classes (`KITS_COLUMNS`); ``paper_case_dice_kidney``, ``paper_slice_dice_kidney``,
    ``paper_case_dice_tumor``, ``paper_slice_dice_tumor`` (`PAPER_COLUMNS`);
    ``volume_ml_{kidney,tumor}_{gt,pred}`` (`VOLUME_COLUMNS`; voxel count x voxel volume,
    kidney = labels 1, 2, 3, tumor = label 2); last, ``missing``: 1 when the case had no
    prediction and was scored as an all-background one (``kidneyseg evaluate
    --allow-missing``: Dice 0 where the reference has the structure), else 0. All but
    ``case`` are numbers; an undefined value (a per-slice Dice when the reference has no slice
    with that structure) is an empty cell.
``summary.json``
    ``{"format": "kidneyseg-eval", "format_version": 1, "kidneyseg_version", "pred_dir",
    "gt_dir" (absolute), "n_cases", "missing", "tolerances_mm", "kits_mean_dice",
    "kits_mean_sd", "metrics": {column: {"mean", "median", "std", "n"}}}`` for every column
    of `METRIC_COLUMNS`; ``n_cases`` counts every scored case, ``missing`` lists the ids of
    those scored without a prediction (``[]`` normally; their zeros are in the statistics);
    ``std`` is the sample standard deviation (``null`` below two values), ``n`` counts the
    defined values (`kidneyseg.metrics.summary_stats`). A ``summary.json`` written before
    ``missing`` existed has no such key: read it as ``[]``.
``summary.md``
    ``kidneyseg.evaluation.format_table`` of the summary.

Example:
    >>> PER_CASE_COLUMNS[:3]
    ('case', 'dice_kidney_and_mass', 'sd_kidney_and_mass')
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from kidneyseg.errors import KidneysegError
from kidneyseg.types import KITS_CLASSES
from kidneyseg.utils import atomic_path, check_writable_dir

PER_CASE_FILE: Final = "per_case.csv"
SUMMARY_FILE: Final = "summary.json"
SUMMARY_MD_FILE: Final = "summary.md"
#: ``summary.json``'s ``format`` and ``format_version``.
SUMMARY_FORMAT: Final = "kidneyseg-eval"
SUMMARY_FORMAT_VERSION: Final = 1

#: Dice and surface Dice of the KiTS classes (`kidneyseg.metrics.kits_metrics`).
KITS_COLUMNS: Final = tuple(
    f"{metric}_{name}" for name in KITS_CLASSES for metric in ("dice", "sd")
)
#: The paper's per-case and per-slice Dice (`kidneyseg.metrics.paper_metrics`).
PAPER_COLUMNS: Final = (
    "paper_case_dice_kidney",
    "paper_slice_dice_kidney",
    "paper_case_dice_tumor",
    "paper_slice_dice_tumor",
)
#: Region volumes in mL (`kidneyseg.metrics.region_volumes_ml`).
VOLUME_COLUMNS: Final = (
    "volume_ml_kidney_gt",
    "volume_ml_kidney_pred",
    "volume_ml_tumor_gt",
    "volume_ml_tumor_pred",
)
#: The scores (Dice-type columns, no volumes), in ``per_case.csv`` order.
SCORE_COLUMNS: Final = (*KITS_COLUMNS, *PAPER_COLUMNS)
#: Every numeric column of ``per_case.csv``: the keys of ``summary.json``'s ``metrics``.
METRIC_COLUMNS: Final = (*SCORE_COLUMNS, *VOLUME_COLUMNS)
#: 1 when the case had no prediction and was scored as an empty one, else 0.
MISSING_COLUMN: Final = "missing"
#: Columns of ``per_case.csv``, in order.
PER_CASE_COLUMNS: Final = ("case", *METRIC_COLUMNS, MISSING_COLUMN)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else format(value, ".10g")
    return str(value)


def per_case_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``per_case.csv`` for rows holding every `PER_CASE_COLUMNS` key.

    Floats are written with 10 significant digits; NaN and infinities as empty cells.

    Example:
        >>> row = dict.fromkeys(METRIC_COLUMNS, float("nan")) | {"case": "a", "dice_mass": 0.5}
        >>> per_case_csv_text([row | {"missing": 0}]).splitlines()[1]
        'a,,,0.5,,,,,,,,,,,,0'
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_CASE_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[col]) for col in PER_CASE_COLUMNS])
    return buffer.getvalue()


def write_eval_dir(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    summary_md: str,
) -> None:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_dir``, all or none.

    The folder is created if needed; other files in it are kept, these three replaced.

    Raises:
        KidneysegError: the folder cannot be created or written.
        ValueError: the summary holds NaN or infinity (not valid JSON).

    Example:
        >>> write_eval_dir("eval", rows, summary, format_table(summary))  # doctest: +SKIP
    """
    out = Path(out_dir)
    texts = {
        PER_CASE_FILE: per_case_csv_text(rows),
        SUMMARY_FILE: json.dumps(summary, indent=2, allow_nan=False) + "\n",
        SUMMARY_MD_FILE: summary_md,
    }
    check_writable_dir(out)
    # Every file goes to a temporary name first; they are renamed together only once all are
    # written, so a failure leaves none of them behind.
    with contextlib.ExitStack() as stack:
        temporaries = {name: stack.enter_context(atomic_path(out / name)) for name in texts}
        for name, text in texts.items():
            temporaries[name].write_text(text, encoding="utf-8")


def _to_float(text: str | None, path: Path, column: str) -> float:
    if text is None or text.strip() == "" or text.strip().lower() in ("nan", "none", "na"):
        return math.nan
    try:
        return float(text)
    except ValueError as exc:
        raise KidneysegError(f"column {column!r} has a non-number {text!r}", path=path) from exc


def read_csv_columns(
    path: str | Path, required: Sequence[str], key: str | None = None
) -> dict[str, list[Any]]:
    """Read a CSV into ``{column: values}``; numbers as floats (blank/nan -> NaN).

    Reads ``per_case.csv`` (with ``key="case"``) and any other numeric table with a header,
    such as a run's ``metrics.csv``. ``key`` names a text column kept as strings.

    Raises:
        KidneysegError: unreadable file, no header, a missing required column, no rows, or a
            non-number in a numeric column.

    Example:
        >>> cols = read_csv_columns("eval/per_case.csv", ["case"], key="case")  # doctest: +SKIP
        >>> cols["case"][:2], cols["dice_tumor"][:2]  # doctest: +SKIP
        (['case_00001', 'case_00002'], [0.83, nan])
    """
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise KidneysegError(f"cannot read CSV: {exc}", path=p) from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise KidneysegError(f"missing column(s) {missing}; found {header}", path=p)
    if not rows:
        raise KidneysegError("CSV has a header but no rows", path=p)
    out: dict[str, list[Any]] = {}
    for col in header:
        raw = [(r.get(col) or "").strip() for r in rows]
        out[col] = raw if col == key else [_to_float(v, p, col) for v in raw]
    return out


def read_per_case(eval_dir: str | Path) -> dict[str, list[Any]]:
    """``EVAL_DIR/per_case.csv`` as ``{column: values}`` (`read_csv_columns`, ``case`` as text).

    Only the ``case`` column is required; unknown columns are read too.

    Example:
        >>> read_per_case("eval")["case"][:1]  # doctest: +SKIP
        ['case_00001']
    """
    return read_csv_columns(Path(eval_dir) / PER_CASE_FILE, ["case"], key="case")


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read a ``summary.json`` file (it must hold a JSON object).

    Raises:
        KidneysegError: unreadable file, invalid JSON, or not an object.

    Example:
        >>> read_summary("eval/summary.json")["n_cases"]  # doctest: +SKIP
        2
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KidneysegError(f"cannot read JSON: {exc}", path=p) from exc
    if not isinstance(data, dict):
        raise KidneysegError("expected a JSON object", path=p)
    return data
