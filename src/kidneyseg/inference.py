"""Running the two-phase cascade on whole CT volumes (paper §3).

`Predictor` loads ``RUN_DIR/kidney/best.safetensors`` and ``RUN_DIR/tumor/best.safetensors``
(docs/formats.md "Model folder") and, for one volume:

1. phase 1 on every canonical axial slice: HU normalised with the kidney checkpoint's record,
   resized to its ``data.image_size``, batched, logits resized back to the slice and
   thresholded at ``inference.threshold`` -> kidney region (kidney incl. masses);
2. phase 2 on CT x region, *only* on slices where the region is non-empty (most slices of an
   abdominal CT hold no kidney, so this roughly halves the time) -> tumor;
3. `kidneyseg.postprocessing.postprocess` -> uint8 labels 0/1/2, put back into the input's
   exact geometry.

`predict` (the ``kidneyseg predict`` command) runs it over a file, a DICOM series folder or a
folder of cases, skipping cases already done, and optionally writes label statistics.

Example:
    >>> from kidneyseg.inference import Predictor
    >>> from kidneyseg.io import read_image
    >>> predictor = Predictor("runs/paper", device="cpu")  # doctest: +SKIP
    >>> labels = predictor.predict_volume(read_image("ct.nii.gz"))  # doctest: +SKIP
    >>> labels.same_geometry(read_image("ct.nii.gz")), labels.array.dtype  # doctest: +SKIP
    (True, dtype('uint8'))
    >>> report = predictor.predict_paths("kits21/dataset", "preds/", shard="1/4")  # doctest: +SKIP
    >>> report.summary()  # doctest: +SKIP
    '75 predicted, 0 skipped (already done), 0 failed in 1203.4 s'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from kidneyseg.config import Config, config_to_dict, resolve_config
from kidneyseg.errors import KidneysegError
from kidneyseg.types import KIDNEY, TUMOR, Volume

#: The checkpoint of each phase that prediction uses, inside ``RUN_DIR/<phase>/``.
MODEL_FILE = "best.safetensors"
#: Settings that may change at prediction time; the rest must match what the models learnt.
PREDICT_SECTIONS = ("inference", "postprocess")
#: Suffix of the label maps written in folder mode.
OUTPUT_SUFFIX = ".nii.gz"


# --------------------------------------------------------------------------- checks


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for a ``--device`` value: ``auto`` (CUDA if present, else CPU), ``cpu``,
    ``cuda``, ``cuda:1``, ``mps``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise KidneysegError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KidneysegError(f"device {device!r}: no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise KidneysegError(f"device {device!r}: MPS is not available; use --device cpu")
    return dev


def check_hounsfield(array: npt.NDArray[Any], source: str | Path | None = None) -> None:
    """Raise a clear error when an image's values are clearly not CT in Hounsfield units.

    CT holds air (about -1000 HU) to bone (hundreds to thousands of HU). Refused: values in
    about [0, 1] (a normalised image or a mask), label maps (values 0-3), and any image whose
    values span less than 100 HU (standardised or constant).

    Example:
        >>> import numpy as np
        >>> check_hounsfield(np.array([-1000, 40, 300]))  # fine
        >>> check_hounsfield(np.array([0.0, 0.5, 1.0]), "x.nii.gz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kidneyseg.errors.KidneysegError: x.nii.gz: values lie in [0, 1]: a normalised image...
    """
    from kidneyseg.io import looks_like_labels

    if array.size == 0:
        raise KidneysegError("image is empty", path=source)
    lo, hi = float(array.min()), float(array.max())
    hint = "predict needs CT in Hounsfield units (air about -1000, soft tissue 0-100)"
    if lo >= -0.5 and hi <= 1.5:
        raise KidneysegError(
            f"values lie in [{lo:g}, {hi:g}]: a normalised image or a mask, not CT; {hint}",
            path=source,
        )
    if looks_like_labels(array):
        raise KidneysegError(f"looks like a label map (values 0-3), not CT; {hint}", path=source)
    if hi - lo < 100:
        raise KidneysegError(
            f"values span only [{lo:g}, {hi:g}]: a standardised or constant image, not CT; {hint}",
            path=source,
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


def _check_writable(path: Path, what: str) -> None:
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


def _check_output_file(path: Path) -> None:
    from kidneyseg.io import WRITE_SUFFIXES

    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise KidneysegError(
            f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}", path=path
        )
    _check_writable(path, "output file")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputCase:
    """One CT to predict: its case id, its file or DICOM folder, and where the labels go."""

    case_id: str
    source: Path
    target: Path


@dataclass(frozen=True)
class PredictionPlan:
    """What `Predictor.run_plan` will do; ``collection`` = folder mode (errors per case)."""

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
    from kidneyseg.data.kits import IMAGE_NAME, find_cases
    from kidneyseg.io import case_id_from_path, is_image_file

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
) -> PredictionPlan:
    """Match inputs to output files and check the output can be written (creates nothing).

    One CT and an ``OUTPUT`` with a suffix (``.nii.gz``/``.nii``/``.nrrd``/``.mha``) that is
    not an existing folder: that file. Otherwise ``OUTPUT`` is a folder and each case goes to
    ``OUTPUT/<case_id>.nii.gz``.
    With ``cases`` only those case ids (e.g. the test split; an unknown id is an error).
    With ``shard=(K, N)`` only cases ``i`` (0-based, sorted by case id) with ``i % N == K - 1``.

    Raises:
        KidneysegError: no input, a bad shard, an output that cannot be written or would
            overwrite an input.
    """
    from kidneyseg.io import IMAGE_SUFFIXES, WRITE_SUFFIXES

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
        _check_output_file(out)
        planned = [InputCase(pairs[0][0], pairs[0][1], out)]
    else:
        if out.exists() and not out.is_dir():
            raise KidneysegError(
                "output exists and is not a folder; give a folder, or a file name ending in "
                f"{', '.join(WRITE_SUFFIXES)}",
                path=out,
            )
        _check_writable(out, "output folder")
        planned = [InputCase(c, src, out / f"{c}{OUTPUT_SUFFIX}") for c, src in pairs]
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


# --------------------------------------------------------------------------- statistics


def label_statistics(labels: Volume) -> dict[str, Any]:
    """Voxel counts and volumes (mL) of kidney (label 1) and tumor (label 2) in a label map.

    Example:
        >>> import numpy as np
        >>> arr = np.zeros((10, 10, 10), np.uint8); arr[:2] = 1; arr[0, 0, 0] = 2
        >>> label_statistics(Volume(arr, (1.0, 1.0, 2.0)))["kidney"]
        {'voxels': 199, 'volume_ml': 0.398}
    """
    counts = np.bincount(np.asarray(labels.array, dtype=np.uint8).ravel(), minlength=3)
    ml = labels.voxel_volume_ml
    return {
        name: {"voxels": int(counts[k]), "volume_ml": round(float(counts[k]) * ml, 6)}
        for name, k in (("kidney", KIDNEY), ("tumor", TUMOR))
    }


@dataclass
class PredictReport:
    """What a `Predictor.predict_paths` run did.

    Attributes:
        written: label files written in this run.
        skipped: label files that already existed (folder mode resumes).
        failed: ``(case_id, message)`` of each case that could not be predicted.
        stats: ``case_id -> label_statistics`` of every written or skipped case.
        seconds: wall time of the run.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

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
        """The ``--stats`` file's content."""
        from kidneyseg.utils import package_version

        return {
            "format": "kidneyseg-stats",
            "kidneyseg_version": package_version(),
            "labels": {"kidney": KIDNEY, "tumor": TUMOR},
            "cases": dict(sorted(self.stats.items())),
            "failed": dict(self.failed),
        }


# --------------------------------------------------------------------------- the cascade


@dataclass
class _Phase:
    """One loaded phase: network, normalisation record and input size."""

    name: str
    model: torch.nn.Module
    normalization: dict[str, Any]
    image_size: int
    config: Config


def _load_phase(model_dir: Path, phase: str, device: torch.device) -> _Phase:
    from kidneyseg.models import load_checkpoint

    path = model_dir / phase / MODEL_FILE
    if not path.is_file():
        raise KidneysegError(
            f"model folder has no {phase}/{MODEL_FILE}; train it with "
            f"`kidneyseg train PREP_DIR {model_dir} --phase {phase}`",
            path=model_dir,
        )
    model, meta = load_checkpoint(path, device=device)
    if meta.get("phase") != phase:
        raise KidneysegError(
            f"checkpoint is for phase {meta.get('phase')!r}, expected {phase!r}", path=path
        )
    norm = meta.get("normalization") or {}
    if norm.get("phase") != phase or "mean" not in norm or "std" not in norm:
        raise KidneysegError(f"checkpoint has no valid {phase} normalisation record", path=path)
    cfg: Config = meta["config_obj"]
    if cfg.model.in_channels != 1 or cfg.model.classes != 1:
        raise KidneysegError("checkpoint is not a 1-channel, 1-logit model", path=path)
    if device.type != "mps":  # MPS convolutions do not all support channels_last
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return _Phase(phase, model, norm, cfg.data.image_size, cfg)


def _use_all_cores() -> None:
    # torch defaults to the physical core count; the user asked for speed, so use every core
    # this process may run on, unless OMP_NUM_THREADS says otherwise (shared machines, tests).
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and torch.get_num_threads() < cores:
        torch.set_num_threads(cores)


def _predict_config(
    base: Config, config_file: str | Path | None, overrides: list[str] | None
) -> Config:
    cfg = resolve_config("paper", config_file, overrides, base=config_to_dict(base))
    before, after = config_to_dict(base), config_to_dict(cfg)
    changed = sorted(s for s in after if s not in PREDICT_SECTIONS and after[s] != before[s])
    if changed:
        raise KidneysegError(
            f"predict can change only {' and '.join(s + '.*' for s in PREDICT_SECTIONS)} "
            f"settings; {', '.join(changed)} come from the checkpoints (retrain to change them)"
        )
    return cfg


class Predictor:
    """The two-phase cascade, loaded once and run on any number of volumes.

    Args:
        model_dir: ``RUN_DIR`` holding ``kidney/best.safetensors`` and ``tumor/best.safetensors``.
        device: ``auto``/``cpu``/``cuda``/``mps``; None = the checkpoint's ``inference.device``.
        batch_size: slices per forward pass; None = the checkpoint's ``inference.batch_size``.
        progress: show a progress bar per volume (on stderr, when it is a terminal).
        config_file: config file whose ``inference``/``postprocess`` sections apply.
        overrides: ``section.key=value`` strings, e.g. ``["postprocess.min_component_ml=0.5"]``.

    Attributes:
        config: the kidney checkpoint's config with the prediction-time settings applied.

    Raises:
        KidneysegError: a phase missing from ``model_dir``, a corrupt or incompatible
            checkpoint, a bad device or setting.

    Example:
        >>> predictor = Predictor("runs/paper", device="cpu", batch_size=8)  # doctest: +SKIP
        >>> predictor.predict_file("ct.nii.gz", "labels.nii.gz")  # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        config_file: str | Path | None = None,
        overrides: list[str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise KidneysegError(
                "model folder not found (expected RUN_DIR with kidney/ and tumor/)",
                path=self.model_dir,
            )
        cpu = torch.device("cpu")
        # Load on the CPU first so the config's own inference.device can be honoured.
        kidney = _load_phase(self.model_dir, "kidney", cpu)
        tumor = _load_phase(self.model_dir, "tumor", cpu)
        self.config = _predict_config(kidney.config, config_file, overrides)
        self.device = resolve_device(self.config.inference.device if device is None else device)
        self.batch_size = int(
            self.config.inference.batch_size if batch_size is None else batch_size
        )
        if self.batch_size < 1:
            raise KidneysegError(f"batch size must be >= 1 (got {self.batch_size})")
        self.progress = progress
        t = self.config.inference.threshold
        # sigmoid(logit) > t  <=>  logit > log(t / (1 - t)): no sigmoid over every pixel.
        self._logit_threshold = math.log(t / (1.0 - t))
        for phase in (kidney, tumor):
            phase.model.to(self.device)
        self.phases = {p.name: p for p in (kidney, tumor)}
        if self.device.type == "cpu":
            _use_all_cores()

    # ---------------------------------------------------------------- one volume

    def predict_volume(self, volume: Volume) -> Volume:
        """Labels (uint8: 0 background, 1 kidney, 2 tumor) in ``volume``'s exact geometry.

        Raises:
            KidneysegError: the values are clearly not CT in HU.

        Example:
            >>> labels = predictor.predict_volume(read_image("ct.nii.gz"))  # doctest: +SKIP
        """
        return self._predict(volume, volume.case_id or None)

    def _predict(self, volume: Volume, source: str | Path | None) -> Volume:
        from kidneyseg.normalization import expand_region
        from kidneyseg.postprocessing import postprocess

        ct = volume.to_canonical()
        check_hounsfield(ct, source)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=ct.shape[0],
            desc=volume.case_id or "volume",
            unit="slice",
            leave=False,
            file=sys.stderr,
            disable=None if self.progress else True,
        )
        with bar, torch.inference_mode():
            all_slices = np.arange(ct.shape[0])
            kidney = self._segment(self.phases["kidney"], ct, all_slices, None, bar)
            region_slices = np.flatnonzero(kidney.any(axis=(1, 2)))
            bar.total = ct.shape[0] + len(region_slices)
            bar.refresh()
            tumor = np.zeros_like(kidney)
            spacing = volume.canonical_spacing
            # Phase 2 sees the region grown as its model was trained (0 mm: the paper's).
            margin = self.phases["tumor"].config.data.region_margin_mm
            region = expand_region(kidney, (spacing[1], spacing[2]), margin)
            if len(region_slices):
                tumor[region_slices] = self._segment(
                    self.phases["tumor"], ct, region_slices, region, bar
                )
        labels = postprocess(kidney, tumor, spacing, self.config.postprocess, region=region)
        out = volume.from_canonical(labels)
        return out.with_array(np.ascontiguousarray(out.array))

    def _segment(
        self,
        phase: _Phase,
        ct: npt.NDArray[Any],
        slices: npt.NDArray[np.intp],
        region: npt.NDArray[np.bool_] | None,
        bar: Any,
    ) -> npt.NDArray[np.bool_]:
        """Binary masks of one phase on the given canonical slices, shape (len(slices), y, x)."""
        from kidneyseg.normalization import normalize
        from kidneyseg.slices import from_model_size, to_model_size

        height, width = ct.shape[1:]
        out = np.empty((len(slices), height, width), dtype=bool)
        cuda = self.device.type == "cuda"
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self._use_bf16()
            else contextlib.nullcontext()
        )
        contiguous = bool(np.all(np.diff(slices) == 1))
        for start in range(0, len(slices), self.batch_size):
            idx = slices[start : start + self.batch_size]
            # A plain slice of the canonical view avoids fancy-indexing copies for phase 1.
            sel: Any = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx
            x = normalize(ct[sel], phase.normalization, None if region is None else region[sel])
            batch = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
            batch = batch.to(self.device, non_blocking=cuda)
            batch = to_model_size(batch, phase.image_size)
            if self.device.type != "mps":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = phase.model(batch)
            logits = from_model_size(logits.float(), (height, width))
            out[start : start + len(idx)] = (logits[:, 0] > self._logit_threshold).cpu().numpy()
            bar.update(len(idx))
        return out

    def _use_bf16(self) -> bool:
        """bf16 autocast: asked for, or "auto" on a bf16 GPU or a CPU with native bf16."""
        precision = self.config.inference.precision
        if precision != "auto":
            return precision == "bf16" and self.device.type in ("cuda", "cpu")
        if self.device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        from kidneyseg.utils import cpu_has_native_bf16

        return self.device.type == "cpu" and cpu_has_native_bf16()

    # ---------------------------------------------------------------- files

    def predict_file(
        self, path: str | Path, out_path: str | Path, case_id: str | None = None
    ) -> Volume:
        """Read a CT file or DICOM series folder, predict, write the labels atomically.

        Returns:
            The label volume that was written.

        Raises:
            KidneysegError: unreadable input, not CT, or the output cannot be written
                (nothing is left at ``out_path`` then).

        Example:
            >>> predictor.predict_file("dicom/series_1/", "labels.nii.gz")  # doctest: +SKIP
        """
        from kidneyseg.io import read_image, write_volume

        out = Path(out_path)
        _check_output_file(out)
        volume = read_image(path)
        if case_id:
            volume = volume.with_array(volume.array, case_id=case_id)
        labels = self._predict(volume, path)
        write_volume(labels, out)
        return labels

    def predict_paths(
        self,
        input_path: str | Path,
        output: str | Path,
        shard: str | tuple[int, int] | None = None,
        skip_existing: bool = True,
        stats_path: str | Path | None = None,
        cases: Sequence[str] | None = None,
    ) -> PredictReport:
        """Predict a file, a DICOM series folder or a folder of cases (see `plan_prediction`).

        In folder mode a case whose output exists is skipped (``skip_existing``), and a case
        that fails is reported (an ``error:`` line on stderr and in the report) while the others
        are still done. One CT: its error is raised.

        Args:
            input_path: image file, DICOM folder, folder of image files or KiTS folder.
            output: output file (one CT) or folder.
            shard: ``"K/N"`` or ``(K, N)``: only every N-th case, starting at the K-th.
            skip_existing: keep existing outputs instead of predicting again (folder mode).
            stats_path: write kidney/tumor voxel counts and mL per case to this JSON file.
            cases: only these case ids (e.g. the test split of ``PREP_DIR/split.json``).
        """
        plan = plan_prediction(input_path, output, shard, cases)
        return self.run_plan(plan, skip_existing=skip_existing, stats_path=stats_path)

    def run_plan(
        self,
        plan: PredictionPlan,
        skip_existing: bool = True,
        stats_path: str | Path | None = None,
    ) -> PredictReport:
        """Carry out a `PredictionPlan` (what `predict_paths` does after planning)."""
        from kidneyseg.io import read_labels
        from kidneyseg.utils import atomic_write_text

        if stats_path is not None:
            _check_writable(Path(stats_path), "statistics file")
        report = PredictReport()
        start = time.perf_counter()
        for case in plan.cases:
            if plan.collection and skip_existing and case.target.exists():
                report.skipped.append(case.target)
                if stats_path is not None:
                    try:  # statistics of earlier runs' outputs: no re-run needed
                        report.stats[case.case_id] = label_statistics(read_labels(case.target))
                    except KidneysegError as exc:
                        self._report_failure(report, case, str(exc))
                continue
            if not plan.collection:
                labels = self.predict_file(case.source, case.target, case.case_id)
            else:
                try:
                    labels = self.predict_file(case.source, case.target, case.case_id)
                except KidneysegError as exc:
                    self._report_failure(report, case, str(exc))
                    continue
                except Exception as exc:  # one bad case must not stop a long batch
                    message = f"{case.source}: unexpected {type(exc).__name__}: {exc}"
                    self._report_failure(report, case, message)
                    continue
            report.written.append(case.target)
            report.stats[case.case_id] = label_statistics(labels)
        report.seconds = time.perf_counter() - start
        if stats_path is not None:
            text = json.dumps(report.stats_json(), indent=2) + "\n"
            atomic_write_text(Path(stats_path), text)
        return report

    @staticmethod
    def _report_failure(report: PredictReport, case: InputCase, message: str) -> None:
        report.failed.append((case.case_id, message))
        print(f"error: {message}", file=sys.stderr, flush=True)


def predict(
    input_path: str | Path,
    output: str | Path,
    model_dir: str | Path,
    device: str | None = None,
    batch_size: int | None = None,
    shard: str | tuple[int, int] | None = None,
    skip_existing: bool = True,
    stats_path: str | Path | None = None,
    progress: bool = True,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    cases: Sequence[str] | None = None,
) -> PredictReport:
    """``kidneyseg predict``: check inputs and output first, load the models, predict.

    Args: as `Predictor` and `Predictor.predict_paths`.

    Example:
        >>> report = predict("ct.nii.gz", "labels.nii.gz", "runs/paper")  # doctest: +SKIP
    """
    plan = plan_prediction(input_path, output, shard, cases)
    if stats_path is not None:
        _check_writable(Path(stats_path), "statistics file")
    predictor = Predictor(model_dir, device, batch_size, progress, config_file, overrides)
    return predictor.run_plan(plan, skip_existing=skip_existing, stats_path=stats_path)
