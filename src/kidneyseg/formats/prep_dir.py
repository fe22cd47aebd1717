"""The preprocessed folder ``PREP_DIR``: names, format version, readers and writers.

Layout (docs/formats.md "Preprocessed folder")::

    PREP_DIR/meta.json          completion marker + config, cases, normalisation records
    PREP_DIR/split.json         the patient-level split (`Split`)
    PREP_DIR/hu_histogram.npz   1-HU histograms of the training split ("all", "kidney_region")
    PREP_DIR/cases/<case_id>/   image.npy, label.npy, slices.npy, hist.npz, case.json

Arrays are canonical ``(z, y, x)`` (`kidneyseg.types`). `open_prep_dir` is the one reader the
training side uses; `read_split` the one reader of a ``split.json``.

Example:
    >>> s = Split(train=("a", "b"), val=("c",), test=())
    >>> parse_split(s.to_json(), "split.json").train
    ('a', 'b')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.errors import KidneysegError
from kidneyseg.normalization import HIST_BINS, NormalizationRecord, phase_normalization
from kidneyseg.types import CYST, KIDNEY, TUMOR, Volume
from kidneyseg.utils import atomic_write_text

FORMAT = "kidneyseg-prep"
FORMAT_VERSION = 1

META_FILE = "meta.json"
SPLIT_FILE = "split.json"
HISTOGRAM_FILE = "hu_histogram.npz"
CASES_DIR = "cases"
#: Keys of the histogram files (per case ``hist.npz`` and the folder's ``hu_histogram.npz``).
HISTOGRAM_KEYS = ("all", "kidney_region")

IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
SLICES_FILE = "slices.npy"
CASE_HISTOGRAM_FILE = "hist.npz"
CASE_RECORD_FILE = "case.json"
#: Files of a complete case folder.
CASE_FILES = (IMAGE_FILE, LABEL_FILE, SLICES_FILE, CASE_HISTOGRAM_FILE, CASE_RECORD_FILE)
#: Label ids counted per axial slice in ``slices.npy`` (column order).
SLICE_LABELS = (KIDNEY, TUMOR, CYST)
SPLIT_NAMES = ("train", "val", "test")

_HINT = "run `kidneyseg preprocess DATA_DIR PREP_DIR` to create one"


# --------------------------------------------------------------------------- split.json


@dataclass(frozen=True)
class Split:
    """A patient-level split: case ids of each set (sorted), and how it was made.

    Attributes:
        train, val, test: case ids.
        seed: seed of a random split; ``None`` for a split read from a file.
        fractions: requested fractions (random split) or the actual ones (split file).
        source: the split file it came from, if any.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    source: str | None = None

    def subset(self, name: str) -> tuple[str, ...]:
        """The case ids of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in SPLIT_NAMES:
            raise KidneysegError(f"unknown subset {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return tuple(getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        """The ``split.json`` payload."""
        out: dict[str, Any] = {"seed": self.seed, "fractions": list(self.fractions)}
        if self.source is not None:
            out["source"] = self.source
        out.update(train=list(self.train), val=list(self.val), test=list(self.test))
        return out


def parse_split(data: Any, path: str | Path) -> Split:
    """Check the structure of a split payload (lists ``train``, ``val``, ``test`` of case ids).

    Raises:
        KidneysegError: not an object with the three lists of strings (names ``path``).
    """
    if not isinstance(data, dict) or any(
        not isinstance(data.get(k), list) or not all(isinstance(c, str) for c in data[k])
        for k in SPLIT_NAMES
    ):
        raise KidneysegError(
            'split file must be a JSON object with lists of case ids "train", "val", "test"',
            path=path,
        )
    seed = data.get("seed")
    fractions = data.get("fractions") or (0.8, 0.1, 0.1)
    try:
        fr = (float(fractions[0]), float(fractions[1]), float(fractions[2]))
    except (TypeError, ValueError, IndexError) as exc:
        raise KidneysegError(f"split file: bad fractions {fractions!r}", path=path) from exc
    return Split(
        train=tuple(data["train"]),
        val=tuple(data["val"]),
        test=tuple(data["test"]),
        seed=seed if isinstance(seed, int) else None,
        fractions=fr,
        source=data.get("source") if isinstance(data.get("source"), str) else None,
    )


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, with a one-line error naming the file and what it is."""
    if not path.is_file():
        raise KidneysegError(f"missing {path.name} ({what}); {_HINT}", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KidneysegError(f"cannot read {path.name}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise KidneysegError(f"{path.name} must hold a JSON object", path=path)
    return data


def read_split(path: str | Path) -> Split:
    """Read a ``split.json`` (a PREP_DIR's, or a file in that format).

    Example:
        >>> read_split("prep/split.json").test  # doctest: +SKIP
        ('case_00003', 'case_00017')
    """
    p = Path(path)
    if not p.is_file():
        raise KidneysegError("split file not found", path=p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KidneysegError(f"cannot parse split file as JSON: {exc}", path=p) from exc
    return parse_split(data, p)


def read_split_file(path: str | Path, case_ids: Sequence[str]) -> Split:
    """Read a user split and check it against the cases of a data folder.

    Every case of ``case_ids`` must be in exactly one set, and every listed case must be one of
    ``case_ids``; other keys of the file are ignored.

    Raises:
        KidneysegError: missing or unparsable file, wrong structure, a case in two sets, an
            unknown case, a case in no set, or an empty training set (names the file and case).
    """
    p = Path(path)
    raw = read_split(p)
    known = set(case_ids)
    where: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for case in raw.subset(name):
            if case in where:
                raise KidneysegError(
                    f"case {case} is listed in both {where[case]} and {name}"
                    if where[case] != name
                    else f"case {case} is listed twice in {name}",
                    path=p,
                )
            if case not in known:
                raise KidneysegError(f"case {case} is not in the data folder", path=p)
            where[case] = name
    missing = sorted(known - set(where))
    if missing:
        raise KidneysegError(
            f"case {missing[0]} of the data folder is in no set ({len(missing)} unlisted); "
            "list every case in train, val or test",
            path=p,
        )
    if not raw.train:
        raise KidneysegError("the training set is empty", path=p)
    n = len(where)
    sizes = [round(len(raw.subset(k)) / n, 6) for k in SPLIT_NAMES]
    return Split(
        train=tuple(sorted(raw.train)),
        val=tuple(sorted(raw.val)),
        test=tuple(sorted(raw.test)),
        seed=None,
        fractions=(sizes[0], sizes[1], sizes[2]),
        source=str(p.resolve()),
    )


def write_split(prep: Path, split: Split) -> None:
    """Write ``PREP_DIR/split.json`` atomically."""
    atomic_write_text(prep / SPLIT_FILE, json.dumps(split.to_json(), indent=2) + "\n")


# --------------------------------------------------------------------------- case folders


def case_files(root: Path, case_id: str) -> tuple[Path, Path, Path]:
    """``(image.npy, label.npy, slices.npy)`` of one case, checked to exist."""
    d = root / CASES_DIR / case_id
    files = (d / IMAGE_FILE, d / LABEL_FILE, d / SLICES_FILE)
    for f in files:
        if not f.is_file():
            raise KidneysegError(
                f"case {case_id!r} of {SPLIT_FILE} is incomplete (no {f.name}); "
                "re-run kidneyseg preprocess",
                path=f,
            )
    return files


def restore_geometry(record: Mapping[str, Any], canonical: npt.NDArray[Any]) -> Volume:
    """A canonical ``(z, y, x)`` array of a case, back on its source file's exact grid.

    ``record`` is the case's ``case.json`` (its ``original`` entry holds the source grid).

    Example:
        >>> case = Path("prep/cases/case_00000")
        >>> record = json.loads((case / "case.json").read_text(encoding="utf-8"))  # doctest: +SKIP
        >>> labels = restore_geometry(record, np.load(case / "label.npy"))  # doctest: +SKIP
    """
    orig = record["original"]
    direction = tuple(tuple(float(v) for v in row) for row in orig["direction"])
    empty = Volume(
        np.empty(orig["shape"], np.uint8),
        tuple(orig["spacing"]),  # type: ignore[arg-type]
        tuple(orig["origin"]),  # type: ignore[arg-type]
        direction,
        record.get("case_id", ""),
    )
    return empty.from_canonical(canonical)


# --------------------------------------------------------------------------- the folder


def write_meta(prep: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` (the completion marker: written last) with the format stamp."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    atomic_write_text(prep / META_FILE, json.dumps(payload, indent=2) + "\n")


@dataclass(frozen=True)
class PrepDir:
    """A validated preprocessed folder: its metadata, split and HU histograms.

    Example:
        >>> prep = open_prep_dir("prep")  # doctest: +SKIP
        >>> prep.split.train[:2], prep.case_dir("case_00000").name  # doctest: +SKIP
        (('case_00000', 'case_00003'), 'case_00000')
    """

    root: Path
    meta: dict[str, Any]
    split: Split
    histograms: dict[str, npt.NDArray[np.int64]]

    def case_dir(self, case_id: str) -> Path:
        return self.root / CASES_DIR / case_id

    def case_files(self, case_id: str) -> tuple[Path, Path, Path]:
        """``(image.npy, label.npy, slices.npy)`` of one case, checked to exist."""
        return case_files(self.root, case_id)

    def spacing_mm(self, case_id: str) -> tuple[float, float, float]:
        """Canonical ``(z, y, x)`` spacing of a case from ``meta.json`` (1 mm if unknown)."""
        spacing = self.meta.get("cases", {}).get(case_id, {}).get("spacing_mm", (1.0, 1.0, 1.0))
        return (float(spacing[0]), float(spacing[1]), float(spacing[2]))

    def hu_range(self, case_id: str) -> tuple[float, float]:
        """The HU range ``(min, max)`` of a case's source image (from its ``case.json``)."""
        path = self.case_dir(case_id) / CASE_RECORD_FILE
        record = read_json(path, "the case record")
        try:
            lo, hi = record["hu_range"]
            return float(lo), float(hi)
        except (KeyError, TypeError, ValueError) as exc:
            raise KidneysegError(f"{CASE_RECORD_FILE} has no valid hu_range", path=path) from exc

    def normalization(
        self, phase: str, window: tuple[float, float] | None, scaling: str = "zscore"
    ) -> NormalizationRecord:
        """The phase's record for ``window``: the one ``meta.json`` stores (z-score) when its
        window is the same, else computed from the training histograms (a window ablation
        needs no re-preprocessing); ``scaling="window"`` maps the window onto [0, 1].

        Raises:
            KidneysegError: the training split has no voxels for this phase's statistics.
        """
        stored = self.meta.get("normalization", {}).get(phase)
        want = None if window is None else (float(window[0]), float(window[1]))
        if stored is not None and scaling == "zscore":
            try:
                record = NormalizationRecord.from_dict(stored)
            except ValueError as exc:
                raise KidneysegError(str(exc), path=self.root / META_FILE) from exc
            if record.phase == phase and record.window == want:
                return record
        try:
            return phase_normalization(self.histograms, phase, want, scaling)
        except ValueError as exc:
            what = "voxels" if phase == "kidney" else "voxels inside the kidney region"
            raise KidneysegError(
                f"{HISTOGRAM_FILE}: no {phase}-phase statistics: the training split "
                f"has no {what} (the tumor phase trains on slices with kidney)",
                path=self.root / HISTOGRAM_FILE,
            ) from exc


def open_prep_dir(path: str | Path) -> PrepDir:
    """Read and check ``meta.json``, ``split.json`` and ``hu_histogram.npz`` of a PREP_DIR.

    Raises:
        KidneysegError: the folder is not a complete preprocessed folder (says what is missing).
    """
    root = Path(path)
    if not root.is_dir():
        raise KidneysegError(f"preprocessed folder not found; {_HINT}", path=root)
    if not (root / META_FILE).is_file():
        raise KidneysegError(f"not a preprocessed folder (no {META_FILE}); {_HINT}", path=root)
    meta = read_json(root / META_FILE, "preprocessing metadata")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise KidneysegError(
            f"{META_FILE} is format {meta.get('format')!r} v{meta.get('format_version')}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}; re-run kidneyseg preprocess",
            path=root / META_FILE,
        )
    split = parse_split(read_json(root / SPLIT_FILE, "the patient-level split"), root / SPLIT_FILE)
    hist_path = root / HISTOGRAM_FILE
    if not hist_path.is_file():
        raise KidneysegError(f"missing {HISTOGRAM_FILE}; {_HINT}", path=hist_path)
    try:
        with np.load(hist_path) as npz:
            histograms = {k: np.asarray(npz[k], np.int64) for k in HISTOGRAM_KEYS}
    except (OSError, ValueError, KeyError) as exc:
        raise KidneysegError(f"cannot read HU histograms ({exc})", path=hist_path) from exc
    for key, counts in histograms.items():
        if counts.shape != (HIST_BINS,):
            raise KidneysegError(
                f"histogram {key!r} has shape {counts.shape}, expected ({HIST_BINS},)",
                path=hist_path,
            )
    return PrepDir(root, meta, split, histograms)
