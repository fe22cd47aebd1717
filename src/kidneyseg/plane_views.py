"""Plane views of a preprocessed folder, cached for training the coronal and sagittal models.

`plane_view` cuts the training and validation cases of ``PREP_DIR`` along a plane
(`kidneyseg.planes.PlaneGrid`: square pixels, square slices padded with air) and writes the
result as a PREP_DIR of its own, ``RUN_DIR/planes/<plane>/``, so `kidneyseg.dataset.
SliceDataset` draws coronal or sagittal slices exactly as it draws axial ones:

* ``cases/<id>/``: ``image.npy`` (int16 HU), ``label.npy`` (uint8), ``slices.npy`` (label
  pixels per plane slice), ``case.json`` (view shape, view spacing, plane, the stamps of the
  source arrays it was made from);
* ``split.json``, ``hu_histogram.npz``: copies, so normalisation is the axial record;
* ``meta.json``: the source's, with each case's view shape and spacing (written last: a
  folder with it is complete);
* ``source.json``: the source folder, the SHA-256 of its ``meta.json`` and every case's
  stamps (size, modification time of ``image.npy`` and ``label.npy``). A re-preprocessed
  source (another ``meta.json``) empties the cache; a changed case is rebuilt on its own.

Test cases are not cut (training never reads them). `plane_regions` reslices the cached
phase-1 regions of ``data.tumor_region=predicted`` (`kidneyseg.regions`, canonical) the same
way, and `prepare_plane_training` does both before a plane model trains.

Example:
    >>> view = plane_view("prep", "run/planes/coronal", "coronal")  # doctest: +SKIP
    >>> open_prep_dir(view).split.train == open_prep_dir("prep").split.train  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.config import Config
from kidneyseg.errors import KidneysegError
from kidneyseg.formats import prep_dir as pd
from kidneyseg.formats import run_dir as rd
from kidneyseg.hardware import resolve_hardware
from kidneyseg.planes import PAD_HU, PlaneGrid, parse_planes
from kidneyseg.regions import (
    SOURCE_FILE,
    predict_kidney_regions,
    region_files,
    regions_complete,
    regions_ready,
)
from kidneyseg.utils import atomic_dir, atomic_path, atomic_write_text

VIEW_FORMAT = "kidneyseg-plane-view"
VIEW_VERSION = 1
_EXTRA_AXIAL_ONLY = (
    "data.extra_cases are axial slices: train the coronal and sagittal models without them "
    "(--set data.planes=axial for the run with extra cases)"
)
#: Voxels of plane slices made at a time (bounded memory on any case size).
_CHUNK_VOXELS = 1 << 24


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _case_ids(prep: pd.PrepDir) -> list[str]:
    return sorted(set(prep.split.train) | set(prep.split.val))


def _source_record(prep: pd.PrepDir, plane: str, case_ids: Sequence[str]) -> dict[str, Any]:
    cases = {}
    for case_id in case_ids:
        image, label, _ = prep.case_files(case_id)
        cases[case_id] = {"image": _stamp(image), "label": _stamp(label)}
    return {
        "format": VIEW_FORMAT,
        "format_version": VIEW_VERSION,
        "plane": plane,
        "prep_dir": str(prep.root.resolve()),
        "meta_sha256": rd.file_sha256(prep.root / pd.META_FILE),
        "cases": cases,
    }


def view_ready(prep_dir: str | Path, out_dir: str | Path, plane: str) -> bool:
    """True when ``out_dir`` holds a complete, current ``plane`` view of ``prep_dir``."""
    prep, out = pd.open_prep_dir(prep_dir), Path(out_dir)
    wanted = _source_record(prep, plane, _case_ids(prep))
    return (out / pd.META_FILE).is_file() and _read_json(out / SOURCE_FILE) == wanted


def _chunks(grid: PlaneGrid) -> list[slice]:
    n, height, width = grid.view_shape
    step = max(1, _CHUNK_VOXELS // max(1, height * width))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


def _write_case(
    prep: pd.PrepDir, case_id: str, plane: str, stamps: dict[str, Any], folder: Path
) -> dict[str, Any]:
    """Cut one case along ``plane`` into ``folder`` (atomically); returns its record."""
    image_path, label_path, _ = prep.case_files(case_id)
    image = np.load(image_path, mmap_mode="r")
    label = np.load(label_path, mmap_mode="r")
    grid = PlaneGrid(plane, tuple(image.shape), prep.spacing_mm(case_id))  # type: ignore[arg-type]
    record = {
        "case_id": case_id,
        "plane": plane,
        "shape": list(grid.view_shape),
        "spacing_mm": list(grid.view_spacing),
        "canonical_shape": list(image.shape),
        "canonical_spacing_mm": list(prep.spacing_mm(case_id)),
        "source_stamp": stamps,
    }
    with atomic_dir(folder) as tmp:
        hu = np.lib.format.open_memmap(tmp / pd.IMAGE_FILE, "w+", np.int16, grid.view_shape)
        lab = np.lib.format.open_memmap(tmp / pd.LABEL_FILE, "w+", np.uint8, grid.view_shape)
        counts = []
        for part in _chunks(grid):
            hu[part] = grid.to_view(image, part, True, PAD_HU, np.int16)
            labels = grid.to_view(label, part, False, 0, np.uint8)
            lab[part] = labels
            counts.append(np.stack([(labels == k).sum(axis=(1, 2)) for k in pd.SLICE_LABELS], 1))
        hu.flush()
        lab.flush()
        del hu, lab
        np.save(tmp / pd.SLICES_FILE, np.concatenate(counts).astype(np.int64))
        text = json.dumps(record, indent=2) + "\n"
        (tmp / pd.CASE_RECORD_FILE).write_text(text, encoding="utf-8")
    return record


def plane_view(
    prep_dir: str | Path, out_dir: str | Path, plane: str, progress: bool = False
) -> Path:
    """Cut the training and validation cases of ``prep_dir`` along ``plane`` into ``out_dir``
    (a PREP_DIR; see the module doc), reusing what a previous call made from the same data.

    Raises:
        KidneysegError: ``prep_dir`` is not a complete preprocessed folder, or a write fails.
    """
    from tqdm import tqdm

    prep, out = pd.open_prep_dir(prep_dir), Path(out_dir)
    ids = _case_ids(prep)
    wanted = _source_record(prep, plane, ids)
    recorded = _read_json(out / SOURCE_FILE) or {}
    if (out / pd.META_FILE).is_file() and recorded == wanted:
        return out
    keys = ("format", "format_version", "plane", "meta_sha256")
    if out.exists() and any(recorded.get(k) != wanted[k] for k in keys):
        shutil.rmtree(out)  # made from other data (or half made before any record): start over
    out.mkdir(parents=True, exist_ok=True)
    (out / pd.META_FILE).unlink(missing_ok=True)  # incomplete until written again, last
    cases: dict[str, Any] = {}
    for case_id in tqdm(ids, desc=f"{plane} view", unit="case", disable=None if progress else True):
        folder = out / pd.CASES_DIR / case_id
        record = _read_json(folder / pd.CASE_RECORD_FILE)
        current = record is not None and record.get("source_stamp") == wanted["cases"][case_id]
        if not current or not all((folder / f).is_file() for f in pd.CASE_FILES[:3]):
            record = _write_case(prep, case_id, plane, wanted["cases"][case_id], folder)
        assert record is not None
        source = prep.meta.get("cases", {}).get(case_id, {})
        cases[case_id] = {**source, "shape": record["shape"], "spacing_mm": record["spacing_mm"]}
    for stale in sorted(set(p.name for p in (out / pd.CASES_DIR).iterdir()) - set(ids)):
        shutil.rmtree(out / pd.CASES_DIR / stale, ignore_errors=True)
    for name in (pd.SPLIT_FILE, pd.HISTOGRAM_FILE):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(prep.root / name, tmp)
    atomic_write_text(out / SOURCE_FILE, json.dumps(wanted, indent=2) + "\n")
    meta = {k: v for k, v in prep.meta.items() if k not in ("format", "format_version")}
    meta["cases"] = cases
    meta["plane_view"] = {"plane": plane, "prep_dir": wanted["prep_dir"]}
    pd.write_meta(out, meta)
    return out


def plane_regions(
    regions_dir: str | Path,
    prep: pd.PrepDir,
    plane: str,
    out_dir: str | Path,
    case_ids: Sequence[str],
) -> Path:
    """Reslice cached canonical phase-1 regions (`kidneyseg.regions`) along ``plane`` into
    ``out_dir``, with the same ``source.json`` (they were made by the same model and
    settings), so the tumor phase's plane model trains on them as the axial one does.

    Raises:
        KidneysegError: ``regions_dir`` lacks a case's region.
    """
    src, out = Path(regions_dir), Path(out_dir)
    if not regions_complete(src, case_ids):
        raise KidneysegError("the predicted kidney regions are incomplete", path=src)
    source = (src / SOURCE_FILE).read_text(encoding="utf-8")
    if (out / SOURCE_FILE).is_file() and (out / SOURCE_FILE).read_text(encoding="utf-8") != source:
        shutil.rmtree(out)  # regions of another phase-1 model
    out.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        if regions_complete(out, [case_id]) and (out / SOURCE_FILE).is_file():
            continue
        region = np.load(region_files(src, case_id)[0], mmap_mode="r")
        grid = PlaneGrid(plane, tuple(region.shape), prep.spacing_mm(case_id))  # type: ignore[arg-type]
        view = grid.to_view(region, slice(None), False, 0, np.uint8)
        region_path, slices_path = region_files(out, case_id)
        with atomic_path(region_path) as tmp, tmp.open("wb") as f:
            np.save(f, view)
        with atomic_path(slices_path) as tmp, tmp.open("wb") as f:
            np.save(f, view.reshape(len(view), -1).sum(axis=1, dtype=np.int64))
    atomic_write_text(out / SOURCE_FILE, source)  # last: the cache is keyed and complete
    return out


def _wait(ready: Any, what: str, path: Path, timeout_s: float = 86400) -> None:
    """Other DDP ranks wait until rank 0 has made ``what``."""
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise KidneysegError(f"timed out waiting for rank 0's {what}", path=path)
        time.sleep(2.0)


def check_planes(cfg: Config, run_dir: str | Path, phase: str, resume: bool) -> tuple[str, ...]:
    """The planes ``data.planes`` asks ``phase`` to train, checked before any is trained.

    Raises:
        KidneysegError: ``data.extra_cases`` with a plane other than axial, or (without
            ``resume``) a plane that already holds a model.
    """
    planes = parse_planes(cfg.data.planes)
    if cfg.data.extra_cases and planes != ("axial",):
        raise KidneysegError(_EXTRA_AXIAL_ONLY)
    for plane in planes if not resume and len(planes) > 1 else ():
        folder = rd.phase_dir(run_dir, phase, plane)
        if any((folder / name).is_file() for name in (rd.RESUME_FILE, rd.BEST_FILE)):
            raise KidneysegError(
                f"already holds a trained {phase} {plane} model; continue with --resume, or "
                "list only the planes still to train in data.planes",
                path=folder,
            )
    return planes


def prepare_plane_training(
    prep_dir: str | Path,
    run_dir: str | Path,
    phase: str,
    plane: str,
    cfg: Config,
    kidney_model: str | Path | None,
    rank0: bool = True,
    progress: bool = False,
) -> Path:
    """The training data of a coronal or sagittal model: the cached plane view of
    ``prep_dir`` (`plane_view`) and, for the tumor phase with ``data.tumor_region =
    predicted``, phase 1's regions (made on the axial cases by ``kidney_model``, as for the
    axial tumor model, then resliced into ``RUN_DIR/tumor_<plane>/regions/``). Rank 0 makes
    them, the other ranks wait. Returns the view folder, to train on as a PREP_DIR.

    Raises:
        KidneysegError: bad inputs (see `check_planes`).
    """
    if cfg.data.extra_cases:
        raise KidneysegError(_EXTRA_AXIAL_ONLY)
    view = rd.plane_view_dir(run_dir, plane)
    if rank0:
        plane_view(prep_dir, view, plane, progress)
    else:
        _wait(lambda: view_ready(prep_dir, view, plane), f"{plane} view", view)
    if phase != "tumor" or cfg.data.tumor_region != "predicted":
        return view
    if kidney_model is None:
        raise KidneysegError("data.tumor_region=predicted needs the phase-1 model")
    prep = pd.open_prep_dir(prep_dir)
    ids = _case_ids(prep)
    canonical = rd.phase_dir(run_dir, "tumor") / rd.REGIONS_DIR
    target = rd.phase_dir(run_dir, "tumor", plane) / rd.REGIONS_DIR
    if rank0:
        device = "cuda" if resolve_hardware(cfg).cuda else "cpu"
        predict_kidney_regions(
            prep, ids, kidney_model, canonical, device=device, settings=cfg.inference
        )
        plane_regions(canonical, prep, plane, target, ids)

    # The tumor model's training (kidneyseg.loaders) must find them ready, or it would
    # predict regions on plane slices with the axial phase-1 model.
    def ready() -> bool:
        return regions_ready(target, ids, kidney_model, cfg.inference)

    if rank0 and not ready():
        raise KidneysegError("resliced regions are not keyed as their source", path=target)
    _wait(ready, f"{plane} regions", target)
    return view
