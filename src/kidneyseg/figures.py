"""Figures: training loss curves (paper Fig. 6) and CT overlays of predictions (paper Fig. 9).

Figures use matplotlib's Agg canvas directly (no pyplot), so the caller's backend and global
state are untouched; matplotlib is imported only when a figure is drawn.

* `plot_loss_curves`: training vs validation loss per epoch (and validation Dice on a second
  axis), best epoch marked; used by training (``RUN_DIR/<phase>/curves.png``) and the report.
* `choose_slices`, `draw_overlay`: one case's CT (`CaseVolumes`, read by
  `kidneyseg.reporting.load_case_volumes`) with the predicted masks as red fill and the
  ground-truth edges in green, in a soft-tissue window.

This module draws arrays it is given and reads no files, so every stage may use it (training
writes its curves with it).

Example:
    >>> rows = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4}]
    >>> plot_loss_curves(rows, "curves.png", "phase 1", loss_name="bce")  # doctest: +SKIP
    PosixPath('curves.png')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kidneyseg.types import CYST, KIDNEY, TUMOR, Array
from kidneyseg.utils import atomic_path

#: Soft-tissue CT window (width, level) in HU for the overlays.
SOFT_TISSUE_WINDOW: Final = (400.0, 50.0)
#: Y-axis label of the loss curves per ``train.loss`` (other names are shown as given).
LOSS_LABELS: Final = {"bce": "BCE loss", "bce_dice": "BCE + Dice loss"}

_PRED_KIDNEY_RGBA = (1.0, 0.25, 0.25, 0.45)
_PRED_TUMOR_RGBA = (0.8, 0.0, 0.0, 0.7)
_PRED_CYST_RGBA = (0.16, 0.55, 1.0, 0.6)  # the preview's and viewer's cyst blue
_GT_KIDNEY_COLOR = "lime"
_GT_TUMOR_COLOR = "springgreen"
_DPI = 100
_PANEL_IN = 4.0  # panel side in inches: 400 px at _DPI


# ----------------------------------------------------------------------------- loss curves
def _as_floats(values: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Floats from numbers or CSV strings; blank, ``nan`` and unparsable entries become NaN."""
    out = np.full(len(values), math.nan)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            pass
    return out


def plot_loss_curves(
    metrics: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str,
    loss_name: str = "loss",
    checkpoint_metric: str = "loss",
) -> Path:
    """Training and validation loss per epoch (paper Fig. 6) as a PNG, written atomically.

    A ``val_dice`` column, when there, is drawn against a second axis (0 to 1, right). The
    epoch kept as ``best.safetensors`` is marked with a star: the lowest validation loss, or
    with ``checkpoint_metric = "dice"`` the highest validation Dice. Values may be numbers or
    the strings of a ``metrics.csv``; blank or ``nan`` values are skipped.

    Args:
        metrics: ``metrics.csv`` as columns (``{"epoch": [...], "train_loss": [...],
            "val_loss": [...]}``) or as rows (``[{"epoch": 1, "train_loss": ...}, ...]``);
            ``epoch`` is required, either loss column may be absent.
        path: the PNG to write.
        title: the plot title.
        loss_name: the configured loss (``train.loss``) naming the y axis: ``"bce"`` ->
            "BCE loss", ``"bce_dice"`` -> "BCE + Dice loss", anything else as given.
        checkpoint_metric: ``train.checkpoint_metric`` (``"loss"`` or ``"dice"``): which
            curve's best epoch the star marks.

    Returns:
        ``path``.

    Example:
        >>> rows = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4}]
        >>> plot_loss_curves(rows, "curves.png", "phase 1: kidney", "bce_dice")  # doctest: +SKIP
        PosixPath('curves.png')
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if isinstance(metrics, Mapping):
        columns = {key: _as_floats(values) for key, values in metrics.items()}
    else:
        keys = dict.fromkeys(key for row in metrics for key in row)
        columns = {key: _as_floats([row.get(key) for row in metrics]) for key in keys}
    fig = Figure(figsize=(6.4, 4.0), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epoch = columns["epoch"]
    for col, label, style in (("train_loss", "training", "-o"), ("val_loss", "validation", "-s")):
        if col not in columns:
            continue
        y = columns[col]
        ok = np.isfinite(y) & np.isfinite(epoch)
        if ok.any():
            ax.plot(epoch[ok], y[ok], style, markersize=3, label=label)
    star_ax, star_col = ax, "val_loss"
    dice = columns.get("val_dice", np.full(len(epoch), math.nan))
    if (np.isfinite(dice) & np.isfinite(epoch)).any():
        dice_ax = ax.twinx()
        ok = np.isfinite(dice) & np.isfinite(epoch)
        dice_ax.plot(epoch[ok], dice[ok], "-^", color="C2", markersize=3, label="validation Dice")
        dice_ax.set_ylim(0.0, 1.0)
        dice_ax.set_ylabel("validation Dice")
        if checkpoint_metric == "dice":
            star_ax, star_col = dice_ax, "val_dice"
    if star_col in columns:
        val = columns[star_col]
        if np.isfinite(val).any():
            best = int(np.nanargmax(val) if star_col == "val_dice" else np.nanargmin(val))
            star_ax.plot(
                epoch[best],
                val[best],
                "*",
                color="black",
                markersize=11,
                label=f"best validation (epoch {epoch[best]:g})",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(LOSS_LABELS.get(loss_name, loss_name))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    handles: list[Any] = []
    labels: list[str] = []
    for axis in fig.axes:  # the loss axis, and the Dice axis when there is one
        more = axis.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:  # on the top axis, so no curve is drawn over it
        fig.axes[-1].legend(handles, labels, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=_DPI, facecolor="white")
    return Path(path)


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
    tumor dark red, predicted cyst (from a model that predicts cysts) blue (semi-transparent
    fills); ground-truth kidney region (labels 1-3) is a solid green contour, ground-truth tumor
    a dashed one.

    Example:
        >>> from kidneyseg.reporting import load_case_volumes
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
        fill[pred == KIDNEY] = _PRED_KIDNEY_RGBA
        fill[pred == CYST] = _PRED_CYST_RGBA
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
    if (vols.pred == CYST).any():
        handles.insert(2, Patch(color=_PRED_CYST_RGBA, label="predicted cyst"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles) if n > 1 else 2,
        fontsize=7,
        frameon=False,
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
