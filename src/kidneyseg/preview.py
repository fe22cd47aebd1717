"""A preview PNG of one prediction: look at it before trusting the label map.

`write_preview` draws, on a fixed 1200 x 1000 px canvas (`PREVIEW_SIZE`):

* a mosaic of up to 8 axial slices evenly spaced through the kidney region (the slice with the
  largest tumor area always among them), cropped to the kidneys with a 30 mm margin;
* one coronal and one sagittal reformat through the largest tumor (or kidney) area, each with
  the physical aspect of its voxels (canonical spacing), superior at the top;
* labels as semi-transparent fills (kidney amber, tumor red, cyst blue; legend), patient
  orientation letters on every panel (axial and coronal: patient right on the image's left,
  radiological convention);
* the measurements in the title: kidney (labels 1-3) and tumor volume per side
  (`kidneyseg.stats`: each kidney's side by LPS x against the body midline).

An empty label map gives a preview that says "no kidney found" over the middle slice. The
figure uses matplotlib's Agg canvas directly (no pyplot) and is written atomically.
`write_previews` does it for the files ``kidneyseg predict --preview`` wrote:
``<case>_preview.png`` beside each ``<case>.nii.gz``.

Example:
    >>> result = write_preview(ct, labels, "case_00001_preview.png")  # doctest: +SKIP
    >>> result.title  # doctest: +SKIP
    'case_00001: right kidney 160.2 mL (tumor 0.0 mL) · left kidney 171.9 mL (tumor 12.6 mL)'
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import case_id_from_path
from kidneyseg.inputs import plan_prediction
from kidneyseg.io import read_image, read_labels
from kidneyseg.stats import REGIONS, CanonicalGeometry, Measurements, measure
from kidneyseg.types import CYST, KIDNEY, LABEL_NAMES, TUMOR, Array, Volume
from kidneyseg.utils import atomic_path

#: Overlay colours (RGB 0-255) per label id, shared with the viewer.
LABEL_RGB: Final = {KIDNEY: (255, 176, 0), TUMOR: (230, 25, 25), CYST: (40, 140, 255)}
#: Fill opacity per label id.
LABEL_ALPHA: Final = {KIDNEY: 0.40, TUMOR: 0.65, CYST: 0.55}
#: Soft-tissue window (HU) of the preview and the viewer's default.
SOFT_TISSUE: Final = (-160.0, 240.0)
#: Width and height of every preview PNG in pixels.
PREVIEW_SIZE: Final = (1200, 1000)
PREVIEW_SUFFIX: Final = "_preview.png"

_DPI = 100
_AXIAL_PANELS = 8
_MARGIN_MM = 30.0
_AXIAL_BOX = (0.235, 0.25)  # axial panel (width, height) as figure fractions
_AXIAL_RATIO = _AXIAL_BOX[1] * PREVIEW_SIZE[1] / (_AXIAL_BOX[0] * PREVIEW_SIZE[0])
_EMPTY_TEXT = "no kidney found"


@dataclass(frozen=True)
class PreviewPanel:
    """Where one panel's image landed in the PNG.

    ``view`` is ``"axial"`` (plane rows y, columns x), ``"coronal"`` (rows z, columns x) or
    ``"sagittal"`` (rows z, columns y), all canonical indices; ``index`` the slice shown;
    ``corner0`` / ``corner1`` the PNG ``(row, col)`` of the outer corners of the displayed
    array's first and last voxel; ``start`` the canonical (row, col) of that first voxel.
    """

    view: str
    index: int
    shape: tuple[int, int]
    start: tuple[int, int]
    corner0: tuple[float, float]
    corner1: tuple[float, float]

    def png_pixel(self, row: float, col: float) -> tuple[int, int]:
        """PNG ``(row, col)`` of the centre of canonical plane voxel ``(row, col)``."""
        fr = (row - self.start[0] + 0.5) / self.shape[0]
        fc = (col - self.start[1] + 0.5) / self.shape[1]
        r = self.corner0[0] + fr * (self.corner1[0] - self.corner0[0])
        c = self.corner0[1] + fc * (self.corner1[1] - self.corner0[1])
        return int(r), int(c)


@dataclass(frozen=True)
class PreviewResult:
    """What `write_preview` drew: the file, its title, the measurements and the panels."""

    path: Path
    title: str
    measurements: Measurements
    panels: tuple[PreviewPanel, ...]


def preview_path(label_path: str | Path) -> Path:
    """Where ``predict --preview`` puts the preview of a label file.

    Example:
        >>> preview_path("pred/case_00001.nii.gz").as_posix()
        'pred/case_00001_preview.png'
    """
    p = Path(label_path)
    return p.with_name(case_id_from_path(p) + PREVIEW_SUFFIX)


def title_text(case_id: str, m: Measurements) -> str:
    """The preview's title: case, then kidney and tumor volume per side (or no kidney)."""
    name = case_id or "case"
    if m.empty:
        return f"{name}: {_EMPTY_TEXT}"
    return f"{name}: {m.side_text('right')} · {m.side_text('left')}"


def _axial_slices(labels: Array) -> list[int]:
    region = np.isin(labels, REGIONS["kidney"]).sum(axis=(1, 2))
    zs = np.flatnonzero(region)
    picks = {int(round(z)) for z in np.linspace(zs[0], zs[-1], min(_AXIAL_PANELS, zs.size))}
    tumor = (labels == TUMOR).sum(axis=(1, 2))
    if tumor.any():
        best = int(np.argmax(tumor))
        if best not in picks:
            picks.remove(min(picks, key=lambda z: abs(z - best)))
            picks.add(best)
    return sorted(picks)


def _crop(
    labels: Array, spacing: tuple[float, float, float], midline: float
) -> tuple[slice, slice]:
    """The (y, x) window around the kidney region plus the margin, centred on the body midline
    (canonical column ``midline``) so a kidney's place in the panel tells its side, and widened
    (within the image) towards the axial panels' height/width ratio so the panels are filled."""
    proj = np.isin(labels, REGIONS["kidney"]).any(axis=0)
    mm = (spacing[1], spacing[2])
    lo, hi = [], []
    for axis in (0, 1):
        idx = np.flatnonzero(np.any(proj, axis=1 - axis))
        pad = int(np.ceil(_MARGIN_MM / mm[axis]))
        lo.append(max(0, int(idx[0]) - pad))
        hi.append(min(proj.shape[axis], int(idx[-1]) + pad + 1))
    half = max(midline - lo[1], hi[1] - midline)
    lo[1], hi[1] = max(0, int(midline - half)), min(proj.shape[1], int(np.ceil(midline + half)))
    size_mm = [(hi[a] - lo[a]) * mm[a] for a in (0, 1)]
    want = (size_mm[1] * _AXIAL_RATIO, size_mm[0] / _AXIAL_RATIO)  # (height, width) in mm
    for axis in (0, 1):
        extra = int((want[axis] - size_mm[axis]) / mm[axis] / 2)
        if extra > 0:
            lo[axis] = max(0, lo[axis] - extra)
            hi[axis] = min(proj.shape[axis], hi[axis] + extra)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def _fill(labels: Array) -> Array:
    rgba = np.zeros((*labels.shape, 4))
    for label, rgb in LABEL_RGB.items():
        rgba[labels == label] = (*(c / 255 for c in rgb), LABEL_ALPHA[label])
    return rgba


_LETTERS = {  # view -> (left, right, top, bottom)
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}


def _draw_panel(
    ax: Any, view: str, ct: Array, labels: Array, aspect: float, origin: str, title: str
) -> None:
    from matplotlib import patheffects

    lo, hi = SOFT_TISSUE
    ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin=origin)
    ax.imshow(_fill(labels), interpolation="nearest", aspect=aspect, origin=origin)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, pad=2)
    stroke = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    style = dict(color="white", fontsize=10, fontweight="bold", path_effects=stroke)
    left, right, top, bottom = _LETTERS[view]
    ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)


def _panel_box(
    ax: Any, view: str, index: int, shape: tuple[int, int], start: tuple[int, int], height: float
) -> PreviewPanel:
    rows, cols = shape
    (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, -0.5), (cols - 0.5, rows - 0.5)])
    return PreviewPanel(
        view, index, shape, start, (float(height - y0), float(x0)), (float(height - y1), float(x1))
    )


def write_preview(
    ct: Volume,
    labels: Volume,
    path: str | Path,
    title_stats: Measurements | None = None,
) -> PreviewResult:
    """Draw the preview PNG of one case (module doc) and write it atomically.

    Args:
        ct: the CT (HU).
        labels: its label map (0-3) on the same grid.
        path: the PNG to write.
        title_stats: the measurements to print in the title; measured from ``labels`` (and
            ``ct`` for the body midline) when None.

    Returns:
        The `PreviewResult` (title, measurements, where each panel landed).

    Raises:
        KidneysegError: the label map does not lie on the CT's grid.

    Example:
        >>> write_preview(ct, labels, "preview.png").title  # doctest: +SKIP
        'ct: no kidney found'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not ct.same_geometry(labels):
        raise KidneysegError(
            f"label map {labels.shape} does not lie on the CT's grid {ct.shape}",
            path=path,
        )
    geometry = CanonicalGeometry.of(labels)
    hu = np.asarray(ct.to_canonical(), dtype=np.float32)
    lab = np.asarray(labels.to_canonical(), dtype=np.uint8)
    m = title_stats if title_stats is not None else measure(lab, geometry, hu)
    title = title_text(labels.case_id or ct.case_id, m)
    sz, sy, sx = geometry.spacing
    nz, ny, nx = lab.shape
    width, height = PREVIEW_SIZE
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    if m.empty:
        subtitle = "the label map holds no kidney, tumor or cyst voxel; middle slices shown"
    else:
        subtitle = (
            f"{len(m.tumors)} tumor(s), cyst {m.volumes_ml['cyst']['total']:.1f} mL; kidney = "
            f"labels 1-3; sides split at the body midline (LPS x = {m.midline_x_mm:.1f} mm)"
        )
    fig.suptitle(f"{title}\n{subtitle}", fontsize=11, y=0.985)
    placed: list[tuple[Any, str, int, tuple[int, int], tuple[int, int]]] = []

    def add(rect: tuple[float, float, float, float], view: str, index: int, cut: Any) -> None:
        ax = fig.add_axes(rect)
        if view == "axial":
            rs, cs = cut
            img, lbl, aspect, origin = hu[index, rs, cs], lab[index, rs, cs], sy / sx, "upper"
            start = (rs.start, cs.start)
        elif view == "coronal":
            img, lbl, aspect, origin = hu[:, index, :], lab[:, index, :], sz / sx, "lower"
            start = (0, 0)
        else:
            img, lbl, aspect, origin = hu[:, :, index], lab[:, :, index], sz / sy, "lower"
            start = (0, 0)
        name = {"axial": "z", "coronal": "y", "sagittal": "x"}[view]
        _draw_panel(ax, view, img, lbl, aspect, origin, f"{view} {name}={index}")
        placed.append((ax, view, index, img.shape[:2], start))
        if m.empty and view == "axial":
            ax.text(
                0.5, 0.5, _EMPTY_TEXT, transform=ax.transAxes, ha="center", va="center",
                fontsize=26, color="white", fontweight="bold",
                bbox=dict(facecolor="black", alpha=0.7, edgecolor="red", linewidth=2),
            )  # fmt: skip

    if m.empty:
        add((0.2, 0.37, 0.6, 0.53), "axial", nz // 2, (slice(0, ny), slice(0, nx)))
        y_cut, x_cut = ny // 2, nx // 2
    else:
        # Canonical column of the midline (x runs along LPS x up to a small obliquity).
        mid_col = (m.midline_x_mm - geometry.offset[0]) / geometry.matrix[0][2]
        crop = _crop(lab, geometry.spacing, float(np.clip(mid_col, 0, nx - 1)))
        for i, z in enumerate(_axial_slices(lab)):
            row, col = divmod(i, 4)
            add((0.01 + col * 0.2475, 0.655 - row * 0.28, *_AXIAL_BOX), "axial", z, crop)
        focus = lab == TUMOR if (lab == TUMOR).any() else np.isin(lab, REGIONS["kidney"])
        y_cut = int(np.argmax(focus.sum(axis=(0, 2))))
        x_cut = int(np.argmax(focus.sum(axis=(0, 1))))
    add((0.01, 0.02, 0.38, 0.33), "coronal", y_cut, None)
    add((0.40, 0.02, 0.38, 0.33), "sagittal", x_cut, None)
    handles = []
    for k in (KIDNEY, TUMOR, CYST):
        r, g, b = (c / 255 for c in LABEL_RGB[k])
        handles.append(Patch(color=(r, g, b, LABEL_ALPHA[k] + 0.2), label=LABEL_NAMES[k]))
    fig.legend(handles=handles, loc="lower right", bbox_to_anchor=(0.99, 0.22), fontsize=10)
    notes = []
    for side in ("right", "left"):
        v = {name: m.volumes_ml[name][side] for name in ("kidney", "tumor", "cyst")}
        notes += [f"{side} kidney {v['kidney']:.1f} mL", f"  tumor {v['tumor']:.1f}, cyst "
                  f"{v['cyst']:.1f} mL"]  # fmt: skip
    notes += [f"tumor {t.number}: {t.volume_ml:.1f} mL, {t.side}" for t in m.tumors[:4]]
    notes.append(f"window [{SOFT_TISSUE[0]:g}, {SOFT_TISSUE[1]:g}] HU")
    notes.append(f"voxel {sx:g} x {sy:g} x {sz:g} mm")
    fig.text(0.80, 0.20, "\n".join(notes), fontsize=8.5, va="top", ha="left")
    canvas.draw()
    panels = tuple(
        _panel_box(ax, view, index, shape, start, fig.bbox.height)
        for ax, view, index, shape, start in placed
    )
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=_DPI, facecolor="white")
    return PreviewResult(Path(path), title, m, panels)


def write_previews(
    input_path: str | Path,
    output: str | Path,
    written: Sequence[Path],
    shard: str | None = None,
    cases: Sequence[str] | None = None,
    series: str | None = None,
    output_format: str | None = None,
) -> list[tuple[str, str]]:
    """``predict --preview``: a preview beside each label file ``predict`` wrote.

    The CT of each label file is found by planning the same prediction again
    (`kidneyseg.inputs.plan_prediction`) and read once more. A case whose preview fails is
    reported on stderr and returned; the others are still drawn.

    Args:
        input_path, output, shard, cases, series, output_format: as given to ``predict``
            (``series``: the DICOM series read from a folder holding several).
        written: the label files written (``PredictReport.written``).

    Returns:
        ``(case_id, message)`` of every preview that could not be drawn.
    """
    plan = plan_prediction(input_path, output, shard, cases, True, series, output_format)
    sources = {c.target: c for c in plan.cases}
    failed: list[tuple[str, str]] = []
    for target in written:
        case = sources.get(Path(target))
        if case is None:
            failed.append((case_id_from_path(target), "its CT is not in the prediction plan"))
            continue
        try:
            ct = read_image(case.source, series=case.series or series)
            labels = read_labels(target, like=ct)
            labels = labels.with_array(labels.array, case_id=case.case_id)
            write_preview(ct, labels, preview_path(target))
        except KidneysegError as exc:
            failed.append((case.case_id, str(exc)))
    for case_id, message in failed:
        print(f"error: preview of {case_id}: {message}", file=sys.stderr)
    return failed
