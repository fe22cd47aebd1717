"""CT attenuation (HU) of every phantom tissue in each contrast phase, with its source.

Phases (`PHASES`), timed from the start of an intravenous iodinated contrast injection [Y]:

* ``noncontrast``: no contrast; kidney ~30-40 HU like muscle, so shape and fat planes are all
  a model has;
* ``arterial``: late arterial / corticomedullary, ~25-70 s: bright renal cortex, darker medulla
  (the KiTS19 scans are mostly in this phase [KITS19]);
* ``venous``: portal-venous / nephrographic, ~80-120 s: homogeneous kidney, liver at its peak;
* ``delayed``: excretory, >= 3-5 min: parenchyma fading, contrast-filled collecting system.

Each entry of `HU_TABLE` is a ``(low, high)`` range of the *mean* attenuation of a tissue in a
patient; the generator adds texture, partial volume and noise. Sources (bracketed keys):

* [P] Prokop M, Galanski M. *Spiral and Multislice Computed Tomography of the Body*. Thieme,
  2003 - attenuation of fat, muscle, blood, bile, liver, spleen, pancreas, bone, lung.
* [Y] Yuh BI, Cohan RH. Different phases of renal enhancement: role in detecting and
  characterizing renal masses during helical CT. AJR 1999;173:747-755.
* [C] Cohan RH, Sherman LS, Korobkin M, et al. Renal masses: assessment of corticomedullary-
  phase and nephrographic-phase CT scans. Radiology 1995;196:445-451.
* [B] Bae KT. Intravenous contrast medium administration and scan timing at CT. Radiology
  2010;256:32-61 - aortic peak ~250-350 HU, hepatic enhancement ~50 HU (portal venous).
* [D] Helck A, et al. Determination of split renal function using dynamic CT-angiography.
  PLoS One 2014;9:e91774 - peak aorta 464, renal arteries 435, renal veins 277 HU.
* [K] Kodama Y, et al. Comparison of CT methods for determining the fat content of the liver.
  AJR 2007;188:1307-1312 - unenhanced normal liver ~55-65 HU, above spleen.
* [BOS] Silverman SG, et al. Bosniak classification of cystic renal masses, version 2019.
  Radiology 2019;292:475-488 - simple cyst -9..20 HU, no enhancement; homogeneous
  hyperattenuating (>= 70 HU) non-enhancing cysts are Bosniak II.
* [KIM] Kim JK, et al. Differentiation of subtypes of renal cell carcinoma on helical CT scans.
  AJR 2002;178:1499-1506; [YNG] Young JR, et al. Clear cell renal cell carcinoma:
  discrimination from other subtypes and oncocytoma at multiphasic MDCT. Radiology
  2013;267:444-453 - clear-cell RCC enhances avidly and heterogeneously (corticomedullary
  peak ~100-150 HU), papillary weakly (~40-80 HU), chromophobe/oncocytoma in between.
* [PK] Pickhardt PJ, et al. Opportunistic screening for osteoporosis using abdominal CT. Ann
  Intern Med 2013;158:588-595 - L1 trabecular bone ~100-250 HU in adults.
* [BT] Boutin RD, et al. Influence of IV contrast administration on CT measures of muscle and
  bone attenuation. AJR 2016;207:1046-1054 - contrast raises muscle and trabecular bone by
  roughly 5-20 HU.
* [G] Goodpaster BH, et al. Skeletal muscle attenuation determined by CT is associated with
  skeletal muscle lipid content. J Appl Physiol 2000;89:104-110 - muscle ~30-60 HU unenhanced.
* [U] Silverman SG, Leyendecker JR, Amis ES. What is the current role of CT urography and MR
  urography? Radiology 2009;250:309-323 - excreted contrast in the collecting system is
  hundreds to over a thousand HU.
* [KITS19] measured here on ``shared/data/kits19_slices`` (55 real KiTS19 slices, clipped at
  255): kidney median 83-182 HU (10th-90th percentile over slices), tumor median 25-99 HU.
* [TS] measured here on the non-contrast TotalSegmentator example CT: liver 45, spleen 35,
  psoas 31-37, erector spinae 14-29 (fatty), kidney 8-19 HU (3 mm voxels, partial volume).
* [approx] no single published figure: a plausible range set from the neighbouring tissues
  and the physics (e.g. the patient table), stated as an approximation.

Example:
    >>> import numpy as np
    >>> hu = draw_tissues(np.random.default_rng(0), "arterial")
    >>> hu["kidney_cortex"] > hu["kidney_medulla"]
    True
"""

from __future__ import annotations

from typing import Final

import numpy as np

PHASES: Final = ("noncontrast", "arterial", "venous", "delayed")
#: How often each phase is drawn: mostly the KiTS phase, but all four occur.
PHASE_WEIGHTS: Final = (0.15, 0.4, 0.3, 0.15)

Range = tuple[float, float]


def _same(lo: float, hi: float) -> dict[str, Range]:
    """A tissue that does not enhance: one range in every phase."""
    return {p: (lo, hi) for p in PHASES}


def _phases(nc: Range, art: Range, ven: Range, dly: Range) -> dict[str, Range]:
    return {"noncontrast": nc, "arterial": art, "venous": ven, "delayed": dly}


#: tissue -> phase -> (low, high) HU of the tissue's mean in one patient.
HU_TABLE: Final[dict[str, dict[str, Range]]] = {
    # --- air, lung, fat ------------------------------------------------------------------
    "air": _same(-1000.0, -990.0),  # [P]
    "lung": _same(-900.0, -780.0),  # [P] dependent lung bases are denser than -900
    "subcutaneous_fat": _same(-120.0, -90.0),  # [P]
    "visceral_fat": _same(-110.0, -80.0),  # [P] visceral fat is ~10 HU above subcutaneous
    "perirenal_fat": _same(-110.0, -80.0),  # [P] as visceral fat
    "renal_sinus_fat": _same(-100.0, -60.0),  # [P] with vessels and partial volume
    # --- muscle (unenhanced [G][TS]; contrast adds ~5-20 HU [BT]) --------------------------
    "muscle": _phases((35.0, 55.0), (40.0, 62.0), (45.0, 70.0), (45.0, 65.0)),
    # Erector spinae is often fattier than psoas in adults [TS]; a little lower.
    "back_muscle": _phases((20.0, 50.0), (25.0, 57.0), (30.0, 62.0), (30.0, 60.0)),
    # --- bone [P][PK][BT] -------------------------------------------------------------------
    # Cortical bone is 1000+ HU solid; thin cortices read 400-1100 after partial volume.
    "cortical_bone": _same(450.0, 1100.0),
    "cancellous_bone": _phases((110.0, 260.0), (120.0, 270.0), (125.0, 280.0), (125.0, 280.0)),
    "posterior_elements": _same(250.0, 650.0),  # [approx] thin cortex + marrow mixed
    "rib": _same(300.0, 700.0),  # [approx] a 10 mm rib: cortex + marrow mixed
    "intervertebral_disc": _same(60.0, 110.0),  # [P]
    "costal_cartilage": _same(80.0, 200.0),  # [P] uncalcified hyaline cartilage
    "csf": _same(0.0, 25.0),  # [P] thecal sac / cord
    # --- blood pool [B][D]; unenhanced blood 35-55 HU depending on haematocrit [P] ---------
    "aorta": _phases((35.0, 55.0), (200.0, 350.0), (130.0, 200.0), (90.0, 130.0)),
    "portal_vein": _phases((35.0, 55.0), (90.0, 160.0), (150.0, 220.0), (100.0, 140.0)),
    # Early venous return from the kidney [D]: renal veins enhance in the arterial phase.
    "renal_vein": _phases((35.0, 55.0), (150.0, 250.0), (130.0, 190.0), (90.0, 130.0)),
    # Infrarenal IVC is still unopacified in the arterial phase; above the renal veins the
    # enhanced renal return mixes in [B] (the "mixing artefact"; ranges [approx]).
    "ivc_infrarenal": _phases((35.0, 55.0), (50.0, 100.0), (120.0, 170.0), (90.0, 130.0)),
    "ivc_suprarenal": _phases((35.0, 55.0), (100.0, 180.0), (120.0, 170.0), (90.0, 130.0)),
    "hepatic_vein": _phases((30.0, 50.0), (50.0, 90.0), (130.0, 190.0), (100.0, 130.0)),
    # --- solid organs ---------------------------------------------------------------------
    "liver": _phases((50.0, 70.0), (60.0, 90.0), (100.0, 135.0), (80.0, 110.0)),  # [K][B]
    # Spleen: unenhanced below liver [K]; arciform, mottled in the arterial phase [P].
    "spleen": _phases((40.0, 55.0), (90.0, 150.0), (110.0, 140.0), (85.0, 110.0)),
    "pancreas": _phases((30.0, 50.0), (90.0, 140.0), (80.0, 120.0), (60.0, 90.0)),  # [P][approx]
    # Adrenal glands; also used for mesenteric lymph nodes (soft tissue, mild enhancement).
    "adrenal": _phases((10.0, 40.0), (50.0, 90.0), (50.0, 85.0), (40.0, 70.0)),  # [P][approx]
    # --- kidney [Y][C][KITS19] -------------------------------------------------------------
    # Corticomedullary cortex 150-250: KiTS19 slices measured here have a kidney 90th
    # percentile of 123-255 HU (10th-90th pct), i.e. a cortex often saturating [0, 200].
    "kidney_cortex": _phases((30.0, 45.0), (150.0, 250.0), (120.0, 200.0), (90.0, 140.0)),
    "kidney_medulla": _phases((25.0, 40.0), (60.0, 110.0), (120.0, 200.0), (100.0, 150.0)),
    "urine": _same(0.0, 20.0),  # [P] unopacified collecting system, ureter
    "excreted_contrast": _phases((0.0, 20.0), (0.0, 20.0), (10.0, 60.0), (300.0, 1200.0)),  # [U]
    # --- renal masses [BOS][KIM][YNG][KITS19] -----------------------------------------------
    "cyst": _same(-5.0, 20.0),  # simple cyst, no enhancement
    "hyperdense_cyst": _same(50.0, 90.0),  # proteinaceous/haemorrhagic, no enhancement
    # Solid tumour means; lowered from the literature's ~100-150 HU clear-cell peak toward
    # the KiTS19 tumor medians measured here (heterogeneity and necrosis pull them down).
    "tumor_clear_cell": _phases((25.0, 45.0), (80.0, 140.0), (70.0, 125.0), (50.0, 90.0)),
    "tumor_papillary": _phases((30.0, 45.0), (40.0, 80.0), (55.0, 90.0), (50.0, 85.0)),
    "tumor_chromophobe": _phases((30.0, 45.0), (60.0, 110.0), (65.0, 110.0), (55.0, 90.0)),
    "necrosis": _same(5.0, 30.0),  # [KIM] non-enhancing necrotic centre
    # --- hollow organs [P][approx] ---------------------------------------------------------
    "bowel_wall": _phases((30.0, 45.0), (70.0, 130.0), (60.0, 110.0), (50.0, 80.0)),
    "bowel_fluid": _same(0.0, 30.0),
    "bowel_gas": _same(-1000.0, -850.0),
    "faeces": _same(-150.0, 30.0),  # soft stool; gas bubbles added separately
    # Positive oral contrast is diluted to ~150-600 HU [approx]; not every patient gets it.
    "oral_contrast": _same(150.0, 600.0),
    "bile": _same(0.0, 20.0),  # [P] gallbladder; bile does not enhance
    # --- scanner and foreign bodies [approx] ------------------------------------------------
    "table_shell": _same(100.0, 400.0),  # carbon-fibre skins of the table top
    "table_core": _same(-950.0, -800.0),  # foam core
    "metal": _same(2500.0, 3071.0),  # surgical clips, screws: clipped at the int16 top
    "calcification": _same(300.0, 900.0),  # aortic wall plaque
}

#: Tissues whose value does not depend on the contrast bolus.
_NON_ENHANCING: Final = frozenset(
    name for name, ranges in HU_TABLE.items() if len(set(ranges.values())) == 1
)


def hu_range(tissue: str, phase: str) -> Range:
    """The ``(low, high)`` mean HU of ``tissue`` in ``phase`` (see `HU_TABLE`).

    Example:
        >>> hu_range("kidney_cortex", "noncontrast")
        (30.0, 45.0)
    """
    return HU_TABLE[tissue][phase]


def draw_tissues(rng: np.random.Generator, phase: str) -> dict[str, float]:
    """One patient's mean HU of every tissue in ``phase``.

    A patient draws one bolus strength (dose, cardiac output, timing within the phase) that
    every enhancing tissue shares, plus its own jitter, so a strong bolus makes aorta, kidney and
    liver bright together, and tissues whose ranges coincide in a phase (cortex and medulla in
    the nephrographic phase) stay close. Every tissue is drawn every time, in table order, so
    the draws never depend on anything but the seed.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    bolus = rng.uniform()
    out = {}
    for name, ranges in HU_TABLE.items():
        lo, hi = ranges[phase]
        own = rng.uniform()
        if phase == "noncontrast" or name in _NON_ENHANCING:
            q = own
        else:
            q = float(np.clip(bolus + 0.3 * (own - 0.5), 0.0, 1.0))
        out[name] = lo + (hi - lo) * q
    return out


def draw_phase(rng: np.random.Generator, phases: tuple[str, ...] | None = None) -> str:
    """A contrast phase, drawn with `PHASE_WEIGHTS` among ``phases`` (default: all)."""
    allowed = PHASES if not phases else phases
    weights = np.array([w for p, w in zip(PHASES, PHASE_WEIGHTS, strict=True) if p in allowed])
    names = [p for p in PHASES if p in allowed]
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]
