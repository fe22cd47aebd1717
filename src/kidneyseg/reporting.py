"""The report: loss curves, overlays and tables from the files earlier stages wrote.

Reads ``RUN_DIR/<phase>/metrics.csv`` (+ ``config.json``; `kidneyseg.formats.run_dir`) and
``EVAL_DIR/per_case.csv`` + ``EVAL_DIR/summary.json`` (`kidneyseg.formats.eval_dir`), whose
``pred_dir`` / ``gt_dir`` locate the label maps and CT for the overlays, and writes, atomically,
a folder with:

* ``curves_<phase>.png``: training vs validation loss per epoch (paper Fig. 6);
* ``overlay_<case>.png``: predicted masks as red fill and ground-truth edges in green on the CT in
  a soft-tissue window, on the slices with the largest ground-truth tumor and kidney area, for the
  best / median / worst cases (paper Fig. 9);
* ``view_<case>.html``: for the same cases, the slice viewer of `kidneyseg.viewer` (prediction
  filled, ground truth outlined), linked from the page;
* ``table1.csv``: the Table-1-style summary (kidney, tumor and the paper's reported values);
* ``report.html`` (one self-contained page, images embedded) and ``report.md``.

The figures themselves are drawn by `kidneyseg.figures`, the tables' cells made by
`kidneyseg.report_tables` and the page rendered by `kidneyseg.report_page`; this module chooses
what to show, reads the cases and assembles the page.

Example:
    >>> page = make_report("run", "eval", "report")  # doctest: +SKIP
    >>> page.name  # doctest: +SKIP
    'report.html'
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from tqdm import tqdm

from kidneyseg.data.kits import IMAGE_NAME
from kidneyseg.errors import KidneysegError
from kidneyseg.evaluation import find_reference
from kidneyseg.figures import (
    SOFT_TISSUE_WINDOW,
    CaseVolumes,
    choose_slices,
    draw_overlay,
    plot_loss_curves,
)
from kidneyseg.formats.eval_dir import (
    PER_CASE_FILE,
    SCORE_COLUMNS,
    SUMMARY_FILE,
    read_csv_columns,
    read_per_case,
    read_summary,
)
from kidneyseg.formats.pred_dir import output_path
from kidneyseg.formats.run_dir import BEST_FILE, CONFIG_FILE, METRICS_FILE, phase_dir
from kidneyseg.io import check_same_geometry, read_labels, read_volume
from kidneyseg.report_page import Block, render_html, render_markdown
from kidneyseg.report_tables import (
    TABLE1_COLUMNS,
    choose_cases,
    format_score,
    kits_class_cells,
    summary_rows,
    table1_cells,
    table1_csv_text,
)
from kidneyseg.types import PHASES
from kidneyseg.utils import atomic_dir, atomic_write_text, package_version
from kidneyseg.viewer import write_comparison_viewer

#: The report folder's page, its Markdown twin and the Table-1 CSV.
REPORT_FILE: Final = "report.html"
REPORT_MD_FILE: Final = "report.md"
TABLE1_FILE: Final = "table1.csv"


# ----------------------------------------------------------------------------- loss curves
def _curve_labels(phase: str, config_path: Path) -> tuple[str, str, str]:
    """The curve's title, the configured loss name (``"loss"`` when unknown) and
    ``train.checkpoint_metric`` (``"loss"`` when unknown)."""
    index = PHASES.index(phase) + 1 if phase in PHASES else 0
    title, loss, metric = f"phase {index}: {phase}", "loss", "loss"
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
        loss = str(train.get("loss", loss))
        metric = str(train.get("checkpoint_metric", metric))
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # the config only decorates the title; the curve stands without it
    return title, loss, metric


# ----------------------------------------------------------------------------- cases
def load_case_volumes(case_id: str, pred_dir: Path, gt_dir: Path) -> CaseVolumes:
    """Read one case's prediction, ground truth and CT as canonical arrays.

    Ground truth: the first of ``GT_DIR/<case>/aggregated_MAJ_seg.nii.gz``,
    ``GT_DIR/<case>/segmentation.nii.gz``, ``GT_DIR/<case>.nii.gz``
    (`kidneyseg.evaluation.find_reference`); CT: ``GT_DIR/<case>/imaging.nii.gz`` (None when
    absent).

    Example:
        >>> vols = load_case_volumes("case_00001", Path("pred"), Path("data"))  # doctest: +SKIP
        >>> vols.pred.shape == vols.gt.shape  # doctest: +SKIP
        True

    Raises:
        KidneysegError: a missing or unreadable file, or grids that do not match.
    """
    gt_path = find_reference(gt_dir, case_id)
    if gt_path is None:
        raise KidneysegError("no ground-truth label file for this case", path=gt_dir / case_id)
    gt = read_labels(gt_path)
    pred = read_labels(output_path(pred_dir, case_id), like=gt)
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
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise KidneysegError(
            f"output folder exists, is not empty and holds no {REPORT_FILE}; "
            "choose a new or empty folder (a previous report folder is replaced)",
            path=out,
        )


def _curves_blocks(run_dir: Path, tmp: Path) -> list[Block]:
    blocks = [Block("h2", "Training curves (paper Fig. 6)")]
    for phase in PHASES:
        metrics_path = phase_dir(run_dir, phase) / METRICS_FILE
        if not metrics_path.is_file():
            blocks.append(
                Block(
                    "note",
                    f"Loss curves for phase {phase!r}: not available ({metrics_path} not found).",
                )
            )
            continue
        try:
            cols = read_csv_columns(metrics_path, ["epoch"])
        except KidneysegError as exc:
            blocks.append(Block("note", f"Loss curves for phase {phase!r}: not available ({exc})."))
            continue
        name = f"curves_{phase}.png"
        title, loss_name, metric = _curve_labels(phase, phase_dir(run_dir, phase) / CONFIG_FILE)
        plot_loss_curves(cols, tmp / name, title, loss_name, metric)
        best = "highest validation Dice" if metric == "dice" else "lowest validation loss"
        caption = (
            f"Phase {phase}: training vs validation loss per epoch ({len(cols['epoch'])} "
            f"epochs; the star marks the epoch with the {best}, whose weights "
            f"are kept as {BEST_FILE})."
        )
        if "seconds" in cols:
            secs = np.nansum(np.asarray(cols["seconds"], dtype=np.float64))
            caption += f" Training time {secs / 60:.1f} min"
            if "slices_per_s" in cols and np.isfinite(cols["slices_per_s"]).any():
                caption += f", {np.nanmean(cols['slices_per_s']):.0f} slices/s"
            caption += "."
        blocks.append(Block("img", caption, image=name))
    return blocks


def _overlay_blocks(
    summary: dict[str, Any],
    per_case: dict[str, list[Any]],
    eval_dir: Path,
    tmp: Path,
    max_cases: int,
) -> list[Block]:
    blocks = [Block("h2", "Overlays (paper Fig. 9)")]
    chosen = choose_cases(per_case, max_cases)
    pred_dir = _resolve_dir(summary.get("pred_dir"), eval_dir)
    gt_dir = _resolve_dir(summary.get("gt_dir"), eval_dir)
    if not chosen:
        blocks.append(Block("note", "Overlays: not available (no case with a defined Dice)."))
        return blocks
    if pred_dir is None or gt_dir is None:
        blocks.append(
            Block("note", "Overlays: not available (summary.json names no pred_dir / gt_dir).")
        )
        return blocks
    blocks.append(
        Block(
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
            blocks.append(Block("note", f"Overlay for {case_id} not drawn: {exc}"))
            continue
        row = index[case_id]
        dice = {
            region: next((per_case[c][row] for c in cols if c in per_case), math.nan)
            for region, (cols, _, _) in TABLE1_COLUMNS.items()
        }
        dice_text = (
            f"case Dice: kidney {format_score(dice['kidney'])}, tumor {format_score(dice['tumor'])}"
        )
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
            Block("img", f"{case_id} ({role}); {dice_text}; {where}{ct_note}.", image=name)
        )
        page = f"view_{_safe_name(case_id)}.html"
        write_comparison_viewer(tmp / page, vols.ct, vols.pred, vols.gt, vols.spacing, case_id)
        text = f"{case_id}: slice viewer, prediction filled and ground truth outlined"
        blocks.append(Block("link", f"{text} (one HTML file, opens offline)", image=page))
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
    run, ev, out = Path(run_dir), Path(eval_dir), Path(out_dir)
    if max_cases < 0:
        raise KidneysegError(f"max_cases must be >= 0 (got {max_cases})")
    if not ev.is_dir():
        raise KidneysegError("evaluation folder not found; run `kidneyseg evaluate` first", path=ev)
    for name in (PER_CASE_FILE, SUMMARY_FILE):
        if not (ev / name).is_file():
            raise KidneysegError(
                f"{name} not found; run `kidneyseg evaluate` first", path=ev / name
            )
    per_case = read_per_case(ev)
    summary = read_summary(ev / SUMMARY_FILE)
    _check_out_dir(out, [p for p in (run, ev) if p.exists()])

    title = "kidneyseg report"
    rows = summary_rows(summary, per_case)
    header, body = table1_cells(rows)
    kits_header, kits_body = kits_class_cells(summary, per_case)
    blocks = [
        Block(
            "p",
            f"kidneyseg {package_version()}. Model folder: {run}. Evaluation folder: "
            f"{ev} ({len(per_case['case'])} cases).",
        ),
        Block("h2", "Summary (Table 1 style)"),
        Block("table", header=tuple(header), rows=tuple(tuple(r) for r in body)),
        Block(
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
        Block(
            "note",
            "The 'paper (reported)' rows are the per-case Dice published in the paper "
            "(kidney 0.961, tumor 0.811) on its own test split, shown for reference; "
            "they were not computed here.",
        ),
        Block("h2", "KiTS classes"),
        Block("table", header=tuple(kits_header), rows=tuple(map(tuple, kits_body))),
        Block(
            "p",
            "The KiTS21/23 leaderboard classes: masses = tumor + cyst. A model trained on tumor "
            "alone (the paper) predicts no cyst, so reference cysts count as missed masses; "
            "train with --preset kits to predict cysts (label 3).",
        ),
    ]
    with atomic_dir(out) as tmp:
        blocks += _curves_blocks(run, tmp)
        blocks += _overlay_blocks(summary, per_case, ev, tmp, max_cases)
        shown = [c for c in SCORE_COLUMNS if c in per_case]
        blocks += [
            Block("h2", "Per-case results"),
            Block(
                "p",
                "All numbers per case: dice_* and sd_* are 3D Dice and surface Dice of the "
                "KiTS classes (kidney_and_mass = labels 1-3, mass = 2-3, tumor = 2); "
                "paper_case_* are per-case Dice, paper_slice_* per-slice Dice of the "
                "paper's kidney / tumor. — = undefined.",
            ),
            Block(
                "table",
                header=("case", *shown),
                rows=tuple(
                    (c, *(format_score(per_case[col][i]) for col in shown))
                    for i, c in enumerate(per_case["case"])
                ),
            ),
        ]
        atomic_write_text(tmp / TABLE1_FILE, table1_csv_text(rows))
        atomic_write_text(tmp / REPORT_MD_FILE, render_markdown(blocks, title))
        atomic_write_text(tmp / REPORT_FILE, render_html(blocks, tmp, title))
    return out / REPORT_FILE
