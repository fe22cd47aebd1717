"""Running the two-phase cascade on whole CT volumes (paper §3).

`Predictor` loads ``RUN_DIR/kidney/best.safetensors`` and ``RUN_DIR/tumor/best.safetensors``
(`kidneyseg.formats.run_dir`) as two `PhaseRunner` objects and, for one volume:

1. phase 1 on every canonical axial slice -> kidney region (kidney incl. masses);
2. phase 2 on CT x region, *only* on slices where the region is non-empty (most slices of an
   abdominal CT hold no kidney, so this roughly halves the time) -> tumor;
3. `kidneyseg.postprocessing.postprocess` -> uint8 labels 0/1/2, put back into the input's
   exact geometry. A phase 2 trained on tumor and cyst (``data.tumor_classes = "tumor,cyst"``,
   the ``kits`` preset) adds label 3: its masses are split by the more probable output.

`predict` (the ``kidneyseg predict`` command) plans the inputs and outputs
(`kidneyseg.inputs.plan_prediction`), loads the models and runs the plan, skipping cases already
done, and optionally writes label statistics (`kidneyseg.formats.pred_dir`).

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

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.config import Config, config_to_dict, resolve_config
from kidneyseg.dicom_seg import write_dicom_seg
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.pred_dir import (
    OUTPUT_FORMATS,
    header_description,
    probability_path,
    provenance,
    seg_path,
    write_stats,
    writes_seg,
)
from kidneyseg.formats.run_dir import model_id, require_best_checkpoint
from kidneyseg.fusion import by_folder, load_plane_runners, segment_planes, select_planes
from kidneyseg.hardware import resolve_device, use_all_cores
from kidneyseg.inputs import (
    InputCase,
    PredictionPlan,
    PredictReport,
    check_output_file,
    check_writable,
    plan_prediction,
)
from kidneyseg.io import check_hounsfield, read_image, read_labels, write_volume
from kidneyseg.model_package import open_model
from kidneyseg.onnx_backend import use_backend
from kidneyseg.phase_runner import PhaseRunner
from kidneyseg.postprocessing import postprocess
from kidneyseg.stats import label_statistics
from kidneyseg.types import Volume

#: Settings that may change at prediction time; the rest must match what the models learnt.
PREDICT_SECTIONS = ("inference", "postprocess")


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
        model_dir: ``RUN_DIR`` holding ``kidney/best.safetensors`` and ``tumor/best.safetensors``,
            a model package or an installed model id (`kidneyseg.model_package.open_model`).
        device: ``auto``/``cpu``/``cuda``/``mps``; None = the checkpoint's ``inference.device``.
        batch_size: slices per forward pass; None = the checkpoint's ``inference.batch_size``.
        progress: show a progress bar per volume (on stderr, when it is a terminal).
        output_format: `OUTPUT_FORMATS`; None = ``auto``: the label file, plus for DICOM input
            ``<name>.seg.dcm`` beside it; ``nifti``/``nrrd``/``mha``: the label file only;
            ``dicom-seg``: the SEG only; ``both``: both (DICOM input only).
        config_file: config file whose ``inference``/``postprocess`` sections apply.
        overrides: ``section.key=value`` strings, e.g. ``["postprocess.min_component_ml=0.5"]``.
        save_probabilities: also write each output's probability map beside each label file
            (uint8, p x 255; `kidneyseg.formats.pred_dir.probability_path`): kidney, tumor,
            and cyst when phase 2 predicts cysts.

    Attributes:
        config: the kidney checkpoint's config with the prediction-time settings applied.
        predicts_cysts: phase 2 predicts cysts too (labels 0-3 out, not 0-2).
        planes: each phase's runners by plane (`kidneyseg.fusion.select_planes`).
        provenance: model id (hash of the checkpoints), version, device, precision, backend.

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
        output_format: str | None = None,
        save_probabilities: bool = False,
    ) -> None:
        self.save_probabilities = save_probabilities
        self.model_dir = Path(model_dir)
        with open_model(model_dir) as folder:
            # Load on the CPU first so the config's own inference.device can be honoured.
            kidney = PhaseRunner.load(require_best_checkpoint(folder, "kidney"), "kidney")
            tumor = PhaseRunner.load(require_best_checkpoint(folder, "tumor"), "tumor")
            identity = model_id(folder)
            others = load_plane_runners(folder)  # coronal / sagittal models (kidneyseg.fusion)
        self.config = _predict_config(kidney.config, config_file, overrides)
        inference = self.config.inference
        self.device = resolve_device(inference.device if device is None else device)
        self.batch_size = int(inference.batch_size if batch_size is None else batch_size)
        if self.batch_size < 1:
            raise KidneysegError(f"batch size must be >= 1 (got {self.batch_size})")
        self.progress = progress
        how = (inference.precision, self.batch_size, inference.threshold, inference.tta)
        for runner in (kidney, tumor, *(r for plane in others.values() for r in plane.values())):
            runner.configure(self.device, *how)
        self.phases = {"kidney": kidney, "tumor": tumor}
        self.planes = select_planes(self.phases, others, inference)
        self.predicts_cysts = "cyst" in tumor.outputs
        if output_format not in (None, *OUTPUT_FORMATS):
            raise KidneysegError(
                f"unknown output format {output_format!r}; choose {', '.join(OUTPUT_FORMATS)}"
            )
        self.output_format = output_format
        self.provenance = provenance(
            identity, str(self.model_dir), str(self.device), kidney.precision
        )
        if self.device.type == "cpu":
            use_all_cores()
        # After the threads; every model that runs (plane models too, `<folder>/best.onnx`).
        self.backend = use_backend(by_folder(self.planes), inference, self.model_dir)
        self.provenance.update(backend=self.backend, precision=kidney.precision)

    # ---------------------------------------------------------------- one volume

    @property
    def probability_outputs(self) -> tuple[str, ...]:
        """The probability maps `predict_probability_maps` gives (and ``--save-probabilities``
        writes): kidney, tumor, and cyst when phase 2 predicts cysts."""
        return ("kidney", "tumor", "cyst") if self.predicts_cysts else ("kidney", "tumor")

    def predict_volume(self, volume: Volume) -> Volume:
        """Labels (uint8: 0 background, 1 kidney, 2 tumor, 3 cyst when phase 2 predicts cysts)
        in ``volume``'s exact geometry.

        Raises:
            KidneysegError: the values are clearly not CT in HU.

        Example:
            >>> labels = predictor.predict_volume(read_image("ct.nii.gz"))  # doctest: +SKIP
        """
        return self._predict(volume, volume.case_id or None)[0]

    def predict_probabilities(self, volume: Volume) -> tuple[Volume, Volume, Volume]:
        """Labels and the kidney and tumor probabilities (uint8, ``round(p x 255)``), all in
        ``volume``'s exact geometry; the labels are those of `predict_volume`. (The cyst
        probability too: `predict_probability_maps`.)"""
        labels, probs = self.predict_probability_maps(volume)
        return labels, probs["kidney"], probs["tumor"]

    def predict_probability_maps(self, volume: Volume) -> tuple[Volume, dict[str, Volume]]:
        """Labels and every output's probability (uint8, ``round(p x 255)``) by name
        (`probability_outputs`), all in ``volume``'s exact geometry."""
        labels, probs = self._predict(volume, volume.case_id or None, probabilities=True)
        assert probs is not None
        return labels, probs

    def segment_canonical(
        self,
        ct: npt.NDArray[Any],
        spacing: tuple[float, float, float],
        bar: Any = None,
        kidney_prob: npt.NDArray[np.uint8] | None = None,
        tumor_prob: npt.NDArray[np.uint8] | None = None,
        cyst: npt.NDArray[np.bool_] | None = None,
        cyst_prob: npt.NDArray[np.uint8] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """The cascade's raw masks on a canonical ``(z, y, x)`` CT, before postprocessing.

        ``inference.mode = "fast"`` runs both phases only around the kidneys
        (`kidneyseg.localization.segment_fast`); ``"naive"`` runs phase 1 on every whole slice.
        With coronal / sagittal models (`planes`) each phase is the mean of its planes'
        probabilities (`kidneyseg.fusion.segment_planes`; naive mode only).

        Returns:
            ``(kidney, tumor, region)``: phase 1's mask, phase 2's mask (only on slices with
            kidney) and the region phase 2 saw (phase 1 grown by ``data.region_margin_mm``).
            ``kidney_prob`` / ``tumor_prob`` / ``cyst_prob``, when given, receive the
            probabilities (`kidneyseg.localization.segment_cascade`). When phase 2 predicts
            cysts (`predicts_cysts`), ``cyst`` (bool, the CT's shape) is required and receives
            the cyst mask; the tumor mask then excludes cysts.
        """
        update = None if bar is None else bar.update
        settings = self.config.inference  # with plane models: their mean (kidneyseg.fusion)
        probs = (kidney_prob, tumor_prob, cyst, cyst_prob)
        return segment_planes(self.planes, ct, spacing, settings, update, *probs)

    def _predict(
        self, volume: Volume, source: str | Path | None, probabilities: bool = False
    ) -> tuple[Volume, dict[str, Volume] | None]:
        """Labels in ``volume``'s geometry, and (``probabilities``) the probability volumes
        of `probability_outputs` beside them."""
        from tqdm.auto import tqdm

        ct = volume.to_canonical()
        check_hounsfield(ct, source)
        bar = tqdm(  # no total: fast mode decides how many slices to run as it goes
            total=None,
            desc=volume.case_id or "volume",
            unit="slice",
            leave=False,
            file=sys.stderr,
            disable=None if self.progress else True,
        )
        spacing = volume.canonical_spacing
        outputs = self.probability_outputs if probabilities else ()
        probs = {name: np.zeros(ct.shape, np.uint8) for name in outputs}
        cyst = np.zeros(ct.shape, bool) if self.predicts_cysts else None
        with bar:
            kidney, tumor, region = self.segment_canonical(
                ct, spacing, bar, probs.get("kidney"), probs.get("tumor"), cyst, probs.get("cyst")
            )
        labels = postprocess(
            kidney, tumor, spacing, self.config.postprocess, region=region, cyst=cyst
        )

        def in_input_geometry(canonical: npt.NDArray[Any]) -> Volume:
            out = volume.from_canonical(canonical)
            return out.with_array(np.ascontiguousarray(out.array))

        maps = {name: in_input_geometry(prob) for name, prob in probs.items()}
        return in_input_geometry(labels), maps if probabilities else None

    # ---------------------------------------------------------------- files

    def predict_file(
        self,
        path: str | Path,
        out_path: str | Path,
        case_id: str | None = None,
        series: str | None = None,
    ) -> Volume:
        """Read a CT file or DICOM series folder, predict, write the labels atomically.

        ``series`` picks one series of a DICOM folder that holds several (its UID, or its
        number in the listing the error message gives).

        Returns:
            The label volume that was written.

        Raises:
            KidneysegError: unreadable input, not CT, or the output cannot be written
                (nothing is left at ``out_path`` then).

        Example:
            >>> predictor.predict_file("dicom/series_1/", "labels.nii.gz")  # doctest: +SKIP
        """
        return self._predict_file(path, out_path, case_id, series)[1]

    def _predict_file(
        self,
        path: str | Path,
        out_path: str | Path,
        case_id: str | None = None,
        series: str | None = None,
    ) -> tuple[Volume, Volume]:
        """`predict_file`, returning the CT too (for the statistics)."""
        out = Path(out_path)
        check_output_file(out)
        volume = read_image(path, series)
        if case_id:
            volume = volume.with_array(volume.array, case_id=case_id)
        is_dicom = "series_uid" in volume.metadata
        fmt = self.output_format or "auto"
        if fmt in ("dicom-seg", "both") and not is_dicom:
            raise KidneysegError(
                f"--output-format {fmt} needs a DICOM series as input (a DICOM SEG references "
                "its source images)",
                path=path,
            )
        labels, probs = self._predict(volume, path, self.save_probabilities)
        description = header_description(self.provenance)
        if fmt != "dicom-seg":
            write_volume(labels, out, description)
        if writes_seg(fmt, is_dicom):
            write_dicom_seg(
                labels, path, seg_path(out), self.provenance, series, cysts=self.predicts_cysts
            )
        if probs is not None:  # last: folder mode redoes a case whose probabilities are missing
            for name, prob in probs.items():
                write_volume(prob, probability_path(out, name), description)
        return volume, labels

    def predict_paths(
        self,
        input_path: str | Path,
        output: str | Path,
        shard: str | tuple[int, int] | None = None,
        skip_existing: bool = True,
        stats_path: str | Path | None = None,
        cases: Sequence[str] | None = None,
        series: str | None = None,
    ) -> PredictReport:
        """Predict a file, a DICOM series folder or a folder of cases (see `plan_prediction`).

        In folder mode a case whose output exists is skipped (``skip_existing``), and a case
        that fails is reported (an ``error:`` line on stderr and in the report) while the others
        are still done. One CT: its error is raised.

        Args:
            input_path: image file, DICOM folder, folder of image files or KiTS folder.
            output: output file (one CT) or folder.
            shard: ``"K/N"`` or ``(K, N)``: only every N-th case, starting at the K-th.
            skip_existing: folder mode: keep existing outputs instead of predicting again; one
                CT: refuse to replace an existing output file (False: overwrite).
            stats_path: write kidney/tumor voxel counts and mL per case to this JSON file.
            cases: only these case ids (e.g. the test split of ``PREP_DIR/split.json``).
            series: one series of a DICOM folder holding several (UID or listing number).
        """
        plan = plan_prediction(
            input_path, output, shard, cases, not skip_existing, series, self.output_format
        )
        return self.run_plan(
            plan, skip_existing=skip_existing, stats_path=stats_path, series=series
        )

    def run_plan(
        self,
        plan: PredictionPlan,
        skip_existing: bool = True,
        stats_path: str | Path | None = None,
        series: str | None = None,
    ) -> PredictReport:
        """Carry out a `PredictionPlan` (what `predict_paths` does after planning)."""
        if stats_path is not None:
            check_writable(Path(stats_path), "statistics file")
        report = PredictReport(provenance=dict(self.provenance))
        start = time.perf_counter()
        fmt = self.output_format
        probabilities = self.probability_outputs if self.save_probabilities else ()
        for case in plan.cases:
            picked = case.series if plan.collection else case.series or series
            args = (case.source, case.target, case.case_id, picked)
            if plan.collection and skip_existing and case.done(fmt, probabilities):
                report.skipped.append(case.target)
                if stats_path is not None and case.target.exists():
                    try:  # statistics of earlier runs' outputs: no re-run needed
                        ct = read_image(case.source, case.series)
                        old = read_labels(case.target, like=ct)
                        report.stats[case.case_id] = label_statistics(old, ct)
                    except KidneysegError as exc:
                        self._report_failure(report, case, str(exc))
                continue
            if not plan.collection:
                ct, labels = self._predict_file(*args)
            else:
                try:
                    ct, labels = self._predict_file(*args)
                except KidneysegError as exc:
                    self._report_failure(report, case, str(exc))
                    continue
                except Exception as exc:  # one bad case must not stop a long batch
                    message = f"{case.source}: unexpected {type(exc).__name__}: {exc}"
                    self._report_failure(report, case, message)
                    continue
            report.written.append(case.target)
            if stats_path is not None:
                report.stats[case.case_id] = label_statistics(labels, ct)
        report.seconds = time.perf_counter() - start
        if stats_path is not None:
            write_stats(stats_path, report.stats, dict(report.failed), report.provenance)
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
    series: str | None = None,
    output_format: str | None = None,
    save_probabilities: bool = False,
) -> PredictReport:
    """``kidneyseg predict``: check inputs and output first, load the models, predict.

    Args: as `Predictor` and `Predictor.predict_paths`.

    Example:
        >>> report = predict("ct.nii.gz", "labels.nii.gz", "runs/paper")  # doctest: +SKIP
    """
    overwrite = not skip_existing
    plan = plan_prediction(input_path, output, shard, cases, overwrite, series, output_format)
    if stats_path is not None:
        check_writable(Path(stats_path), "statistics file")
    predictor = Predictor(
        model_dir, device, batch_size, progress, config_file, overrides, output_format
    )
    predictor.save_probabilities = save_probabilities
    return predictor.run_plan(
        plan, skip_existing=skip_existing, stats_path=stats_path, series=series
    )
