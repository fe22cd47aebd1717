"""Evaluation: score a folder of predictions against references and write ``EVAL_DIR``.

Two views of the same predictions, kept apart on purpose (the maths is `kidneyseg.metrics`):

* **KiTS view** (what the KiTS21/KiTS23 leaderboards report, `kidneyseg.metrics.kits_metrics`):
  Dice and surface Dice of the three hierarchical classes per case, on the whole volume with
  its voxel spacing. The leaderboard score is the mean over cases, then over the three classes.
* **Paper view** (`kidneyseg.metrics.paper_metrics`, paper section 5.1): Dice of the kidney
  region and the tumor, per case in 3D and as a mean over axial slices; the columns say which.

This module pairs the cases to score with their predictions and references (`match_cases`),
scores each case (`evaluate_case`, in worker processes), summarises over cases (`summarize`,
`format_table`) and writes the folder described in `kidneyseg.formats.eval_dir`:
``per_case.csv``, ``summary.json`` and ``summary.md``.

The cases to score are given (e.g. a split's test set) or every reference in GT_DIR. A case
without a prediction is never dropped silently: `evaluate` refuses it, or with
``allow_missing`` scores it as an empty prediction (as KiTS does) and lists it.

Example:
    >>> summary = evaluate("preds", "kits23/dataset", "eval")  # doctest: +SKIP
    >>> summary["kits_mean_dice"]  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from pathlib import Path
from typing import Any, Final

import numpy as np
from tqdm import tqdm

from kidneyseg.data.kits import LABEL_FILES
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.eval_dir import (
    METRIC_COLUMNS,
    MISSING_COLUMN,
    SUMMARY_FORMAT,
    SUMMARY_FORMAT_VERSION,
    write_eval_dir,
)
from kidneyseg.formats.pred_dir import OUTPUT_SUFFIX, probability_owner
from kidneyseg.io import check_same_geometry, read_labels
from kidneyseg.metrics import (
    KITS_SD_TOLERANCES_MM,
    kits_metrics,
    paper_metrics,
    region_volumes_ml,
    summary_stats,
)
from kidneyseg.types import KITS_CLASSES
from kidneyseg.utils import package_version, process_pool

#: Reference label files looked up for case ``<case>`` under GT_DIR, in order of preference:
#: the KiTS case-folder label names (`kidneyseg.data.kits.LABEL_FILES`), then a flat file.
REFERENCE_PATTERNS: Final = (
    *(f"{{case}}/{name}" for name in LABEL_FILES),
    "{case}.nii.gz",
)


def reference_candidates(gt_dir: str | Path, case: str) -> list[Path]:
    """The paths `REFERENCE_PATTERNS` gives for ``case`` under ``gt_dir``, in order.

    Example:
        >>> [p.as_posix() for p in reference_candidates("gt", "case_00001")][-1]
        'gt/case_00001.nii.gz'
    """
    return [Path(gt_dir) / pattern.format(case=case) for pattern in REFERENCE_PATTERNS]


def find_reference(gt_dir: str | Path, case: str) -> Path | None:
    """The reference label file of ``case``: the first existing `reference_candidates`, or None.

    Example:
        >>> find_reference("kits23/dataset", "case_00061")  # doctest: +SKIP
        PosixPath('kits23/dataset/case_00061/segmentation.nii.gz')
    """
    return next((c for c in reference_candidates(gt_dir, case) if c.is_file()), None)


def reference_cases(gt_dir: str | Path) -> list[str]:
    """The case ids that have a reference label file under ``gt_dir``, sorted.

    A case is a folder holding one of `kidneyseg.data.kits.LABEL_FILES` or a flat
    ``<case>.nii.gz`` file (`REFERENCE_PATTERNS`); names starting with "." are skipped.

    Example:
        >>> reference_cases("kits23/dataset")[:2]  # doctest: +SKIP
        ['case_00000', 'case_00001']
    """
    root = Path(gt_dir)
    flat = ".nii.gz"
    cases = set()
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and any((entry / name).is_file() for name in LABEL_FILES):
            cases.add(entry.name)
        elif entry.is_file() and entry.name.endswith(flat) and len(entry.name) > len(flat):
            cases.add(entry.name[: -len(flat)])
    return sorted(cases)


def _no_reference(gt_root: Path, case: str, path: Path) -> KidneysegError:
    looked = ", ".join(str(c) for c in reference_candidates(gt_root, case))
    return KidneysegError(
        f"no reference segmentation for this case (looked for {looked})", path=path
    )


def match_cases(
    pred_dir: str | Path, gt_dir: str | Path, cases: Sequence[str] | None = None
) -> list[tuple[str, Path | None, Path]]:
    """Pair each expected case with its prediction ``PRED_DIR/<case>.nii.gz`` and its reference.

    The expected cases are ``cases`` or, when None, every case with a reference under
    ``GT_DIR`` (`reference_cases`). The reference is the first of `REFERENCE_PATTERNS` that
    exists. A case without a prediction comes with ``None`` in its place (`evaluate` refuses
    it or scores it as empty); predictions of cases not in ``cases`` are ignored.

    Raises:
        KidneysegError: a folder is missing; there is no prediction at all, or none of the
            expected cases has one; ``cases`` is empty; a prediction (without ``cases``) or an
            expected case has no reference.

    Example:
        >>> match_cases("preds", "kits23/dataset")  # doctest: +SKIP
        [('case_00061', PosixPath('preds/case_00061.nii.gz'),
          PosixPath('kits23/dataset/case_00061/segmentation.nii.gz'))]
    """
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    if not pred_root.is_dir():
        raise KidneysegError("prediction folder not found", path=pred_root)
    if not gt_root.is_dir():
        raise KidneysegError("reference (ground truth) folder not found", path=gt_root)
    # Names starting with "." are temporary files of an unfinished atomic write; probability
    # maps written beside their label file (predict --save-probabilities) are not predictions.
    preds = {
        p.name[: -len(OUTPUT_SUFFIX)]: p
        for p in sorted(pred_root.iterdir())
        if p.is_file() and p.name.endswith(OUTPUT_SUFFIX) and not p.name.startswith(".")
        if not ((owner := probability_owner(p)) is not None and owner.is_file())
    }
    if not preds:
        raise KidneysegError(
            f"no predictions (<case>{OUTPUT_SUFFIX}) in the prediction folder; "
            "run `kidneyseg predict`",
            path=pred_root,
        )
    if cases is None:
        # Every prediction must have its reference (a stray file is an error, not ignored).
        for case, pred in preds.items():
            if find_reference(gt_root, case) is None:
                raise _no_reference(gt_root, case, pred)
        expected = reference_cases(gt_root)
    else:
        expected = sorted(set(cases))
        if not expected:
            raise KidneysegError("no cases to evaluate (the list of cases is empty)")
    triples = []
    for case in expected:
        gt = find_reference(gt_root, case)
        if gt is None:
            raise _no_reference(gt_root, case, preds.get(case, gt_root / case))
        triples.append((case, preds.get(case), gt))
    if all(pred is None for _, pred, _ in triples):
        raise KidneysegError(
            f"none of the {len(triples)} case(s) to evaluate has a prediction "
            f"<case>{OUTPUT_SUFFIX} in the prediction folder (first: {triples[0][0]}); "
            "run `kidneyseg predict`",
            path=pred_root,
        )
    return triples


def evaluate_case(case: str, pred_path: str | Path | None, gt_path: str | Path) -> dict[str, Any]:
    """Read one prediction and its reference and compute one row of ``per_case.csv``.

    ``pred_path`` None scores a missing prediction as all background on the reference's grid
    (Dice 0 for each structure the reference holds, as KiTS scores a missing case), with
    ``missing`` 1 in the row.

    Raises:
        KidneysegError: unreadable file, labels outside 0-3, or the prediction is not on the
            reference's grid (shape, spacing, origin or direction).

    Example:
        >>> row = evaluate_case("case_00061", "preds/case_00061.nii.gz",
        ...                     "kits23/case_00061/segmentation.nii.gz")  # doctest: +SKIP
        >>> row["dice_tumor"]  # doctest: +SKIP
        0.87
    """
    gt = read_labels(gt_path)
    if pred_path is None:
        pred = gt.with_array(np.zeros_like(gt.array))
    else:
        pred = read_labels(pred_path)
        try:
            check_same_geometry(gt, pred, pred_path)
        except KidneysegError as exc:
            raise KidneysegError(
                f"{exc.message} (prediction vs reference {gt_path})", path=pred_path
            ) from None
    row: dict[str, Any] = {"case": case, MISSING_COLUMN: int(pred_path is None)}
    # Volume.spacing is in Volume.array's axis order, which is all the KiTS metrics need (they
    # are invariant to permuting axes together with the spacing).
    row.update(kits_metrics(pred.array, gt.array, gt.spacing))
    row.update(paper_metrics(pred.to_canonical(), gt.to_canonical(), axial_axis=0))
    row.update(region_volumes_ml(pred.array, gt.array, gt.spacing))
    return row


def _run_cases(jobs: list[tuple[str, Path | None, Path]], workers: int) -> list[dict[str, Any]]:
    rows = []
    with tqdm(
        total=len(jobs),
        desc="evaluate",
        unit="case",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    ) as progress:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                rows.append(evaluate_case(*job))
                progress.update()
        else:
            with process_pool(min(workers, len(jobs))) as pool:
                pending: set[Future[dict[str, Any]]] = {
                    pool.submit(evaluate_case, *job) for job in jobs
                }
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        error = future.exception()
                        if error is not None:
                            pool.shutdown(wait=True, cancel_futures=True)
                            raise error
                        rows.append(future.result())
                        progress.update()
    return sorted(rows, key=lambda row: row["case"])


def summarize(
    rows: Sequence[dict[str, Any]], pred_dir: str | Path, gt_dir: str | Path
) -> dict[str, Any]:
    """The ``summary.json`` content for per-case rows (keys: `kidneyseg.formats.eval_dir`).

    Each metric's statistics are `kidneyseg.metrics.summary_stats` over cases.
    ``kits_mean_dice`` / ``kits_mean_sd`` average the three classes' mean over cases, as the
    KiTS leaderboard does. ``missing`` lists the cases whose rows say ``missing`` (no
    prediction, scored as empty).

    Example:
        >>> rows = [{c: 1.0 for c in METRIC_COLUMNS}]
        >>> summarize(rows, "preds", "gt")["kits_mean_dice"]
        1.0
    """
    metrics = {col: summary_stats([row[col] for row in rows]) for col in METRIC_COLUMNS}

    def class_mean(metric: str) -> float | None:
        means = [metrics[f"{metric}_{name}"]["mean"] for name in KITS_CLASSES]
        defined = [m for m in means if m is not None]
        return float(np.mean(defined)) if len(defined) == len(means) else None

    return {
        "format": SUMMARY_FORMAT,
        "format_version": SUMMARY_FORMAT_VERSION,
        "kidneyseg_version": package_version(),
        "pred_dir": str(Path(pred_dir).resolve()),
        "gt_dir": str(Path(gt_dir).resolve()),
        "n_cases": len(rows),
        "missing": [row["case"] for row in rows if row.get(MISSING_COLUMN)],
        "tolerances_mm": dict(KITS_SD_TOLERANCES_MM),
        "kits_mean_dice": class_mean("dice"),
        "kits_mean_sd": class_mean("sd"),
        "metrics": metrics,
    }


_TABLE_NAMES: Final = {
    "dice_kidney_and_mass": "KiTS Dice, kidney + masses",
    "sd_kidney_and_mass": "KiTS surface Dice, kidney + masses",
    "dice_mass": "KiTS Dice, masses (tumor + cyst)",
    "sd_mass": "KiTS surface Dice, masses (tumor + cyst)",
    "dice_tumor": "KiTS Dice, tumor",
    "sd_tumor": "KiTS surface Dice, tumor",
    "paper_case_dice_kidney": "paper Dice per case, kidney",
    "paper_slice_dice_kidney": "paper Dice per slice, kidney",
    "paper_case_dice_tumor": "paper Dice per case, tumor",
    "paper_slice_dice_tumor": "paper Dice per slice, tumor",
    "volume_ml_kidney_gt": "kidney volume, reference (mL)",
    "volume_ml_kidney_pred": "kidney volume, prediction (mL)",
    "volume_ml_tumor_gt": "tumor volume, reference (mL)",
    "volume_ml_tumor_pred": "tumor volume, prediction (mL)",
}


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table of a `summarize` result (what ``summary.md`` holds).

    Example:
        >>> rows = [{c: 0.5 for c in METRIC_COLUMNS}]
        >>> print(format_table(summarize(rows, "p", "g")).splitlines()[2])
        | KiTS Dice, kidney + masses | `dice_kidney_and_mass` | 0.5000 | 0.5000 | – | 1 |
    """
    lines = [
        "| metric | column | mean | median | std | n |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for column, stats in summary["metrics"].items():
        digits = 1 if column.startswith("volume_ml") else 4
        cells = [_fmt(stats[key], digits) for key in ("mean", "median", "std")]
        name = _TABLE_NAMES.get(column, column)
        lines.append(f"| {name} | `{column}` | {' | '.join(cells)} | {stats['n']} |")
    n = summary["n_cases"]
    for metric, label in (("dice", "Dice"), ("sd", "surface Dice")):
        value = _fmt(summary[f"kits_mean_{metric}"], 4)
        lines.append(
            f"| **KiTS mean {label}** (3 classes) | `kits_mean_{metric}` | {value} | | | {n} |"
        )
    tolerances = ", ".join(f"{k} {v:.3f} mm" for k, v in summary["tolerances_mm"].items())
    missing = summary.get("missing") or []
    scored_empty = (
        f", {len(missing)} of them without a prediction, scored as empty "
        f"(Dice 0 where the reference has the structure): {', '.join(missing)}"
        if missing
        else ""
    )
    lines += [
        "",
        f"{n} case(s){scored_empty}. KiTS metrics are per case in 3D (surface Dice "
        f"tolerances: {tolerances}). Paper *per slice* Dice is the mean over the axial slices "
        "holding the structure in the reference (paper section 5.1); do not compare it with "
        "per-case Dice.",
        "",
        f"Predictions: `{summary['pred_dir']}`; reference: `{summary['gt_dir']}`.",
    ]
    return "\n".join(lines) + "\n"


def evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    workers: int = 2,
    cases: Sequence[str] | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Score the predictions in ``pred_dir`` against their references in ``gt_dir``.

    The cases scored are ``cases`` or, when None, every case with a reference in ``gt_dir``.
    A case without a prediction is refused, unless ``allow_missing``: then it is scored as an
    all-background prediction (Dice 0 where the reference has the structure, as KiTS scores
    a missing case) and listed in ``summary.json``'s ``missing`` and ``per_case.csv``'s
    ``missing`` column. A prediction without a reference is an error when ``cases`` is None,
    and predictions of cases outside ``cases`` are ignored.

    Writes ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_dir``
    (`kidneyseg.formats.eval_dir`), all or nothing: on any error nothing is written.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` label maps (what ``kidneyseg predict`` writes).
        gt_dir: references as ``<case>/aggregated_MAJ_seg.nii.gz``,
            ``<case>/segmentation.nii.gz`` (the KiTS layout) or ``<case>.nii.gz``.
        out_dir: output folder (created; existing files of these names are replaced).
        workers: processes computing cases in parallel.
        cases: the case ids to score (e.g. a split's test set); None for every reference.
        allow_missing: score missing predictions as empty instead of refusing.

    Returns:
        The summary (the content of ``summary.json``).

    Raises:
        KidneysegError: missing folder or reference, no prediction, a case without a
            prediction (unless ``allow_missing``), a prediction not on its reference's grid,
            an unreadable file (the message names it).

    Example:
        >>> summary = evaluate("preds", "kits23/dataset", "eval")  # doctest: +SKIP
        >>> print(format_table(summary))  # doctest: +SKIP
    """
    if workers < 1:
        raise KidneysegError(f"workers must be at least 1 (got {workers})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KidneysegError("output path exists and is not a folder", path=out)
    jobs = match_cases(pred_dir, gt_dir, cases)
    missing = [case for case, pred, _ in jobs if pred is None]
    if missing and not allow_missing:
        subset = "--split/--subset to evaluate a subset, or " if cases is None else ""
        raise KidneysegError(
            f"{len(missing)} of {len(jobs)} case(s) to evaluate have no prediction "
            f"<case>{OUTPUT_SUFFIX} (first: {missing[0]}); pass {subset}"
            "--allow-missing to score missing cases as empty predictions",
            path=pred_dir,
        )
    rows = _run_cases(jobs, workers)
    summary = summarize(rows, pred_dir, gt_dir)
    write_eval_dir(out, rows, summary, format_table(summary))
    return summary
