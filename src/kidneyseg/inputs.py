"""What ``kidneyseg predict`` reads and writes: input discovery, output checks and sharding,
and the `PredictReport` of a run.

`plan_prediction` turns ``INPUT OUTPUT [--shard K/N] [--split/--subset]`` into a
`PredictionPlan` (one `InputCase` per CT: case id, source, target) and checks that every output
can be written, creating nothing, before any model is loaded.

Example:
    >>> plan = plan_prediction("kits21/dataset", "pred", shard="1/4")  # doctest: +SKIP
    >>> plan.collection, plan.cases[0].target  # doctest: +SKIP
    (True, PosixPath('pred/case_00000.nii.gz'))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kidneyseg.data.kits import IMAGE_NAME, find_cases
from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import IMAGE_SUFFIXES, WRITE_SUFFIXES, case_id_from_path, is_image_file
from kidneyseg.formats.pred_dir import output_path, stats_document


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
    """One CT to predict: its case id, its file or DICOM folder, and where the labels go."""

    case_id: str
    source: Path
    target: Path


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


def find_inputs(input_path: str | Path) -> tuple[list[tuple[str, Path]], bool]:
    """The CTs under ``input_path`` as sorted ``(case_id, source)`` pairs, and whether it is a
    collection of cases (folder mode) rather than one CT.

    * an image file or a DICOM file: one CT;
    * a folder holding image files (``.nii.gz``, ``.nrrd``, ``.mha`` ...): one case per file;
    * a KiTS folder (``case_*/imaging.nii.gz``, or a repository with ``dataset/``): one case
      per case folder, named by it;
    * any other folder: one DICOM series (`kidneyseg.dicom.read_dicom_series` finds it).

    Example:
        >>> find_inputs("kits21/dataset")  # doctest: +SKIP
        ([('case_00000', PosixPath('kits21/dataset/case_00000/imaging.nii.gz')), ...], True)
    """
    root = Path(input_path)
    if not root.exists():
        raise KidneysegError("no such file or folder", path=root)
    if not root.is_dir():
        return [(case_id_from_path(root), root)], False
    files = sorted(p for p in root.iterdir() if p.is_file() and not _is_hidden(p))
    images = [p for p in files if is_image_file(p)]
    if images:
        pairs = sorted((case_id_from_path(p), p) for p in images)
        ids = [c for c, _ in pairs]
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        if dupes:
            raise KidneysegError(
                f"several images share the case name {dupes[0]!r} (e.g. .nii and .nii.gz); "
                "keep one per case",
                path=root,
            )
        return pairs, True
    kits_root = root / "dataset" if (root / "dataset").is_dir() else root
    if any(p.is_file() for p in kits_root.glob(f"case_*/{IMAGE_NAME}")):
        return [(c.case_id, c.image) for c in find_cases(root, require_labels=False)], True
    return [(case_id_from_path(root), root)], False


def plan_prediction(
    input_path: str | Path,
    output: str | Path,
    shard: str | tuple[int, int] | None = None,
    cases: Sequence[str] | None = None,
    overwrite: bool = True,
) -> PredictionPlan:
    """Match inputs to output files and check the output can be written (creates nothing).

    One CT and an ``OUTPUT`` with a suffix (``.nii.gz``/``.nii``/``.nrrd``/``.mha``) that is
    not an existing folder: that file. Otherwise ``OUTPUT`` is a folder and each case goes to
    ``OUTPUT/<case_id>.nii.gz``.
    With ``cases`` only those case ids (e.g. the test split; an unknown id is an error).
    With ``shard=(K, N)`` only cases ``i`` (0-based, sorted by case id) with ``i % N == K - 1``.
    With ``overwrite=False`` an existing single-file OUTPUT is refused (folder mode skips the
    cases whose output exists instead; that is the predictor's ``skip_existing``).

    Raises:
        KidneysegError: no input, a bad shard, an output that cannot be written, would
            overwrite an input, or (``overwrite=False``) already exists.
    """
    out = Path(output)
    parsed = parse_shard(shard)
    pairs, collection = find_inputs(input_path)
    as_file = out.name.lower().endswith(IMAGE_SUFFIXES)
    if not collection and out.suffix and not out.is_dir():
        as_file = True  # "labels.png" for one CT is a wrong format, not a folder name
    if as_file and collection:
        raise KidneysegError(
            f"{input_path} holds {len(pairs)} cases, so OUTPUT must be a folder, not a file",
            path=out,
        )
    if as_file:
        check_output_file(out, overwrite=overwrite)
        planned = [InputCase(pairs[0][0], pairs[0][1], out)]
    else:
        if out.exists() and not out.is_dir():
            raise KidneysegError(
                "output exists and is not a folder; give a folder, or a file name ending in "
                f"{', '.join(WRITE_SUFFIXES)}",
                path=out,
            )
        check_writable(out, "output folder")
        planned = [InputCase(c, src, output_path(out, c)) for c, src in pairs]
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
