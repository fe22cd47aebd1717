"""Preprocessing: KiTS-layout 3D cases -> the folder 2D training reads (``PREP_DIR``).

Per case (see ``docs/formats.md``): HU as int16 and labels as uint8 in the canonical
``(z, y, x)`` orientation, a slice index (kidney / tumor / cyst pixels per axial slice), the
original geometry (``case.json``) and the case's 1-HU histograms (``hist.npz``). For the whole
folder: the patient-level split (``split.json``), HU histograms of the *training* cases only
(``hu_histogram.npz``) and ``meta.json`` with each phase's normalisation statistics.

* **Resumable.** A case folder is written under a temporary name and renamed when complete, so an
  existing ``cases/<id>/`` is always complete; a rerun skips it unless its source files changed
  (size or modification time). Statistics are rebuilt from the per-case histograms, so changing
  the split or the windows never re-reads the images.
* **Parallel.** Cases run in ``workers`` spawned processes; the first error stops the run with its
  message, and cases already finished stay valid. (As with any spawned multiprocessing, a script
  that calls `preprocess` with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard.)
* **Checks.** Each case's label map must lie on its image's grid and hold ids 0-3; the image must
  be finite and look like CT in HU (`kidneyseg.io.check_hounsfield`, the rule predict applies
  too); every error is one line naming the file.
* **Completion marker.** ``meta.json`` is removed once the inputs are validated and written last,
  so a folder with ``meta.json`` is complete and consistent.

Example:
    >>> from kidneyseg.config import Config
    >>> summary = preprocess("kits21/dataset", "prep", Config(), workers=4)  # doctest: +SKIP
    >>> len(summary.split.train), summary.normalization["kidney"].window  # doctest: +SKIP
    (240, (0.0, 200.0))
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.config import Config, config_to_dict
from kidneyseg.data.kits import KitsCase, find_cases
from kidneyseg.errors import KidneysegError
from kidneyseg.formats import prep_dir as pd
from kidneyseg.formats.prep_dir import Split, read_split_file
from kidneyseg.io import check_hounsfield, read_image, read_labels
from kidneyseg.normalization import (
    HIST_BINS,
    NormalizationRecord,
    hu_histogram,
    phase_normalization,
)
from kidneyseg.splitting import make_split
from kidneyseg.types import Volume
from kidneyseg.utils import (
    atomic_dir,
    atomic_path,
    check_writable_dir,
    package_version,
    process_pool,
)

_INT16 = np.iinfo(np.int16)
# Block edge (voxels) of the copies and histograms: temporaries stay a few MB per worker instead
# of whole-volume copies of a 512x512x1000 CT, and blocks stay in cache.
_BLOCK = 32


@dataclass(frozen=True)
class PrepSummary:
    """What a `preprocess` run did.

    Attributes:
        prep_dir: the output folder.
        split: the patient-level split written to ``split.json``.
        processed: cases read and written by this run.
        skipped: cases already complete from an earlier run.
        normalization: ``{"kidney": record, "tumor": record}`` as stored in ``meta.json``.
        seconds: wall time of the run.
        input_bytes: size on disk (compressed) of the processed cases' image + label files.
        voxels: voxels of the processed cases' images.
    """

    prep_dir: Path
    split: Split
    processed: tuple[str, ...]
    skipped: tuple[str, ...]
    normalization: dict[str, NormalizationRecord]
    seconds: float
    input_bytes: int
    voxels: int


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _blocks(shape: tuple[int, ...], tile_x: bool) -> Iterator[tuple[slice, slice, slice]]:
    step_x = _BLOCK if tile_x else max(shape[2], 1)
    for z0 in range(0, shape[0], _BLOCK):
        for x0 in range(0, shape[2], step_x):
            yield slice(z0, z0 + _BLOCK), slice(None), slice(x0, x0 + step_x)


def to_c_order(
    view: npt.NDArray[Any], dtype: npt.DTypeLike, convert: Any = None
) -> npt.NDArray[Any]:
    """A C-contiguous ``dtype`` copy of ``view`` (``view`` itself when it already is one).

    Copies block by block: the canonical view of a KiTS file (axial axis first in the file, so
    last in SimpleITK's memory) is a full 3D transpose, and 32x32 (z, x) tiles keep source and
    destination in cache (about 1.5x faster than one numpy copy). ``convert`` maps each block
    (e.g. rounding and clipping) before it is cast to ``dtype``.
    """
    if view.dtype == dtype and view.flags.c_contiguous and convert is None:
        return view
    out = np.empty(view.shape, dtype)
    # Tile along x only when x is not already the fastest axis of the source.
    tile_x = view.ndim == 3 and abs(view.strides[2]) != min(abs(s) for s in view.strides)
    for block in _blocks(view.shape, tile_x):
        out[block] = view[block] if convert is None else convert(view[block])
    return out


def _convert(
    image: npt.NDArray[Any], labels: npt.NDArray[np.uint8], lo: float, hi: float
) -> tuple[npt.NDArray[np.int16], dict[str, npt.NDArray[np.int64]]]:
    """Canonical view -> C-contiguous int16 HU (rounded, clipped), plus the case's histograms."""
    floating = np.issubdtype(image.dtype, np.floating)
    needs_clip = lo < _INT16.min or hi > _INT16.max

    def to_int16_range(block: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if floating:
            block = np.rint(block)
        if needs_clip:
            block = np.clip(block.astype(np.float64 if floating else np.int64), -32768, 32767)
        return block

    hu = to_c_order(image, np.int16, to_int16_range if floating or needs_clip else None)
    hist_all = np.zeros(HIST_BINS, np.int64)
    hist_region = np.zeros(HIST_BINS, np.int64)
    # Slabs: the histogram temporaries stay small and in cache.
    for z0 in range(0, hu.shape[0], _BLOCK):
        slab = hu[z0 : z0 + _BLOCK]
        hist_all += hu_histogram(slab)
        region = labels[z0 : z0 + _BLOCK] > 0
        if region.any():
            hist_region += hu_histogram(slab[region])
    return hu, {"all": hist_all, "kidney_region": hist_region}


def _case_record(case: KitsCase, image: Volume, shape: tuple[int, ...]) -> dict[str, Any]:
    """The ``case.json`` record (`process_case` adds ``hu_range`` and ``label_voxels``).

    ``shape``/``spacing_mm`` are canonical ``(z, y, x)``; ``original`` is the source file's grid:
    ``shape``/``spacing`` in its index order, ``origin`` (LPS mm), ``direction`` (row-major 3x3,
    column c = LPS direction of index axis c, as `Volume.direction`) and ``axcodes``;
    `kidneyseg.formats.prep_dir.restore_geometry` uses it to put a canonical array back on that
    grid. ``source_stamp`` (size, mtime in ns of each source file) tells a rerun whether the case
    is still current.
    """
    assert case.label is not None
    return {
        "case_id": case.case_id,
        "shape": [int(n) for n in shape],
        "spacing_mm": list(image.canonical_spacing),
        "source_image": str(case.image.resolve()),
        "source_label": str(case.label.resolve()),
        "source_stamp": {"image": _stamp(case.image), "label": _stamp(case.label)},
        "original": {
            "shape": list(image.shape),
            "spacing": list(image.spacing),
            "origin": list(image.origin),
            "direction": [list(row) for row in image.direction_matrix.tolist()],
            "axcodes": list(image.axcodes),
            "dtype": str(image.array.dtype),
        },
    }


def process_case(case: KitsCase, cases_dir: str | Path) -> dict[str, Any]:
    """Read one case, check it, and write ``cases_dir/<case_id>/`` atomically.

    Returns:
        The case's ``case.json`` record.

    Raises:
        KidneysegError: unreadable file, NaN/inf, labels outside 0-3, label grid that differs
            from the image's, an image that is not CT in HU, or a write failure (names the file).
    """
    if case.label is None:
        raise KidneysegError("case has no label file", path=case.image.parent)
    image = read_image(case.image)
    labels = read_labels(case.label, like=image)
    raw = image.array
    check_hounsfield(raw, case.image)
    lo, hi = float(raw.min()), float(raw.max())
    # Contiguous canonical arrays: np.save then writes them in one go, and the dataset's
    # memory-mapped reads of one axial slice touch one contiguous block.
    lab = to_c_order(labels.to_canonical(), np.uint8)
    hu, hists = _convert(image.to_canonical(), lab, lo, hi)
    slices = np.stack([np.count_nonzero(lab == k, axis=(1, 2)) for k in pd.SLICE_LABELS], axis=1)
    record = _case_record(case, image, hu.shape)
    record["hu_range"] = [lo, hi]
    record["label_voxels"] = {
        name: int(n) for name, n in zip(("kidney", "tumor", "cyst"), slices.sum(0), strict=True)
    }
    final = Path(cases_dir) / case.case_id
    try:
        with atomic_dir(final) as tmp:
            np.save(tmp / pd.IMAGE_FILE, hu)
            np.save(tmp / pd.LABEL_FILE, lab)
            np.save(tmp / pd.SLICES_FILE, slices.astype(np.int64, copy=False))
            np.savez(
                tmp / pd.CASE_HISTOGRAM_FILE, all=hists["all"], kidney_region=hists["kidney_region"]
            )
            text = json.dumps(record, indent=2) + "\n"
            (tmp / pd.CASE_RECORD_FILE).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise KidneysegError(f"cannot write preprocessed case: {exc}", path=final) from exc
    return record


def _done_record(case: KitsCase, cases_dir: Path) -> dict[str, Any] | None:
    """The record of a complete case folder whose sources are unchanged, else None."""
    folder = cases_dir / case.case_id
    if not all((folder / name).is_file() for name in pd.CASE_FILES) or case.label is None:
        return None
    try:
        record = json.loads((folder / pd.CASE_RECORD_FILE).read_text(encoding="utf-8"))
        stamp = record["source_stamp"]
        if stamp["image"] != _stamp(case.image) or stamp["label"] != _stamp(case.label):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record  # type: ignore[no-any-return]


def _run_cases(
    todo: list[KitsCase], cases_dir: Path, workers: int, progress: bool
) -> Iterator[dict[str, Any]]:
    """Process cases (in ``workers`` processes); the first error stops the run."""
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal.
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=None if progress else True)
    with bar:
        if workers <= 1:
            for case in todo:
                bar.set_postfix_str(case.case_id)
                yield process_case(case, cases_dir)
                bar.update()
            return
        with process_pool(workers) as pool:
            pending = {pool.submit(process_case, case, cases_dir): case for case in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    case = pending.pop(future)
                    error = future.exception()
                    if error is not None:
                        # Cases already running finish (and stay valid); queued ones never start.
                        pool.shutdown(wait=True, cancel_futures=True)
                        if isinstance(error, BrokenProcessPool):
                            raise KidneysegError(
                                "a worker process died (out of memory? try fewer --workers)",
                                path=case.image.parent,
                            ) from error
                        raise error
                    bar.set_postfix_str(case.case_id)
                    yield future.result()
                    bar.update()


def _training_histograms(cases_dir: Path, train: Sequence[str]) -> dict[str, np.ndarray]:
    total = {key: np.zeros(HIST_BINS, np.int64) for key in pd.HISTOGRAM_KEYS}
    for case_id in train:
        with np.load(cases_dir / case_id / pd.CASE_HISTOGRAM_FILE) as hist:
            for key in total:
                total[key] += hist[key]
    return total


def preprocess(
    data_dir: str | Path,
    prep_dir: str | Path,
    cfg: Config | None = None,
    split_file: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PrepSummary:
    """Preprocess every case of a KiTS-layout folder into ``prep_dir`` (``docs/formats.md``).

    Args:
        data_dir: folder of ``case_*/`` folders (`kidneyseg.data.kits.find_cases`).
        prep_dir: output folder; complete cases from an earlier run are kept and skipped.
        cfg: configuration; uses ``preprocess.split``/``seed``/``workers`` and the phase windows
            ``data.kidney_window`` and ``data.tumor_window``.
        split_file: a JSON split (``train``/``val``/``test`` lists) to use instead of a random one.
        workers: parallel processes (default ``cfg.preprocess.workers``).
        progress: show a progress bar (on a terminal).

    Returns:
        A `PrepSummary`.

    Raises:
        KidneysegError: no cases, a bad split file, or a bad case (names the file).

    Example:
        >>> s = preprocess("data", "prep", workers=2)  # doctest: +SKIP
        >>> s.processed[:1], s.split.val  # doctest: +SKIP
        (('case_00000',), ('case_00007',))
    """
    cfg = cfg or Config()
    start = time.perf_counter()
    cases = find_cases(data_dir)
    ids = [c.case_id for c in cases]
    if split_file is not None:
        split = read_split_file(split_file, ids)
    else:
        split = make_split(ids, cfg.preprocess.split, cfg.preprocess.seed)
    n_workers = cfg.preprocess.workers if workers is None else workers
    if n_workers < 1:
        raise KidneysegError(f"workers must be >= 1 (got {n_workers})")

    prep = check_writable_dir(prep_dir)
    # From here on the folder changes: drop the completion marker until it is consistent again.
    (prep / pd.META_FILE).unlink(missing_ok=True)
    cases_dir = prep / pd.CASES_DIR
    cases_dir.mkdir(exist_ok=True)
    for leftover in cases_dir.glob(".*.tmp"):  # temp folders of an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        record = _done_record(case, cases_dir)
        if record is None:
            todo.append(case)
        else:
            records[case.case_id] = record
    skipped = tuple(sorted(records))
    for record in _run_cases(todo, cases_dir, min(n_workers, max(len(todo), 1)), progress):
        records[record["case_id"]] = record

    hists = _training_histograms(cases_dir, split.train)
    if hists["kidney_region"].sum() == 0:
        raise KidneysegError(
            "the training cases hold no kidney-region voxels (labels 1-3); the tumor phase "
            "needs some to compute its normalisation",
            path=Path(data_dir),
        )
    normalization = {
        "kidney": phase_normalization(hists, "kidney", cfg.data.kidney_window),
        "tumor": phase_normalization(hists, "tumor", cfg.data.tumor_window),
    }
    with atomic_path(prep / pd.HISTOGRAM_FILE) as tmp:
        np.savez(tmp, all=hists["all"], kidney_region=hists["kidney_region"])
    pd.write_split(prep, split)
    meta = {
        "kidneyseg_version": package_version(),
        "config": config_to_dict(cfg),
        "cases": {
            cid: {
                k: records[cid][k] for k in ("shape", "spacing_mm", "source_image", "source_label")
            }
            for cid in ids
        },
        "normalization": {phase: record.to_dict() for phase, record in normalization.items()},
    }
    pd.write_meta(prep, meta)

    processed = tuple(c.case_id for c in todo)
    return PrepSummary(
        prep_dir=prep,
        split=split,
        processed=processed,
        skipped=skipped,
        normalization=normalization,
        seconds=time.perf_counter() - start,
        input_bytes=sum(
            int(records[c]["source_stamp"]["image"][0] + records[c]["source_stamp"]["label"][0])
            for c in processed
        ),
        voxels=sum(int(np.prod(records[c]["shape"])) for c in processed),
    )
