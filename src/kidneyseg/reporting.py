"""The report: loss curves, overlays and tables from the files earlier stages wrote.

Reads ``RUN_DIR/<phase>/metrics.csv`` (+ ``config.json``), ``EVAL_DIR/per_case.csv`` and
``EVAL_DIR/summary.json`` (whose ``pred_dir`` / ``gt_dir`` locate the label maps and CT for the
overlays) and writes, atomically, a folder with:

* ``curves_<phase>.png``: training vs validation loss per epoch (paper Fig. 6);
* ``overlay_<case>.png``: predicted masks as red fill and ground-truth edges in green on the CT in
  a soft-tissue window, on the slices with the largest ground-truth tumor and kidney area, for the
  best / median / worst cases (paper Fig. 9);
* ``table1.csv``: the Table-1-style summary (kidney, tumor and the paper's reported values);
* ``report.html`` (one self-contained page, images embedded) and ``report.md``.

Figures use matplotlib's Agg canvas directly (no pyplot), so the caller's backend is untouched.

Example:
    >>> page = make_report("run", "eval", "report")  # doctest: +SKIP
    >>> page.name  # doctest: +SKIP
    'report.html'
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.types import CYST, KIDNEY, PHASES, TUMOR, Array

#: Per-case Dice the paper reports on its test split (abstract and Table 1); shown as reference.
PAPER_CASE_DICE = {"kidney": 0.961, "tumor": 0.811}
#: Soft-tissue CT window (width, level) in HU for the overlays.
SOFT_TISSUE_WINDOW = (400.0, 50.0)

#: Table-1 rows: per-case Dice columns (first one present wins), per-slice Dice, surface Dice.
TABLE1_COLUMNS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "kidney": (
        ("paper_case_dice_kidney", "dice_kidney_and_mass"),
        "paper_slice_dice_kidney",
        "sd_kidney_and_mass",
    ),
    "tumor": (("paper_case_dice_tumor", "dice_tumor"), "paper_slice_dice_tumor", "sd_tumor"),
}
#: Per-case columns shown in the report, in order (others in per_case.csv are ignored).
PER_CASE_COLUMNS = (
    "dice_kidney_and_mass",
    "sd_kidney_and_mass",
    "dice_mass",
    "sd_mass",
    "dice_tumor",
    "sd_tumor",
    "paper_case_dice_kidney",
    "paper_slice_dice_kidney",
    "paper_case_dice_tumor",
    "paper_slice_dice_tumor",
)
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "slices_per_s")

_PRED_KIDNEY_RGBA = (1.0, 0.25, 0.25, 0.45)
_PRED_TUMOR_RGBA = (0.8, 0.0, 0.0, 0.7)
_GT_KIDNEY_COLOR = "lime"
_GT_TUMOR_COLOR = "springgreen"
_DPI = 100
_PANEL_IN = 4.0  # panel side in inches: 400 px at _DPI


# ----------------------------------------------------------------------------- reading inputs
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

    ``key`` names a text column kept as strings (e.g. ``"case"``).

    Example:
        >>> cols = read_csv_columns("eval/per_case.csv", ["case"], key="case")  # doctest: +SKIP
        >>> cols["case"][:2], cols["dice_tumor"][:2]  # doctest: +SKIP
        (['case_00001', 'case_00002'], [0.83, nan])

    Raises:
        KidneysegError: unreadable file, no header, a missing required column, no rows, or a
            non-number in a numeric column.
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


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` (must be a JSON object)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KidneysegError(f"cannot read JSON: {exc}", path=p) from exc
    if not isinstance(data, dict):
        raise KidneysegError("expected a JSON object", path=p)
    return data


def metric_stats(
    summary: dict[str, Any], per_case: dict[str, list[Any]], name: str
) -> dict[str, float] | None:
    """``{"mean","median","std","n"}`` of one metric, or None when neither input has it.

    Taken from ``summary["metrics"][name]`` (or ``summary[name]``); when the summary lacks the
    metric it is computed from the per-case column, ignoring NaN (cases where it is undefined).

    Example:
        >>> metric_stats({"metrics": {"dice_tumor": {"mean": 0.8}}}, {}, "dice_tumor")["mean"]
        0.8
    """
    metrics = summary.get("metrics")
    entry = metrics.get(name) if isinstance(metrics, dict) else None
    if not isinstance(entry, dict):
        entry = summary.get(name) if isinstance(summary.get(name), dict) else None
    if entry is not None and "mean" in entry:
        return {k: _as_float(entry.get(k)) for k in ("mean", "median", "std", "n")}
    if name not in per_case:
        return None
    values = np.asarray(per_case[name], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0.0}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "n": float(values.size),
    }


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


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table1(rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
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
        mean = _fmt(r.case_mean) + (f" ± {_fmt(r.case_std)}" if math.isfinite(r.case_std) else "")
        n = "—" if not math.isfinite(r.n) else str(int(r.n))
        body.append(
            [r.name, mean, _fmt(r.case_median), _fmt(r.slice_mean), _fmt(r.surface_mean), n]
        )
    return header, body


# ----------------------------------------------------------------------------- loss curves
def plot_loss_curves(metrics: dict[str, list[Any]], path: str | Path, title: str) -> Path:
    """Training and validation loss per epoch (paper Fig. 6) as a PNG; best epoch marked.

    Example:
        >>> cols = read_csv_columns("run/kidney/metrics.csv", ["epoch"])  # doctest: +SKIP
        >>> plot_loss_curves(cols, "curves_kidney.png", "phase 1: kidney")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.0), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epoch = np.asarray(metrics["epoch"], dtype=np.float64)
    for col, label, style in (("train_loss", "training", "-o"), ("val_loss", "validation", "-s")):
        if col not in metrics:
            continue
        y = np.asarray(metrics[col], dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(epoch)
        if ok.any():
            ax.plot(epoch[ok], y[ok], style, markersize=3, label=label)
    if "val_loss" in metrics:
        val = np.asarray(metrics["val_loss"], dtype=np.float64)
        if np.isfinite(val).any():
            best = int(np.nanargmin(val))
            ax.plot(
                epoch[best],
                val[best],
                "*",
                color="black",
                markersize=11,
                label=f"best validation (epoch {epoch[best]:g})",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=_DPI, facecolor="white")
    return Path(path)


def _curve_title(phase: str, config_path: Path) -> str:
    index = PHASES.index(phase) + 1 if phase in PHASES else 0
    title = f"phase {index}: {phase}"
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8")).get("config", {})
        model, train = cfg.get("model", {}), cfg.get("train", {})
        parts = [str(model["architecture"])] if "architecture" in model else []
        parts += [
            f"{k} {train[key]}"
            for k, key in (("loss", "loss"), ("lr", "lr"), ("batch", "batch_size"))
            if key in train
        ]
        if parts:
            title += " — " + ", ".join(parts)
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # the config only decorates the title; the curve stands without it
    return title


# ----------------------------------------------------------------------------- overlays
@dataclass(frozen=True)
class OverlayPanel:
    """Where one slice's image landed in an overlay PNG.

    Attributes:
        case_id: the case.
        z: canonical axial slice index.
        shape: ``(rows, cols)`` of the canonical slice (y anterior->posterior, x right->left).
        box: ``(top, left, bottom, right)`` of the slice's pixel area in PNG pixel coordinates.
    """

    case_id: str
    z: int
    shape: tuple[int, int]
    box: tuple[float, float, float, float]

    def png_pixel(self, row: float, col: float) -> tuple[int, int]:
        """PNG ``(row, col)`` of a point of the canonical slice (integers = pixel centres)."""
        top, left, bottom, right = self.box
        r = top + (row + 0.5) / self.shape[0] * (bottom - top)
        c = left + (col + 0.5) / self.shape[1] * (right - left)
        return int(r), int(c)


@dataclass(frozen=True)
class CaseVolumes:
    """Canonical ``(z, y, x)`` arrays of one case: CT (None when absent), prediction, truth.

    ``axial_axis`` and ``axial_flipped`` say where canonical slice z lies in the files (index
    ``n - 1 - z`` on that axis when flipped), so a reader can find it in a viewer.
    """

    case_id: str
    ct: Array | None
    pred: Array
    gt: Array
    spacing: tuple[float, float, float]
    axial_axis: int = 0
    axial_flipped: bool = False

    def file_slice(self, z: int) -> int:
        """Index of canonical slice ``z`` along the files' axial axis."""
        return self.gt.shape[0] - 1 - z if self.axial_flipped else z


def _first_file(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def load_case_volumes(case_id: str, pred_dir: Path, gt_dir: Path) -> CaseVolumes:
    """Read one case's prediction, ground truth and CT as canonical arrays.

    Ground truth: ``GT_DIR/<case>/aggregated_MAJ_seg.nii.gz`` or ``segmentation.nii.gz`` (or
    ``GT_DIR/<case>.nii.gz``); CT: ``GT_DIR/<case>/imaging.nii.gz`` (None when absent).

    Example:
        >>> vols = load_case_volumes("case_00001", Path("pred"), Path("data"))  # doctest: +SKIP
        >>> vols.pred.shape == vols.gt.shape  # doctest: +SKIP
        True

    Raises:
        KidneysegError: a missing or unreadable file, or grids that do not match.
    """
    from kidneyseg.data.kits import IMAGE_NAME, label_file
    from kidneyseg.io import check_same_geometry, read_labels, read_volume

    pred_path = pred_dir / f"{case_id}.nii.gz"
    gt_path = label_file(gt_dir / case_id) or _first_file(gt_dir / f"{case_id}.nii.gz")
    if gt_path is None:
        raise KidneysegError("no ground-truth label file for this case", path=gt_dir / case_id)
    gt = read_labels(gt_path)
    pred = read_labels(pred_path, like=gt)
    ct_path = gt_dir / case_id / IMAGE_NAME
    ct = None
    if ct_path.is_file():
        ct_vol = read_volume(ct_path)
        check_same_geometry(ct_vol, gt, gt_path)
        ct = ct_vol.to_canonical()
    axis = gt.axial_axis
    flipped = gt.world_axes[axis][1] < 0
    return CaseVolumes(
        case_id, ct, pred.to_canonical(), gt.to_canonical(), gt.canonical_spacing, axis, flipped
    )


def choose_slices(gt: Array, pred: Array) -> list[tuple[int, str]]:
    """Axial slices to show: largest ground-truth tumor area, then largest kidney area.

    Falls back to the prediction's kidney area, then the middle slice, when the truth is empty.
    Returns ``[(z, reason), ...]`` (one entry when both are the same slice).

    Example:
        >>> gt = np.zeros((4, 5, 5), np.uint8); gt[1, :2] = 1; gt[2, :1] = 2
        >>> choose_slices(gt, gt)
        [(2, 'largest GT tumor area'), (1, 'largest GT kidney area')]
    """
    region = np.isin(gt, (KIDNEY, TUMOR, CYST)).sum(axis=(1, 2))
    tumor = (gt == TUMOR).sum(axis=(1, 2))
    picks: list[tuple[int, str]] = []
    if tumor.any():
        picks.append((int(np.argmax(tumor)), "largest GT tumor area"))
    if region.any():
        z = int(np.argmax(region))
        if picks and picks[0][0] == z:
            picks[0] = (z, "largest GT tumor and kidney area")
        else:
            picks.append((z, "largest GT kidney area"))
    if not picks:
        pred_area = (np.asarray(pred) != 0).sum(axis=(1, 2))
        if pred_area.any():
            picks.append((int(np.argmax(pred_area)), "largest predicted area (GT empty)"))
        else:
            picks.append((gt.shape[0] // 2, "middle slice (GT and prediction empty)"))
    return picks


def draw_overlay(
    vols: CaseVolumes,
    slices: Sequence[tuple[int, str]],
    path: str | Path,
    title: str,
    panel_labels: Sequence[str] = (),
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
) -> list[OverlayPanel]:
    """One PNG with a panel per slice: CT, predicted masks in red, ground-truth edges in green.

    Slices are shown as the canonical ``(y, x)`` array: anterior at the top and the patient's
    right on the image's left (radiological convention). Predicted kidney is light red, predicted
    tumor dark red (semi-transparent fills); ground-truth kidney region (labels 1-3) is a solid
    green contour, ground-truth tumor a dashed one.

    Example:
        >>> vols = load_case_volumes("case_00001", Path("pred"), Path("data"))  # doctest: +SKIP
        >>> slices = choose_slices(vols.gt, vols.pred)  # doctest: +SKIP
        >>> draw_overlay(vols, slices, "o.png", "case_00001")  # doctest: +SKIP

    Returns:
        Where each slice landed in the PNG (for checks and links).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    width, level = window
    n = len(slices)
    _, sy, sx = vols.spacing
    rows, cols = vols.gt.shape[1:]
    # Panels keep the slice's physical aspect (mm), longest side _PANEL_IN, at least 2 in wide
    # so the two-line titles fit.
    extent_h, extent_w = rows * sy, cols * sx
    scale = _PANEL_IN / max(extent_h, extent_w)
    panel_w, panel_h = max(2.0, extent_w * scale), max(1.0, extent_h * scale)
    top_in, title_in, bottom_in, pad_in = 0.35, 0.6, 0.55, 0.15
    fig_w = n * (panel_w + 2 * pad_in)
    fig_h = top_in + title_in + panel_h + bottom_in
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig_h)
    axes = []
    for i, (z, _reason) in enumerate(slices):
        ax = fig.add_axes(
            (
                (i * (panel_w + 2 * pad_in) + pad_in) / fig_w,
                bottom_in / fig_h,
                panel_w / fig_w,
                panel_h / fig_h,
            )
        )
        pred, gt = vols.pred[z], vols.gt[z]
        ct = vols.ct[z] if vols.ct is not None else np.full(pred.shape, float(level))
        ax.imshow(ct, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=sy / sx)
        fill = np.zeros((*pred.shape, 4))
        fill[np.isin(pred, (KIDNEY, CYST))] = _PRED_KIDNEY_RGBA
        fill[pred == TUMOR] = _PRED_TUMOR_RGBA
        ax.imshow(fill, interpolation="nearest", aspect=sy / sx)
        region, tumor = np.isin(gt, (KIDNEY, TUMOR, CYST)), gt == TUMOR
        if region.any():
            ax.contour(
                region.astype(np.float32), levels=[0.5], colors=_GT_KIDNEY_COLOR, linewidths=1.5
            )
        if tumor.any():
            ax.contour(
                tumor.astype(np.float32),
                levels=[0.5],
                colors=_GT_TUMOR_COLOR,
                linewidths=1.5,
                linestyles="dashed",
            )
        label = panel_labels[i] if i < len(panel_labels) else ""
        where = f"z={z} (file index {vols.file_slice(z)} on axis {vols.axial_axis})"
        ax.set_title(f"{vols.case_id} · axial slice {where}\n{label}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("patient right ← → patient left  (anterior at top)", fontsize=7, labelpad=2)
        axes.append(ax)
    handles = [
        Patch(color=_PRED_KIDNEY_RGBA, label="predicted kidney"),
        Patch(color=_PRED_TUMOR_RGBA, label="predicted tumor"),
        Line2D([], [], color=_GT_KIDNEY_COLOR, lw=1.5, label="GT kidney region edge"),
        Line2D([], [], color=_GT_TUMOR_COLOR, lw=1.5, ls="--", label="GT tumor edge"),
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=4 if n > 1 else 2, fontsize=7, frameon=False
    )
    canvas.draw()
    height_px = fig.bbox.height
    panels = []
    for ax, (z, _reason) in zip(axes, slices, strict=True):
        # Display coordinates are pixels from the bottom-left; PNG rows count from the top.
        (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, -0.5), (cols - 0.5, rows - 0.5)])
        box = (float(height_px - y0), float(x0), float(height_px - y1), float(x1))
        panels.append(OverlayPanel(vols.case_id, int(z), (int(rows), int(cols)), box))
    fig.savefig(str(path), dpi=_DPI, facecolor="white")
    return panels


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


# ----------------------------------------------------------------------------- the document
@dataclass(frozen=True)
class _Block:
    kind: str  # "h2" | "p" | "note" | "table" | "img"
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    image: str = ""


def _render_html(blocks: list[_Block], out: Path, title: str) -> str:
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;"
        "padding:3px 8px;text-align:right;font-size:13px}th{background:#eee}td:first-child,"
        "th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%;"
        "border:1px solid #ddd}figcaption{font-size:13px;color:#555}.note{background:#fff6d6;"
        "padding:.4em .8em;border-left:4px solid #e0b000}"
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{css}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind in ("p", "note"):
            cls = " class='note'" if b.kind == "note" else ""
            parts.append(f"<p{cls}>{html.escape(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode((out / b.image).read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(b.image)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(b.text)}</figcaption></figure>"
            )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _render_md(blocks: list[_Block], title: str) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "note":
            lines += [f"> **Note:** {b.text}", ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "img":
            lines += [f"![{b.image}]({b.image})", "", f"*{b.text}*", ""]
    return "\n".join(lines)


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)


def _resolve_dir(value: Any, eval_dir: Path) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    p = Path(value)
    # Absolute by contract; a relative path is taken relative to EVAL_DIR if it exists there.
    if not p.is_absolute() and (eval_dir / p).is_dir():
        p = eval_dir / p
    return p


def _check_out_dir(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder whose replacement would destroy inputs or unrelated files."""
    target = out.resolve()
    for inp in inputs:
        src = inp.resolve()
        if target == src or target in src.parents:
            raise KidneysegError(f"output folder would replace the input folder {inp}", path=out)
    if out.exists() and not out.is_dir():
        raise KidneysegError("output path exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()) and not (out / "report.html").is_file():
        raise KidneysegError(
            "output folder exists, is not empty and holds no report.html; "
            "choose a new or empty folder (a previous report folder is replaced)",
            path=out,
        )


def _curves_blocks(run_dir: Path, tmp: Path) -> list[_Block]:
    blocks = [_Block("h2", "Training curves (paper Fig. 6)")]
    for phase in PHASES:
        metrics_path = run_dir / phase / "metrics.csv"
        if not metrics_path.is_file():
            blocks.append(
                _Block(
                    "note",
                    f"Loss curves for phase {phase!r}: not available ({metrics_path} not found).",
                )
            )
            continue
        try:
            cols = read_csv_columns(metrics_path, ["epoch"])
        except KidneysegError as exc:
            blocks.append(
                _Block("note", f"Loss curves for phase {phase!r}: not available ({exc}).")
            )
            continue
        name = f"curves_{phase}.png"
        plot_loss_curves(cols, tmp / name, _curve_title(phase, run_dir / phase / "config.json"))
        caption = (
            f"Phase {phase}: training vs validation loss per epoch ({len(cols['epoch'])} "
            "epochs; the star marks the epoch with the lowest validation loss, whose weights "
            "are kept as best.safetensors)."
        )
        if "seconds" in cols:
            secs = np.nansum(np.asarray(cols["seconds"], dtype=np.float64))
            caption += f" Training time {secs / 60:.1f} min"
            if "slices_per_s" in cols and np.isfinite(cols["slices_per_s"]).any():
                caption += f", {np.nanmean(cols['slices_per_s']):.0f} slices/s"
            caption += "."
        blocks.append(_Block("img", caption, image=name))
    return blocks


def _overlay_blocks(
    summary: dict[str, Any],
    per_case: dict[str, list[Any]],
    eval_dir: Path,
    tmp: Path,
    max_cases: int,
) -> list[_Block]:
    from tqdm import tqdm

    blocks = [_Block("h2", "Overlays (paper Fig. 9)")]
    chosen = choose_cases(per_case, max_cases)
    pred_dir = _resolve_dir(summary.get("pred_dir"), eval_dir)
    gt_dir = _resolve_dir(summary.get("gt_dir"), eval_dir)
    if not chosen:
        blocks.append(_Block("note", "Overlays: not available (no case with a defined Dice)."))
        return blocks
    if pred_dir is None or gt_dir is None:
        blocks.append(
            _Block("note", "Overlays: not available (summary.json names no pred_dir / gt_dir).")
        )
        return blocks
    blocks.append(
        _Block(
            "p",
            f"Best, median and worst cases by per-case Dice. CT in a soft-tissue window "
            f"(W{SOFT_TISSUE_WINDOW[0]:g}/L{SOFT_TISSUE_WINDOW[1]:g} HU); predicted kidney light "
            "red and predicted tumor dark red (semi-transparent fill); ground-truth edges green "
            "(solid: kidney region incl. masses, dashed: tumor). Axial slices in radiological "
            "convention: patient's right on the image's left, anterior at the top. Predictions "
            f"from {pred_dir}, ground truth and CT from {gt_dir}.",
        )
    )
    index = {c: i for i, c in enumerate(per_case["case"])}
    for case_id, role in tqdm(chosen, desc="overlays", unit="case", disable=None, file=sys.stderr):
        try:
            vols = load_case_volumes(case_id, pred_dir, gt_dir)
        except KidneysegError as exc:
            blocks.append(_Block("note", f"Overlay for {case_id} not drawn: {exc}"))
            continue
        row = index[case_id]
        dice = {
            region: next((per_case[c][row] for c in cols if c in per_case), math.nan)
            for region, (cols, _, _) in TABLE1_COLUMNS.items()
        }
        dice_text = f"case Dice: kidney {_fmt(dice['kidney'])}, tumor {_fmt(dice['tumor'])}"
        slices = choose_slices(vols.gt, vols.pred)
        name = f"overlay_{_safe_name(case_id)}.png"
        draw_overlay(
            vols,
            slices,
            tmp / name,
            f"{case_id} — {role}",
            [f"{reason}\n{dice_text}" for _, reason in slices],
        )
        ct_note = (
            "" if vols.ct is not None else " (no imaging.nii.gz: drawn on a blank grey background)"
        )
        where = "; ".join(f"z={z}: {reason}" for z, reason in slices)
        blocks.append(
            _Block("img", f"{case_id} ({role}); {dice_text}; {where}{ct_note}.", image=name)
        )
    return blocks


def make_report(
    run_dir: str | Path, eval_dir: str | Path, out_dir: str | Path, max_cases: int = 6
) -> Path:
    """Write the report folder (curves, overlays, tables, report.html, report.md) atomically.

    Args:
        run_dir: model folder (``<phase>/metrics.csv``); missing curves are noted, not fatal.
        eval_dir: evaluation folder with ``per_case.csv`` and ``summary.json`` (required).
        out_dir: report folder; replaced as a whole if it holds a previous report.
        max_cases: most cases to draw overlays for (best/median/worst by tumor, then kidney).

    Returns:
        The path of ``report.html``.

    Raises:
        KidneysegError: a missing or malformed ``per_case.csv`` / ``summary.json``, or an
            output folder that would replace inputs or unrelated files. Nothing is written.

    Example:
        >>> make_report("run", "eval", "report")  # doctest: +SKIP
        PosixPath('report/report.html')
    """
    from kidneyseg.utils import atomic_dir, atomic_write_text, package_version

    run, ev, out = Path(run_dir), Path(eval_dir), Path(out_dir)
    if max_cases < 0:
        raise KidneysegError(f"max_cases must be >= 0 (got {max_cases})")
    if not ev.is_dir():
        raise KidneysegError("evaluation folder not found; run `kidneyseg evaluate` first", path=ev)
    for name in ("per_case.csv", "summary.json"):
        if not (ev / name).is_file():
            raise KidneysegError(
                f"{name} not found; run `kidneyseg evaluate` first", path=ev / name
            )
    per_case = read_csv_columns(ev / "per_case.csv", ["case"], key="case")
    summary = read_summary(ev / "summary.json")
    _check_out_dir(out, [p for p in (run, ev) if p.exists()])

    title = "kidneyseg report"
    rows = summary_rows(summary, per_case)
    header, body = _table1(rows)
    blocks = [
        _Block(
            "p",
            f"kidneyseg {package_version()}. Model folder: {run}. Evaluation folder: "
            f"{ev} ({len(per_case['case'])} cases).",
        ),
        _Block("h2", "Summary (Table 1 style)"),
        _Block("table", header=tuple(header), rows=tuple(tuple(r) for r in body)),
        _Block(
            "p",
            "Per-case Dice: one 3D Dice per case over the whole volume, then the mean (± standard "
            "deviation) and median over cases. Per-slice Dice: per case, the mean of the 2D Dice "
            "over the axial slices that hold the region in the ground truth, then the mean over "
            "cases (paper_slice_dice_* columns); it weighs small, hard slices as much as large "
            "ones and is not comparable with a per-case Dice. Surface Dice: the KiTS surface "
            "Dice, one per case, mean over cases. Kidney = the kidney region including masses "
            "(labels 1-3, what phase 1 segments); tumor = label 2. Cases where a metric is "
            "undefined (e.g. no tumor in truth and prediction) are left out of its mean. "
            "Columns used: " + "; ".join(f"{r.name}: {r.source}" for r in rows[:2]) + ".",
        ),
        _Block(
            "note",
            "The 'paper (reported)' rows are the per-case Dice published in the paper "
            "(kidney 0.961, tumor 0.811) on its own test split, shown for reference; "
            "they were not computed here.",
        ),
    ]
    with atomic_dir(out) as tmp:
        blocks += _curves_blocks(run, tmp)
        blocks += _overlay_blocks(summary, per_case, ev, tmp, max_cases)
        shown = [c for c in PER_CASE_COLUMNS if c in per_case]
        blocks += [
            _Block("h2", "Per-case results"),
            _Block(
                "p",
                "All numbers per case: dice_* and sd_* are 3D Dice and surface Dice of the "
                "KiTS classes (kidney_and_mass = labels 1-3, mass = 2-3, tumor = 2); "
                "paper_case_* are per-case Dice, paper_slice_* per-slice Dice of the "
                "paper's kidney / tumor. — = undefined.",
            ),
            _Block(
                "table",
                header=("case", *shown),
                rows=tuple(
                    (c, *(_fmt(per_case[col][i]) for col in shown))
                    for i, c in enumerate(per_case["case"])
                ),
            ),
        ]
        lines = [
            "region,case_dice_mean,case_dice_std,case_dice_median,slice_dice_mean,"
            "surface_dice_mean,n"
        ]
        for r in rows:
            values = (r.case_mean, r.case_std, r.case_median, r.slice_mean, r.surface_mean, r.n)
            lines.append(
                ",".join([r.name, *(f"{v:.6g}" if math.isfinite(v) else "" for v in values)])
            )
        atomic_write_text(tmp / "table1.csv", "\n".join(lines) + "\n")
        atomic_write_text(tmp / "report.md", _render_md(blocks, title))
        atomic_write_text(tmp / "report.html", _render_html(blocks, tmp, title))
    return out / "report.html"
