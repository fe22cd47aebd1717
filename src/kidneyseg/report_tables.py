"""The report's numbers: the Table-1-style summary, per-metric statistics and case choice.

Works on what `kidneyseg.formats.eval_dir` reads: ``summary.json`` (a dict) and
``per_case.csv`` as ``{column: values}``. `kidneyseg.reporting` lays the results out on the page.

Example:
    >>> rows = summary_rows({"metrics": {"dice_tumor": {"mean": 0.8, "n": 3}}}, {})
    >>> rows[1].name, rows[1].case_mean
    ('tumor', 0.8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kidneyseg.metrics import summary_stats

#: Per-case Dice the paper reports on its test split (abstract and Table 1); shown as reference.
PAPER_CASE_DICE = {"kidney": 0.961, "tumor": 0.811}

#: Table-1 rows: per-case Dice columns (first one present wins), per-slice Dice, surface Dice.
TABLE1_COLUMNS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "kidney": (
        ("paper_case_dice_kidney", "dice_kidney_and_mass"),
        "paper_slice_dice_kidney",
        "sd_kidney_and_mass",
    ),
    "tumor": (("paper_case_dice_tumor", "dice_tumor"), "paper_slice_dice_tumor", "sd_tumor"),
}

#: The three nested KiTS21/23 classes (`kidneyseg.types.KITS_CLASSES`) as the report names them.
KITS_CLASS_NAMES = {
    "kidney_and_mass": "kidney + masses (labels 1-3)",
    "mass": "masses: tumor + cyst (labels 2-3)",
    "tumor": "tumor (label 2)",
}


# ----------------------------------------------------------------------------- statistics
def metric_stats(
    summary: dict[str, Any], per_case: dict[str, list[Any]], name: str
) -> dict[str, float] | None:
    """``{"mean","median","std","n"}`` of one metric, or None when neither input has it.

    Taken from ``summary["metrics"][name]`` (or ``summary[name]``); when the summary lacks the
    metric it is computed from the per-case column with `kidneyseg.metrics.summary_stats`
    (sample standard deviation, ignoring NaN: cases where the metric is undefined). Missing
    values are NaN.

    Example:
        >>> metric_stats({"metrics": {"dice_tumor": {"mean": 0.8}}}, {}, "dice_tumor")["mean"]
        0.8
        >>> round(metric_stats({}, {"dice_tumor": [0.2, 0.6]}, "dice_tumor")["std"], 4)
        0.2828
    """
    metrics = summary.get("metrics")
    entry = metrics.get(name) if isinstance(metrics, dict) else None
    if not isinstance(entry, dict):
        entry = summary.get(name) if isinstance(summary.get(name), dict) else None
    if entry is None or "mean" not in entry:
        if name not in per_case:
            return None
        entry = dict(summary_stats(per_case[name]))
    return {k: _as_float(entry.get(k)) for k in ("mean", "median", "std", "n")}


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class SummaryRow:
    """One row of the Table-1-style summary (NaN where a value is not available)."""

    name: str
    case_mean: float
    case_std: float
    case_median: float
    slice_mean: float
    surface_mean: float
    n: float
    source: str


def summary_rows(summary: dict[str, Any], per_case: dict[str, list[Any]]) -> list[SummaryRow]:
    """Rows kidney, tumor (from the evaluation), then the paper's reported per-case Dice.

    Example:
        >>> rows = summary_rows({"metrics": {"dice_tumor": {"mean": 0.8}}}, {})
        >>> [r.name for r in rows][-1], rows[1].case_mean
        ('paper (reported): tumor', 0.8)
    """
    nan = math.nan
    rows = []
    for region, (case_cols, slice_col, surface_col) in TABLE1_COLUMNS.items():
        case_col = next((c for c in case_cols if metric_stats(summary, per_case, c)), case_cols[0])
        case = metric_stats(summary, per_case, case_col) or {}
        slc = metric_stats(summary, per_case, slice_col) or {}
        surf = metric_stats(summary, per_case, surface_col) or {}
        rows.append(
            SummaryRow(
                region,
                case.get("mean", nan),
                case.get("std", nan),
                case.get("median", nan),
                slc.get("mean", nan),
                surf.get("mean", nan),
                case.get("n", nan),
                f"{case_col}, {slice_col}, {surface_col}",
            )
        )
    for region, value in PAPER_CASE_DICE.items():
        rows.append(
            SummaryRow(
                f"paper (reported): {region}",
                value,
                nan,
                nan,
                nan,
                nan,
                nan,
                "the paper's published per-case Dice, not computed here",
            )
        )
    return rows


def format_score(value: float | None, digits: int = 3) -> str:
    """A number for the report's tables: fixed ``digits`` decimals, "—" when undefined.

    Example:
        >>> format_score(0.91234), format_score(float("nan"))
        ('0.912', '—')
    """
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table1_cells(rows: Sequence[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the Table-1-style summary for the page.

    Example:
        >>> header, body = table1_cells(summary_rows({}, {"dice_tumor": [0.5, 0.7]}))
        >>> body[1][:2]
        ['tumor', '0.600 ± 0.141']
    """
    header = [
        "region",
        "per-case Dice: mean ± std",
        "per-case Dice: median",
        "per-slice Dice: mean",
        "surface Dice: mean per-case",
        "cases (n)",
    ]
    body = []
    for r in rows:
        mean = format_score(r.case_mean)
        if math.isfinite(r.case_std):
            mean += f" ± {format_score(r.case_std)}"
        n = "—" if not math.isfinite(r.n) else str(int(r.n))
        others = (r.case_median, r.slice_mean, r.surface_mean)
        body.append([r.name, mean, *(format_score(v) for v in others), n])
    return header, body


def kits_class_cells(
    summary: dict[str, Any], per_case: dict[str, list[Any]]
) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the KiTS table: Dice and surface Dice of each KiTS class, then
    the leaderboard's mean over the three classes.

    Example:
        >>> header, body = kits_class_cells({}, {"dice_mass": [0.5, 0.7], "sd_mass": [0.6]})
        >>> body[1][:3]
        ['masses: tumor + cyst (labels 2-3)', '0.600 ± 0.141', '0.600']
    """
    header = ["KiTS class", "Dice: mean ± std", "Dice: median", "surface Dice: mean", "cases (n)"]
    body = []
    for name, title in KITS_CLASS_NAMES.items():
        dice = metric_stats(summary, per_case, f"dice_{name}") or {}
        surface = metric_stats(summary, per_case, f"sd_{name}") or {}
        mean = format_score(dice.get("mean", math.nan))
        if math.isfinite(dice.get("std", math.nan)):
            mean += f" ± {format_score(dice['std'])}"
        n = dice.get("n", math.nan)
        n_text = str(int(n)) if math.isfinite(n) else "—"
        median = format_score(dice.get("median", math.nan))
        body.append([title, mean, median, format_score(surface.get("mean", math.nan)), n_text])
    means = [_as_float(summary.get(f"kits_mean_{m}")) for m in ("dice", "sd")]
    body.append(["KiTS mean (3 classes)", format_score(means[0]), "", format_score(means[1]), ""])
    return header, body


def table1_csv_text(rows: Sequence[SummaryRow]) -> str:
    """The text of ``table1.csv``: one line per `SummaryRow`, 6 significant digits.

    Example:
        >>> print(table1_csv_text(summary_rows({}, {"dice_tumor": [0.5]})).splitlines()[2])
        tumor,0.5,,0.5,,,1
    """
    lines = [
        "region,case_dice_mean,case_dice_std,case_dice_median,slice_dice_mean,surface_dice_mean,n"
    ]
    for r in rows:
        values = (r.case_mean, r.case_std, r.case_median, r.slice_mean, r.surface_mean, r.n)
        lines.append(",".join([r.name, *(f"{v:.6g}" if math.isfinite(v) else "" for v in values)]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- cases
def choose_cases(per_case: dict[str, list[Any]], max_cases: int = 6) -> list[tuple[str, str]]:
    """Best, median and worst cases by tumor Dice, then by kidney Dice (deduplicated).

    Cases where a Dice is NaN (undefined, e.g. no tumor anywhere) are not ranked on it.
    Returns ``[(case_id, role), ...]``, at most ``max_cases``.

    Example:
        >>> pc = {"case": ["a", "b", "c"], "dice_tumor": [0.9, 0.5, 0.7]}
        >>> choose_cases(pc, 3)
        [('a', 'best tumor Dice'), ('c', 'median tumor Dice'), ('b', 'worst tumor Dice')]
    """
    picks: dict[str, list[str]] = {}
    for region in ("tumor", "kidney"):
        col = next((c for c in TABLE1_COLUMNS[region][0] if c in per_case), None)
        if col is None:
            continue
        ranked = sorted(
            (v, c) for c, v in zip(per_case["case"], per_case[col], strict=True) if math.isfinite(v)
        )
        if not ranked:
            continue
        order = [
            (ranked[-1][1], "best"),
            (ranked[(len(ranked) - 1) // 2][1], "median"),
            (ranked[0][1], "worst"),
        ]
        for case_id, which in order:
            picks.setdefault(case_id, []).append(f"{which} {region} Dice")
    return [(c, ", ".join(dict.fromkeys(r))) for c, r in picks.items()][: max(0, max_cases)]
