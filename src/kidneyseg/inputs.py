"""What ``kidneyseg predict`` reads and writes: input discovery, output checks and sharding,
and the `PredictReport` of a run.

`plan_prediction` turns ``INPUT OUTPUT [--shard K/N] [--split/--subset] [--output-format F]``
into a `PredictionPlan` (one `InputCase` per CT: case id, source, DICOM series, target) and
checks that every output can be written, creating nothing, before any model is loaded.

Example:
    >>> plan = plan_prediction("kits21/dataset", "pred", shard="1/4")  # doctest: +SKIP
    >>> plan.collection, plan.cases[0].target  # doctest: +SKIP
    (True, PosixPath('pred/case_00000.nii.gz'))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from kidneyseg.data.kits import IMAGE_NAME, find_cases
from kidneyseg.dicom import DicomSeries, candidate_series, find_dicom_series
from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import IMAGE_SUFFIXES, WRITE_SUFFIXES, case_id_from_path, is_image_file
from kidneyseg.formats.pred_dir import (
    FORMAT_SUFFIXES,
    OUTPUT_FORMATS,
    format_of,
    label_suffix,
    output_path,
    probability_path,
    seg_path,
    stats_document,
    writes_seg,
)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N`` (None stays None).

    Example:
        >>> parse_shard("2/4")
        (2, 4)
    """
    if shard is None:
        return None
    if isinstance(shard, str):
        k_text, sep, n_text = shard.partition("/")
        try:
            k, n = int(k_text), int(n_text)
        except ValueError:
            k = n = 0
        if not sep:
            k = n = 0
    else:
        k, n = (int(v) for v in shard)
    if not (1 <= k <= n):
        raise KidneysegError(
            f"--shard {shard if isinstance(shard, str) else f'{k}/{n}'}: use K/N with "
            "1 <= K <= N, e.g. 1/4 (case i goes to shard i % N + 1)"
        )
    return k, n


def check_writable(path: Path, what: str) -> None:
    """Clear error unless ``path`` could be created: its nearest existing parent is a writable
    folder. Creates nothing, so a bad input found later leaves no trace."""
    if path.is_dir() and what == "output file":
        raise KidneysegError("output is a folder; give a file name such as out.nii.gz", path=path)
    parent = path.parent if what != "output folder" else path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KidneysegError(f"cannot write {what}: {parent} is a file, not a folder", path=path)
    if not os.access(parent, os.W_OK):
        raise KidneysegError(f"cannot write {what}: {parent} is not writable", path=path)


def check_output_file(path: Path, overwrite: bool = True) -> None:
    """Clear error unless ``path`` is a writable file name with a format we write.

    Args:
        path: the output file.
        overwrite: whether an existing file may be replaced; False refuses it (what
            ``kidneyseg predict`` does without ``--overwrite``, as folder mode keeps
            existing outputs).
    """
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise KidneysegError(
            f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}", path=path
        )
    check_writable(path, "output file")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise KidneysegError(
            "output file already exists; pass --overwrite to replace it, or choose another OUTPUT",
            path=path,
        )


@dataclass(frozen=True)
class InputCase:
    """One CT to predict: its case id, its file or DICOM folder, and where the labels go.

    ``series`` picks one series of a DICOM folder that holds several (UID or listing number,
    as ``--series``); None when the folder holds one.
    """

    case_id: str
    source: Path
    target: Path
    series: str | None = None

    @property
    def dicom(self) -> bool:
        """Whether the source is a DICOM folder or file (not an image file)."""
        return not is_image_file(self.source)

    def done(self, output_format: str | None, probabilities: Sequence[str] = ()) -> bool:
        """Whether folder mode finds every output of this case already there.

        ``probabilities``: the outputs whose probability file must be there too
        (``predict --save-probabilities``: ``kidney``, ``tumor`` and, with cysts, ``cyst``).
        """
        paths = [seg_path(self.target)] if writes_seg(output_format, self.dicom) else []
        if output_format != "dicom-seg":
            paths.append(self.target)
        paths += [probability_path(self.target, output) for output in probabilities]
        return all(p.exists() for p in paths)


class FoundInput(NamedTuple):
    """One CT `find_inputs` found: case id, file or DICOM folder, series (None: the only one)."""

    case_id: str
    source: Path
    series: str | None = None


@dataclass(frozen=True)
class PredictionPlan:
    """What `kidneyseg.inference.Predictor.run_plan` will do.

    ``collection`` = folder mode: an error fails one case, not the run.
    """

    cases: list[InputCase]
    collection: bool
    output: Path


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def find_inputs(input_path: str | Path, series: str | None = None) -> tuple[list[FoundInput], bool]:
    """The CTs under ``input_path`` sorted by case id, and whether it is a collection of cases
    (folder mode) rather than one CT.

    * an image file or a DICOM file: one CT;
    * a KiTS folder (``case_*/imaging.nii.gz``, or a repository with ``dataset/``): one case
      per case folder, named by it;
    * a folder whose DICOM files hold one CT series (other objects beside it, such as a SEG or
      an MR series, as `kidneyseg.dicom.read_dicom_series` chooses), or any folder with
      ``series`` given: one CT;
    * a folder of image files (``.nii.gz``, ``.nrrd``, ``.mha`` ...) and/or of DICOM folders,
      or a DICOM folder holding several CT series: one case per image file (named by it) and
      per DICOM series (`dicom_cases`).

    Example:
        >>> find_inputs("kits21/dataset")  # doctest: +SKIP
        ([FoundInput(case_id='case_00000', source=PosixPath('kits21/...'), series=None), ...], True)
    """
    root = Path(input_path)
    if not root.exists():
        raise KidneysegError("no such file or folder", path=root)
    if not root.is_dir():
        return [FoundInput(case_id_from_path(root), root)], False
    images = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
    images = [p for p in images if not _is_hidden(p)]
    if not images:
        kits_root = root / "dataset" if (root / "dataset").is_dir() else root
        if any(p.is_file() for p in kits_root.glob(f"case_*/{IMAGE_NAME}")):
            kits = find_cases(root, require_labels=False)
            return [FoundInput(c.case_id, c.image) for c in kits], True
        if series is not None:
            return [FoundInput(case_id_from_path(root), root)], False
    groups = _dicom_groups(root)
    if not images and (
        not groups or (len(groups) == 1 and len(candidate_series(groups[0][1] or [])) <= 1)
    ):
        return [FoundInput(case_id_from_path(root), root)], False
    found = [FoundInput(case_id_from_path(p), p) for p in images] + dicom_cases(root, groups)
    ids = [f.case_id for f in found]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        clash = [str(f.source.relative_to(root)) for f in found if f.case_id == dupes[0]]
        raise KidneysegError(
            f"several inputs share the case name {dupes[0]!r} ({', '.join(clash)}); keep one "
            "per case or rename one",
            path=root,
        )
    return sorted(found), True


def _dicom_groups(root: Path) -> list[tuple[Path, list[DicomSeries] | None]]:
    """The DICOM series directly in ``root`` and under each of its subfolders (recursively),
    per folder; only folders holding an image series, or a damaged DICOM file (None: reading
    that folder then fails with the file's name, as one case)."""
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    groups: list[tuple[Path, list[DicomSeries] | None]] = []
    for folder in folders:
        try:
            found = find_dicom_series(folder, recursive=folder != root)
        except KidneysegError:
            groups.append((folder, None))
            continue
        if candidate_series(found):
            groups.append((folder, found))
    return groups


def dicom_cases(
    root: Path, groups: list[tuple[Path, list[DicomSeries] | None]]
) -> list[FoundInput]:
    """One case per DICOM series a folder of `_dicom_groups` holds, chosen as
    `kidneyseg.dicom.read_dicom_series` would (CT image series; any image series when none is
    CT, which then fails as not CT). The case is named after its folder (the subfolder of
    ``root``, or ``root`` for files directly in it), plus ``_s<SeriesNumber>`` (or ``_<hash>``
    of the series UID when the numbers are missing or repeat) when that folder holds several.
    """
    found = []
    for folder, listing in groups:
        name = case_id_from_path(folder)
        if listing is None:
            found.append(FoundInput(name, folder))
            continue
        chosen = candidate_series(listing)
        if len(chosen) == 1 and folder != root:
            found.append(FoundInput(name, folder))
            continue
        numbers = [s.number for s in chosen]
        by_number = all(numbers) and len(set(numbers)) == len(numbers)
        for s in chosen:
            suffix = "" if len(chosen) == 1 else f"_s{s.number}" if by_number else _tag(s, root)
            found.append(FoundInput(name + suffix, folder, _selector(s, folder, root, listing)))
    return found


def _tag(series: DicomSeries, root: Path) -> str:
    """``_<8 hex digits>`` of the series UID (of its files' paths when the UID is blank)."""
    key = series.uid or "\n".join(sorted(str(f.relative_to(root)) for f in series.files))
    return "_" + hashlib.sha1(key.encode()).hexdigest()[:8]


def _selector(series: DicomSeries, folder: Path, root: Path, listing: list[DicomSeries]) -> str:
    """What picks ``series`` when `kidneyseg.dicom.read_dicom_series` reads ``folder``: its
    UID, or for a blank UID its number in the folder's listing."""
    if series.uid:
        return series.uid
    if folder == root:  # the listing above was of root's own files; reading root recurses
        try:
            listing = find_dicom_series(root)
        except KidneysegError:
            return "1"  # reading root then fails, naming the damaged file
    index = next(i for i, s in enumerate(listing, 1) if set(series.files) <= set(s.files))
    return str(index)


def plan_prediction(
    input_path: str | Path,
    output: str | Path,
    shard: str | tuple[int, int] | None = None,
    cases: Sequence[str] | None = None,
    overwrite: bool = True,
    series: str | None = None,
    output_format: str | None = None,
) -> PredictionPlan:
    """Match inputs to output files and check the output can be written (creates nothing).

    One CT and an ``OUTPUT`` with a suffix (``.nii.gz``/``.nii``/``.nrrd``/``.mha``) that is
    not an existing folder: that file (its suffix must agree with a label-file
    ``output_format``). Otherwise ``OUTPUT`` is a folder and each case goes to
    ``OUTPUT/<case_id><suffix>``, the suffix per ``output_format``
    (`kidneyseg.formats.pred_dir.label_suffix`: by default the input's own format).
    ``series`` picks one series of a DICOM folder holding several (`find_inputs`).
    With ``cases`` only those case ids (e.g. the test split; an unknown id is an error).
    With ``shard=(K, N)`` only cases ``i`` (0-based, sorted by case id) with ``i % N == K - 1``.
    With ``overwrite=False`` an existing single-file OUTPUT is refused (folder mode skips the
    cases whose output exists instead; that is the predictor's ``skip_existing``).

    Raises:
        KidneysegError: no input, a bad shard or output format, an output that cannot be
            written, would overwrite an input, or (``overwrite=False``) already exists.
    """
    out = Path(output)
    parsed = parse_shard(shard)
    if output_format not in (None, *OUTPUT_FORMATS):
        raise KidneysegError(
            f"unknown output format {output_format!r}; choose {', '.join(OUTPUT_FORMATS)}"
        )
    found, collection = find_inputs(input_path, series)
    as_file = out.name.lower().endswith(IMAGE_SUFFIXES)
    if not collection and out.suffix and not out.is_dir():
        as_file = True  # "labels.png" for one CT is a wrong format, not a folder name
    if as_file and collection:
        raise KidneysegError(
            f"{input_path} holds {len(found)} cases, so OUTPUT must be a folder, not a file",
            path=out,
        )
    if as_file:
        check_output_file(out, overwrite=overwrite)
        _check_single_format(found[0], out, output_format)
        planned = [InputCase(found[0].case_id, found[0].source, out, series)]
    else:
        if out.exists() and not out.is_dir():
            raise KidneysegError(
                "output exists and is not a folder; give a folder, or a file name ending in "
                f"{', '.join(WRITE_SUFFIXES)}",
                path=out,
            )
        check_writable(out, "output folder")
        planned = [
            InputCase(
                f.case_id,
                f.source,
                output_path(out, f.case_id, label_suffix(output_format, f.source)),
                f.series if collection else series,
            )
            for f in found
        ]
    sources = {c.source.resolve() for c in planned}
    clash = next((c for c in planned if c.target.resolve() in sources), None)
    if clash is not None:
        raise KidneysegError(
            "output would overwrite an input image; choose another OUTPUT", path=clash.target
        )
    if cases is not None:
        wanted = set(cases)
        missing = sorted(wanted - {c.case_id for c in planned})
        if missing:
            raise KidneysegError(
                f"{len(missing)} requested case(s) not found in the input: "
                f"{', '.join(missing[:5])}",
                path=input_path,
            )
        planned = [c for c in planned if c.case_id in wanted]
    if parsed is not None:
        k, n = parsed
        planned = [c for i, c in enumerate(planned) if i % n == k - 1]
    return PredictionPlan(planned, collection, out)


def _check_single_format(found: FoundInput, out: Path, output_format: str | None) -> None:
    """One CT to a named file: a label-file format must match the name, and a DICOM SEG needs
    a DICOM input."""
    if output_format in ("dicom-seg", "both") and is_image_file(found.source):
        raise KidneysegError(
            f"--output-format {output_format} needs a DICOM series as input (a DICOM SEG "
            "references its source images)",
            path=found.source,
        )
    if output_format in ("nifti", "nrrd", "mha") and format_of(out) != output_format:
        raise KidneysegError(
            f"--output-format {output_format} does not match the output file's suffix; "
            f"name it *{FORMAT_SUFFIXES[output_format]} or drop --output-format",
            path=out,
        )


@dataclass
class PredictReport:
    """What a `kidneyseg.inference.Predictor.predict_paths` run did.

    Attributes:
        written: label files written in this run.
        skipped: label files that already existed (folder mode resumes).
        failed: ``(case_id, message)`` of each case that could not be predicted.
        stats: ``case_id -> kidneyseg.stats.label_statistics`` of every written or skipped case.
        provenance: the model that predicted (`kidneyseg.formats.pred_dir.provenance`).
        seconds: wall time of the run.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line: counts of predicted, skipped and failed cases, and the time taken."""
        per_case = f" ({self.seconds / len(self.written):.1f} s per case)" if self.written else ""
        return (
            f"{len(self.written)} predicted, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed in {self.seconds:.1f} s{per_case}"
        )

    def stats_json(self) -> dict[str, Any]:
        """The ``--stats`` file's content (`kidneyseg.formats.pred_dir.stats_document`)."""
        return stats_document(self.stats, dict(self.failed), self.provenance)
