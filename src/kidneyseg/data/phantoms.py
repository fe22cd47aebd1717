"""Synthetic abdominal CT phantoms with kidney, tumor and cyst labels: the default cohort.

Each phantom is built in physical millimetres on the canonical ``(z, y, x)`` LPS grid (see
`kidneyseg.types`), so spacing changes only the sampling, then written with a random file
orientation (KiTS's ``I,P,L`` with its permuted, negated affine, ``RAS``, ``LPS``, ...) whose
direction matrix keeps the anatomy correct in world space: the right kidney is on the patient's
right (LPS x < midline) whatever the array order in the file.

The generator is split by what it draws:

* `kidneyseg.data.tissues`: the HU of every tissue in each contrast phase (non-contrast,
  arterial/corticomedullary, venous/nephrographic, delayed/excretory), with literature sources;
* `kidneyseg.data.anatomy`: the body plan (size, fat, spine depth and vertebral levels),
  outline, fat, abdominal wall, erector spinae, quadratus lumborum, psoas, crura, lung bases;
* `kidneyseg.data.organs`: liver, gallbladder, spleen, pancreas; vertebrae level by level,
  ribs, iliac wings with iliacus and gluteal muscles;
* `kidneyseg.data.gut`, `~.vessels`: stomach, duodenum, colon, small bowel (gas, fluid, oral
  contrast, faeces, collapsed loops); aorta, IVC, iliac, mesenteric, portal and splenic
  vessels, mesenteric branches and lymph nodes;
* `kidneyseg.data.kidneys`: the labelled kidneys (cortex, medullary pyramids, sinus,
  collecting system and calyces), perirenal fat, renal vessels, ureters, adrenals, and the
  kidneys' tumors and cysts;
* `kidneyseg.data.scanner`: field of view, slice thickness, table, metal, streaks, cupping,
  correlated noise and blur.

Only kidney (1), tumor (2) and cyst (3) are labelled; everything else is background. The same
seed gives the same files; the anatomy (in mm) does not depend on the shape, the file
orientation or the contrast phase. `make_phantom_anatomy` returns a phantom with the mask of
every structure, for tests and inspection.

Example:
    >>> ct, labels = make_phantom(0, shape=(24, 64, 64))
    >>> ct.array.dtype.name, labels.array.dtype.name, ct.shape == labels.shape
    ('int16', 'uint8', True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

import kidneyseg.data.anatomy as anatomy
import kidneyseg.data.gut as gut
import kidneyseg.data.kidneys as kidneys
import kidneyseg.data.organs as organs
import kidneyseg.data.scanner as scanner
import kidneyseg.data.tissues as tissues
import kidneyseg.data.vessels as vessels
from kidneyseg.data.kits import IMAGE_NAME, KitsCase
from kidneyseg.data.shapes import Canvas, Grid
from kidneyseg.data.tissues import PHASES
from kidneyseg.errors import KidneysegError
from kidneyseg.io import write_volume
from kidneyseg.types import Volume, from_canonical
from kidneyseg.utils import atomic_dir, check_writable_dir

#: Canonical ``(slices, rows, cols)`` of the default phantom: small, so the CPU demo is quick.
DEFAULT_SHAPE = (48, 128, 128)
#: Label file written next to ``imaging.nii.gz`` (the KiTS19/KiTS23 name).
LABEL_NAME = "segmentation.nii.gz"
#: File orientations drawn when writing (nibabel-style axcodes); KiTS's own is the most common.
ORIENTATIONS = ("IPL", "RAS", "LPS", "LAS", "RPI", "PLS", "ASR", "SLA")
_KITS_ORIENTATION_P = 0.4
_MIN_INPLANE = 16
#: Share of patients given positive oral contrast.
_ORAL_CONTRAST_P = 0.35
#: Bumped whenever the generator's output changes, so a resumed cohort is never mixed.
GENERATOR_VERSION = 2

__all__ = [
    "DEFAULT_SHAPE",
    "GENERATOR_VERSION",
    "LABEL_NAME",
    "ORIENTATIONS",
    "PHASES",
    "PhantomAnatomy",
    "case_seed",
    "direction_from_axcodes",
    "make_phantom",
    "make_phantom_anatomy",
    "write_cohort",
]


def direction_from_axcodes(axcodes: str) -> npt.NDArray[np.float64]:
    """The LPS direction matrix (column c = index axis c) of nibabel-style axcodes.

    Example:
        >>> direction_from_axcodes("IPL").astype(int).tolist()
        [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    """
    letters = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
    code = axcodes.upper()
    if len(code) != 3 or any(c not in letters for c in code):
        raise KidneysegError(f"orientation must be 3 letters from LRPASI, got {axcodes!r}")
    if len({letters[c][0] for c in code}) != 3:
        raise KidneysegError(f"orientation {axcodes!r} names one body axis twice")
    direction = np.zeros((3, 3))
    for col, c in enumerate(code):
        world, sign = letters[c]
        direction[world, col] = sign
    return direction


@dataclass(frozen=True)
class PhantomAnatomy:
    """A phantom in canonical ``(z, y, x)`` order with the mask of every structure.

    Attributes:
        hu: int16 HU, as written to ``imaging.nii.gz`` (before reorientation).
        labels: uint8 labels (1 kidney, 2 tumor, 3 cyst).
        organs: structure name -> boolean mask of where it is visible in the image (painted
            last there): e.g. ``liver``, ``spleen``, ``psoas``, ``erector_spinae``,
            ``quadratus_lumborum``, ``aorta``, ``ivc``, ``kidney_cortex``, ``kidney_medulla``,
            ``collecting_system``, ``tumor``, ``cyst``, ``vertebra``, ``rib``, ``table``.
        phase: the contrast phase (one of `PHASES`).
        spacing: canonical voxel size (z, y, x) mm.
        grid: voxel-centre coordinates (mm) of the canonical axes, relative to the body centre
            (+x patient left, +y posterior, +z superior).
        body: the body plan (vertebral levels: ``body.level_range("L1")``).
        kidneys: the kidneys present (right first).
        tissue_hu: the mean HU drawn for every tissue (`kidneyseg.data.tissues`).
        metadata: as `make_phantom`'s ``ct.metadata``.
    """

    hu: npt.NDArray[np.int16]
    labels: npt.NDArray[np.uint8]
    organs: dict[str, npt.NDArray[np.bool_]]
    phase: str
    spacing: tuple[float, float, float]
    grid: Grid
    body: anatomy.Body
    kidneys: list[kidneys.Kidney]
    tissue_hu: dict[str, float]
    metadata: dict[str, str]


def _phase_choice(phase: str | Sequence[str] | None) -> tuple[str | None, tuple[str, ...]]:
    """(fixed phase or None, phases allowed in the draw)."""
    if phase is None:
        return None, PHASES
    wanted = (phase,) if isinstance(phase, str) else tuple(phase)
    bad = [p for p in wanted if p not in PHASES]
    if bad or not wanted:
        raise KidneysegError(f"contrast phase must be among {', '.join(PHASES)}; got {phase!r}")
    return (wanted[0] if len(wanted) == 1 else None), wanted


@dataclass
class _Built:
    ct: npt.NDArray[np.int16]
    canvas: Canvas
    spacing: tuple[float, float, float]
    table: tuple[float, float, float]
    body: anatomy.Body
    present: list[kidneys.Kidney]
    tissue_hu: dict[str, float]
    phase: str
    metadata: dict[str, str]


def _build(
    seed: int,
    shape: tuple[int, int, int],
    phase: str | Sequence[str] | None,
    record: bool,
) -> _Built:
    """Draw and paint one phantom (canonical order); ``record`` keeps every organ's mask."""
    fixed, allowed = _phase_choice(phase)
    seq = np.random.SeedSequence(int(seed))
    rng_geo, rng_anat, rng_noise, _, rng_scan = (np.random.default_rng(s) for s in seq.spawn(5))
    spacing, grid, table = scanner.draw_geometry(rng_geo, shape)
    # The phase is drawn even when fixed, so the anatomy is the same in every phase.
    drawn = tissues.draw_phase(rng_anat, allowed)
    phase_name = fixed or drawn
    hu = tissues.draw_tissues(rng_anat, phase_name)
    oral = bool(rng_anat.random() < _ORAL_CONTRAST_P)
    fov_half = (shape[1] * spacing[1] / 2, shape[2] * spacing[2] / 2)
    body = anatomy.draw_body(rng_anat, fov_half)
    placed = kidneys.place_kidneys(rng_anat, body)
    # ~10 % of patients have one kidney (nephrectomy or agenesis).
    missing = int(rng_anat.integers(2)) if rng_anat.random() < 0.1 else None
    present = [k for i, k in enumerate(placed) if i != missing]
    ves = vessels.draw_vessels(rng_anat, body)
    canvas = Canvas(
        grid,
        hu=np.full(shape, hu["air"], np.float32),
        labels=np.zeros(shape, np.uint8),
        cavity2d=np.zeros(shape[1:], bool),
        organ_ids=np.zeros(shape, np.uint8) if record else None,
    )
    anatomy.paint_body_wall(rng_anat, canvas, body, hu)
    # Solid organs first; hollow organs then only replace fat, so they mould around them.
    avoid = organs.paint_liver(rng_anat, canvas, body, hu, ves, placed[0])
    avoid += organs.paint_gallbladder(rng_anat, canvas, body, hu)
    avoid += organs.paint_spleen(rng_anat, canvas, body, hu, placed[1], phase_name)
    vessels.paint_portal_vein(rng_anat, canvas, ves, hu)
    avoid += organs.paint_pancreas(rng_anat, canvas, body, hu, ves)
    avoid += gut.paint_stomach_duodenum(rng_anat, canvas, body, hu, ves, oral)
    avoid += gut.paint_colon(rng_anat, canvas, body, hu, placed, oral)
    fossae = [(k.center, tuple(s + 12.0 for s in k.semi), k.rot) for k in present]
    gut.paint_small_bowel(rng_anat, canvas, body, hu, avoid + fossae, oral)
    vessels.paint_mesentery(rng_anat, canvas, body, ves, hu)
    anatomy.paint_lungs(rng_anat, canvas, body, hu)
    organs.paint_pelvis(rng_anat, canvas, body, hu)
    kidneys.paint_perirenal_fat(rng_anat, canvas, body, present, hu)
    anatomy.paint_muscles(rng_anat, canvas, body, hu, ves.aorta)
    vessels.paint_vessels(rng_anat, canvas, body, ves, hu, renal_vein_z=float(placed[1].hilum[0]))
    kidneys.paint_adrenals(rng_anat, canvas, body, hu, ves.aorta, ves.ivc, placed)
    organs.paint_spine(rng_anat, canvas, body, hu)
    organs.paint_ribs(rng_anat, canvas, body, hu)
    fossa = placed[missing].hilum if missing is not None else None
    sources = scanner.paint_metal(rng_anat, canvas, body, hu, fossa)
    kidneys.paint_renal_vessels(canvas, present, ves.aorta, ves.ivc, hu)
    kidneys.paint_ureters(rng_anat, canvas, body, present, hu)
    # Labelled structures last: nothing unlabelled is painted over them.
    for k in present:
        kidneys.paint_kidney(rng_anat, canvas, k, hu)
    n_tumors, n_cysts, subtypes = kidneys.paint_masses(rng_anat, canvas, present, hu, phase_name)
    if phase_name == "delayed":  # dense excreted contrast streaks a little
        strength = float(np.clip(0.05 * (hu["excreted_contrast"] - 200.0), 0.0, 60.0))
        for k in present:
            h = k.hilum
            sources.append((h[0] - 20.0, h[0] + 20.0, float(h[1]), float(h[2]), strength))
    scan = scanner.draw_scanner(rng_scan, spacing, body)
    scanner.paint_table(rng_scan, canvas, body, hu)
    ct = scanner.finish(rng_noise, canvas.hu, grid, scan, body, sources)
    metadata = {
        "kidneys": {None: "both", 0: "left", 1: "right"}[missing],  # placed[0] is the right
        "tumors": str(n_tumors),
        "cysts": str(n_cysts),
        "tumor_types": ",".join(subtypes),
        "phase": phase_name,
        "oral_contrast": "yes" if oral else "no",
        "noise_hu": f"{scan.noise:.1f}",
        "seed": str(int(seed)),
    }
    return _Built(ct, canvas, spacing, table, body, present, hu, phase_name, metadata)


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    case_id: str = "",
    phase: str | Sequence[str] | None = None,
) -> tuple[Volume, Volume]:
    """One synthetic abdominal CT and its label map.

    Args:
        seed: the same seed gives identical volumes; the anatomy (in mm) does not depend on
            ``shape``, ``orientation`` or ``phase``.
        shape: canonical ``(slices, rows, cols)``; default `DEFAULT_SHAPE`.
        orientation: file axcodes such as ``"IPL"`` (KiTS) or ``"RAS"``; default drawn at random.
        case_id: the volumes' ``case_id``.
        phase: a contrast phase (``"noncontrast"``, ``"arterial"``, ``"venous"``,
            ``"delayed"``), or several to draw among; default: drawn among all four.

    Returns:
        ``(ct, labels)``: int16 HU and uint8 labels (1 kidney, 2 tumor, 3 cyst) on one grid, in
        the file orientation. ``ct.metadata`` says which kidneys exist (``kidneys``: both,
        right or left), the number of tumors and cysts and the tumors' subtypes, the contrast
        ``phase``, whether there is oral contrast, and the orientation.

    Example:
        >>> ct, labels = make_phantom(3, shape=(16, 48, 48), orientation="RAS")
        >>> ct.axcodes, labels.shape
        (('R', 'A', 'S'), (48, 48, 16))
    """
    shape = _check_shape(shape)
    rng_orient = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(5)[3])
    if rng_orient.random() < _KITS_ORIENTATION_P:
        drawn = "IPL"
    else:
        drawn = ORIENTATIONS[int(rng_orient.integers(1, len(ORIENTATIONS)))]
    orientation = (orientation or drawn).upper()
    direction = direction_from_axcodes(orientation)
    built = _build(seed, shape, phase, record=False)
    grid, spacing, table = built.canvas.grid, built.spacing, built.table

    # Canonical voxel (iz, iy, ix) sits at LPS (x[ix], y[iy], z[iz]) + the table offset; the
    # file's voxel 0 is the canonical corner each flipped axis starts from.
    coords = (grid.x, grid.y, grid.z)  # by LPS world axis
    world = [(int(np.flatnonzero(direction[:, c])[0]), c) for c in range(3)]
    origin = [0.0, 0.0, 0.0]
    file_spacing = [0.0, 0.0, 0.0]
    for w, c in world:
        first = 0 if direction[w, c] > 0 else len(coords[w]) - 1
        origin[w] = float(coords[w][first] + table[w])
        file_spacing[c] = float(spacing[2 - w])  # canonical axis 2 - w holds world axis w
    metadata = {**built.metadata, "orientation": orientation}
    sp = (file_spacing[0], file_spacing[1], file_spacing[2])
    org = (origin[0], origin[1], origin[2])
    dirs = tuple(tuple(float(v) for v in row) for row in direction)
    image = Volume(_file_order(built.ct, direction), sp, org, dirs, case_id, metadata)
    labels = Volume(_file_order(built.canvas.labels, direction), sp, org, dirs, case_id)
    return image, labels


def make_phantom_anatomy(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    phase: str | Sequence[str] | None = None,
) -> PhantomAnatomy:
    """The phantom `make_phantom` draws for ``seed``, in canonical order, with organ masks.

    Nothing is written; the image and labels equal ``make_phantom``'s after `to_canonical`.

    Example:
        >>> p = make_phantom_anatomy(0, shape=(24, 64, 64), phase="arterial")
        >>> p.phase, p.hu.shape, bool(p.organs["liver"].any())
        ('arterial', (24, 64, 64), True)
    """
    shape = _check_shape(shape)
    b = _build(seed, shape, phase, record=True)
    return PhantomAnatomy(
        hu=b.ct,
        labels=b.canvas.labels,
        organs=b.canvas.organ_masks(),
        phase=b.phase,
        spacing=b.spacing,
        grid=b.canvas.grid,
        body=b.body,
        kidneys=b.present,
        tissue_hu=b.tissue_hu,
        metadata=b.metadata,
    )


def _file_order(canonical: np.ndarray, direction: npt.NDArray[np.float64]) -> np.ndarray:
    """A contiguous file-order array from a canonical one (see `kidneyseg.types`)."""
    return np.ascontiguousarray(from_canonical(canonical, direction))


def _check_shape(shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if shape is None:
        return DEFAULT_SHAPE
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError) as exc:
        raise KidneysegError(f"phantom shape must be three integers, got {shape!r}") from exc
    if len(dims) != 3 or dims[0] < 1 or min(dims[1:]) < _MIN_INPLANE:
        raise KidneysegError(
            f"phantom shape must be SLICES ROWS COLS with slices >= 1 and rows, cols >= "
            f"{_MIN_INPLANE}; got {shape!r} (default {DEFAULT_SHAPE})"
        )
    return dims  # type: ignore[return-value]


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` in a cohort drawn with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _write_case(
    out_dir: str,
    index: int,
    seed: int,
    shape: tuple[int, int, int],
    phases: tuple[str, ...] | None,
) -> str:
    case_id = f"case_{index:05d}"
    ct, labels = make_phantom(seed, shape, case_id=case_id, phase=phases)
    stamp = {
        **ct.metadata,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "shape": list(shape),
        "phases": list(phases) if phases else None,
    }
    with atomic_dir(Path(out_dir) / case_id) as tmp:
        write_volume(ct, tmp / IMAGE_NAME)
        write_volume(labels, tmp / LABEL_NAME)
        (tmp / "phantom.json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    return case_id


def _is_done(
    case_dir: Path, seed: int, shape: tuple[int, int, int], phases: tuple[str, ...] | None
) -> bool:
    """True when ``case_dir`` already holds this exact phantom (a resumed cohort)."""
    try:
        stamp = json.loads((case_dir / "phantom.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        stamp.get("generator_version") == GENERATOR_VERSION
        and stamp.get("seed") == seed
        and stamp.get("shape") == list(shape)
        and stamp.get("phases") == (list(phases) if phases else None)
        and (case_dir / IMAGE_NAME).is_file()
        and (case_dir / LABEL_NAME).is_file()
    )


def write_cohort(
    out_dir: str | Path,
    cases: int = 30,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    workers: int = 1,
    progress: bool = True,
    phases: Sequence[str] | None = None,
) -> list[KitsCase]:
    """Write ``cases`` phantoms in the KiTS layout (``OUT/case_XXXXX/*.nii.gz``).

    Each case folder is written under a temporary name and renamed when complete, so a case
    folder is complete or absent. Cases already written with the same seed and shape are kept
    (an interrupted cohort resumes). A ``phantom.json`` beside the images records how the case
    was made (seed, shape, contrast phase, kidneys present, tumors and cysts, file orientation).

    Args:
        out_dir: output folder (created).
        cases: number of cases (>= 1).
        seed: cohort seed; case i uses `case_seed` (seed, i).
        shape: canonical ``(slices, rows, cols)`` of every case; default `DEFAULT_SHAPE`.
        workers: parallel processes.
        progress: show a progress bar (on a terminal).
        phases: contrast phases to draw among (``noncontrast``, ``arterial``, ``venous``,
            ``delayed``); default all four, mostly arterial (the KiTS phase). A case's anatomy
            is the same whichever phase it gets.

    Returns:
        The cases, sorted by id.

    Raises:
        KidneysegError: ``cases`` < 1, a bad shape or phase, or an unwritable ``out_dir``.

    Example:
        >>> cases = write_cohort("phantoms", cases=4, seed=0)  # doctest: +SKIP
        >>> cases[0].image.name, cases[0].label.name  # doctest: +SKIP
        ('imaging.nii.gz', 'segmentation.nii.gz')
    """
    if int(cases) < 1:
        raise KidneysegError(f"number of cases must be at least 1, got {cases}")
    if int(workers) < 1:
        raise KidneysegError(f"workers must be at least 1, got {workers}")
    dims = _check_shape(shape)
    allowed = None if phases is None else _phase_choice(tuple(phases))[1]
    out = check_writable_dir(out_dir)
    todo = []
    for i in range(int(cases)):
        s = case_seed(seed, i)
        if not _is_done(out / f"case_{i:05d}", s, dims, allowed):
            todo.append((i, s))
    _run(todo, int(workers), progress, out, dims, allowed)
    return [
        KitsCase(
            f"case_{i:05d}", out / f"case_{i:05d}" / IMAGE_NAME, out / f"case_{i:05d}" / LABEL_NAME
        )
        for i in range(int(cases))
    ]


def _run(
    todo: list[tuple[int, int]],
    workers: int,
    progress: bool,
    out: Path,
    shape: tuple[int, int, int],
    phases: tuple[str, ...] | None,
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="phantoms", unit="case", disable=not progress or None)
    try:
        if workers == 1 or len(todo) <= 1:
            for i, s in todo:
                _write_case(str(out), i, s, shape, phases)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork where there is one: workers need no state the parent's threads could hold (the
        # parent writes nothing with ITK), and spawn would demand a __main__ guard in scripts.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_write_case, str(out), i, s, shape, phases) for i, s in todo]
            for future in as_completed(futures):
                future.result()
                bar.update()
    finally:
        bar.close()
