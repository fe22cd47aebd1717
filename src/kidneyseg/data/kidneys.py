"""The labelled part of the phantom: kidneys, their fat, vessels and collecting system, masses.

Each kidney (canonical mm, +x patient left, +y posterior) lies in the paravertebral gutter
lateral to the psoas and in front of the quadratus lumborum and erector spinae, its centre near
the L1/L2 disc (the right one 8-25 mm lower, under the liver), its upper pole tilted medially
and backward, its hilum turned anteromedially. Perirenal fat surrounds it (thicker in fatter
patients), the renal artery and vein join its hilum (the right artery behind the IVC, the left
vein in front of the aorta), and the ureter leaves the pelvis to run down on the psoas.

Per contrast phase (`kidneyseg.data.tissues`): cortex and medulla alike at ~30-40 HU without
contrast; bright cortex and darker medullary pyramids in the arterial (corticomedullary)
phase; homogeneous in the venous (nephrographic) phase; in the delayed (excretory) phase the
pelvis, infundibula and ureter fill with dense contrast.

Masses: simple cysts (-5..20 HU, some hyperdense 50..90 HU; never enhancing) and tumors
(clear-cell-like: avid, heterogeneous, often with a necrotic centre; papillary-like: weak,
homogeneous; chromophobe-like: in between), endophytic or exophytic (bulging out of the kidney
into the perirenal fat). Labels: 1 kidney (parenchyma and collecting system inside the kidney),
3 cyst, 2 tumor, painted in that order so the tumor wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.data.anatomy import Body
from kidneyseg.data.shapes import Canvas, capsule, ellipsoid, rotation, texture
from kidneyseg.types import CYST, KIDNEY, TUMOR

#: Tumor subtypes and how often each is drawn (KiTS: ~70 % clear cell).
TUMOR_TYPES = ("clear_cell", "papillary", "chromophobe")
_TUMOR_P = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class Kidney:
    side: int  # -1 patient right (LPS x < 0), +1 left
    center: tuple[float, float, float]
    semi: tuple[float, float, float]  # long, antero-posterior, medio-lateral (mm)
    rot: npt.NDArray[np.float64]  # columns: long axis, AP axis, hilum (medial) axis

    @property
    def hilum(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.center) + self.rot[:, 2] * self.semi[2] * 0.8

    @property
    def upper_pole(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.center) + self.rot[:, 0] * self.semi[0]

    def world(self, local: Sequence[float]) -> npt.NDArray[np.float64]:
        """World point of kidney-local ``(long, ap, medial)`` mm."""
        return np.asarray(self.center) + self.rot @ np.asarray(local, dtype=np.float64)

    @property
    def obstacle(self) -> tuple:
        return (self.center, self.semi, self.rot)


def place_kidneys(rng: np.random.Generator, body: Body) -> list[Kidney]:
    """Right then left kidney, in front of the back muscles, near the L1/L2 disc."""
    kidneys = []
    z_left = body.z_disc + rng.uniform(-12.0, 12.0)
    for side in (-1, 1):
        semi = (rng.uniform(50.0, 63.0), rng.uniform(18.0, 24.0), rng.uniform(25.0, 31.0))
        medial = -side  # toward the midline along x
        coronal, sagittal = np.deg2rad(rng.uniform(8, 18)), np.deg2rad(rng.uniform(5, 15))
        long_axis = np.array([1.0, np.tan(sagittal), medial * np.tan(coronal)])
        long_axis /= np.linalg.norm(long_axis)
        turn = np.deg2rad(rng.uniform(25.0, 40.0))  # hilum turned anteriorly (-y)
        hilum = np.array([0.0, -np.sin(turn), medial * np.cos(turn)])
        hilum -= (hilum @ long_axis) * long_axis
        hilum /= np.linalg.norm(hilum)
        ap = np.cross(hilum, long_axis)
        rot = np.stack([long_axis, ap, hilum], axis=1)
        x = min(rng.uniform(62.0, 82.0), body.cav_a - semi[2] - 12.0)
        y = body.vb_y + rng.uniform(0.0, 14.0)
        # Keep the kidney's back in front of the erector spinae over its whole width.
        half_y = float(np.sqrt(np.sum((rot[1] * np.asarray(semi)) ** 2)))
        half_x = float(np.sqrt(np.sum((rot[2] * np.asarray(semi)) ** 2)))
        front = min(body.erector_front(x + dx) for dx in np.linspace(-half_x, half_x, 9))
        y = min(y, front - half_y - 2.0)
        z = z_left - (rng.uniform(8.0, 25.0) if side < 0 else 0.0)  # the liver pushes it down
        kidneys.append(Kidney(side, (z, y, side * x), semi, rot))
    return kidneys


def paint_perirenal_fat(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    kidneys: Sequence[Kidney],
    hu: dict[str, float],
) -> None:
    """Fat around each kidney (a fat plane that separates it from liver, spleen and bowel)."""
    for k in kidneys:
        pad = 4.0 + 22.0 * body.adiposity * rng.uniform(0.6, 1.3)
        septa = rng.random() < 0.5
        tex = texture(rng, 1.0, (6.0, 15.0))
        semi = (k.semi[0] + pad + 4.0, k.semi[1] + pad, k.semi[2] + pad)
        center = k.world((-0.15 * pad, 0.2 * pad, -0.2 * pad))
        found = ellipsoid(canvas.grid, center, semi, k.rot)
        if found is None:
            continue
        box, u, r2 = found
        value: Any = hu["perirenal_fat"]
        if septa:  # thin bridging septa
            value = np.where(np.abs(tex(u)) < 0.06, value + 60.0, value).astype(np.float32)
        canvas.paint(box, r2 < 1, value, organ="perirenal_fat")


def paint_renal_vessels(
    canvas: Canvas,
    kidneys: Sequence[Kidney],
    aorta: tuple[float, float, float],
    ivc: tuple[float, float, float, float],
    hu: dict[str, float],
) -> None:
    """Renal veins to the IVC (the left one in front of the aorta), arteries from the aorta."""
    g = canvas.grid
    ao_y, ao_x, ao_r = aorta
    iy, ix, isy, _ = ivc
    for k in kidneys:
        h = k.hilum
        if k.side < 0:
            vein = [(h, np.array([h[0], iy, ix]))]
            behind_ivc = np.array([h[0] + 3, iy + isy + 4.0, ix])
            artery = [(np.array([h[0] + 5, ao_y, ao_x]), behind_ivc), (behind_ivc, h)]
        else:
            front = np.array([h[0], ao_y - ao_r - 4.0, ao_x])
            vein = [(h, front), (front, np.array([h[0], iy, ix]))]
            artery = [(np.array([h[0] + 5, ao_y, ao_x]), h + np.array([5.0, -4.0, 0.0]))]
        for p0, p1 in vein:
            found = capsule(g, p0, p1, 4.5)
            if found is not None:
                canvas.paint(*found, hu["renal_vein"], organ="renal_vein")
        for p0, p1 in artery:
            found = capsule(g, p0, p1, 2.8)
            if found is not None:
                canvas.paint(*found, hu["aorta"], organ="renal_artery")


def paint_ureters(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    kidneys: Sequence[Kidney],
    hu: dict[str, float],
) -> None:
    """Ureters from each renal pelvis down the front of the psoas; in the excretory phase
    some segments are filled with contrast (peristalsis leaves others empty)."""
    g = canvas.grid
    lo = (g.z[0] if len(g.z) else 0.0) - 20.0
    for k in kidneys:
        r = rng.uniform(2.0, 3.0)
        filled = rng.random(3) < 0.65
        start = k.world((-0.25 * k.semi[0], 0.0, 0.9 * k.semi[2]))
        x = k.side * (body.vb_rx * 1.05 + rng.uniform(8.0, 16.0))
        mid = np.array([start[0] - 40.0, body.vb_y - 0.2 * body.vb_ry - 12.0, x])
        end = np.array([min(lo, mid[0] - 1), body.vb_y - 0.5 * body.vb_ry - 14.0, 0.9 * x])
        for (p0, p1), full in zip(((start, mid), (mid, end)), filled, strict=False):
            found = capsule(g, p0, p1, r)
            if found is not None:
                value = hu["excreted_contrast"] if full else hu["urine"]
                canvas.paint(*found, value, organ="ureter")


def _pyramids(rng: np.random.Generator, k: Kidney, cortex_t: float) -> list[tuple]:
    """Medullary pyramids: cones from a papilla by the sinus out to under the cortex.

    Two rows (anterior and posterior lip of the kidney) of 4-6 cones each, spread along the
    long axis, pointing laterally away from the hilum; returns ``(apex, direction, height,
    base radius)`` in kidney-local mm.
    """
    semi = np.asarray(k.semi)
    sinus = np.array([0.0, 0.0, 0.3 * semi[2]])
    per_row = int(rng.integers(4, 7))
    out = []
    for row in (-1, 1):
        for alpha in np.linspace(-1.15, 1.15, per_row) + rng.uniform(-0.12, 0.12, per_row):
            beta = row * np.deg2rad(rng.uniform(35.0, 65.0))
            d = np.array(
                [np.sin(alpha), np.cos(alpha) * np.sin(beta), -np.cos(alpha) * np.cos(beta)]
            )
            # Distance from the sinus centre to the kidney surface along d.
            qa = float(np.sum((d / semi) ** 2))
            qb = float(2 * np.sum(sinus * d / semi**2))
            qc = float(np.sum((sinus / semi) ** 2) - 1)
            t_surf = (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
            t_apex = rng.uniform(0.2, 0.35) * t_surf
            height = max(t_surf - cortex_t - t_apex, 3.0)
            out.append((sinus + t_apex * d, d, height, rng.uniform(7.0, 11.0)))
    return out


def paint_kidney(rng: np.random.Generator, canvas: Canvas, k: Kidney, hu: dict[str, float]) -> None:
    """Cortex, medullary pyramids, sinus fat, renal pelvis, infundibula and calyces."""
    cortex_t = rng.uniform(5.0, 8.0)
    cortex_hu = hu["kidney_cortex"] + rng.uniform(-5.0, 5.0)
    medulla_hu = hu["kidney_medulla"] + rng.uniform(-5.0, 5.0)
    tex = texture(rng, 3.0, (8.0, 20.0))
    infundibulum_r, calyx_r = rng.uniform(2.5, 4.0), rng.uniform(2.5, 3.5)
    pyramids = _pyramids(rng, k, cortex_t)
    found = ellipsoid(canvas.grid, k.center, k.semi, k.rot)
    if found is None:
        return
    box, u, r2 = found
    L, ap, lat = k.semi

    def local_ellipsoid(center: tuple[float, float, float], semi: tuple[float, ...]) -> Any:
        return sum(((u[j] - center[j]) / semi[j]) ** 2 for j in range(3)) < 1

    inside = r2 < 1
    notch = local_ellipsoid((0, 0, 0.95 * lat), (0.35 * L, 0.55 * ap, 0.5 * lat))
    parenchyma = inside & ~notch
    pelvis = inside & local_ellipsoid((0, 0, 0.45 * lat), (0.3 * L, 0.35 * ap, 0.4 * lat))
    medulla = np.zeros(r2.shape, bool)
    collecting = pelvis.copy()
    # Each pyramid is evaluated over the sub-box around it only (cheap at 0.7 mm voxels).
    for apex, d, height, base in pyramids:
        world = k.world(apex + d * height / 2)
        half = np.full(3, height / 2 + base + 2.0)
        sub = canvas.grid.box(world, half)
        if sub is None:
            continue
        rel = tuple(
            slice(max(s.start - b.start, 0), max(min(s.stop, b.stop) - b.start, 0))
            for s, b in zip(sub, box, strict=True)
        )
        w = [np.broadcast_to(u[j], r2.shape)[rel] - np.float32(apex[j]) for j in range(3)]
        along = w[0] * np.float32(d[0]) + w[1] * np.float32(d[1]) + w[2] * np.float32(d[2])
        perp2 = w[0] ** 2 + w[1] ** 2 + w[2] ** 2 - along**2
        cone = (along > 0) & (along < height) & (perp2 < (base * along / height) ** 2)
        medulla[rel] |= cone
        tip = w[0] ** 2 + w[1] ** 2 + w[2] ** 2 < calyx_r**2  # minor calyx cupping the papilla
        collecting[rel] |= tip
    # Infundibula: the collecting system's branches to the upper and lower calyces.
    for end in ((0.6 * L, 0.0, 0.05 * lat), (-0.6 * L, 0.0, 0.05 * lat)):
        d = np.asarray(end) - np.array([0.0, 0.0, 0.35 * lat])
        t = np.clip((u[0] * d[0] + u[1] * d[1] + (u[2] - 0.35 * lat) * d[2]) / float(d @ d), 0, 1)
        dist2 = (
            (u[0] - t * d[0]) ** 2 + (u[1] - t * d[1]) ** 2 + (u[2] - 0.35 * lat - t * d[2]) ** 2
        )
        collecting |= dist2 < infundibulum_r**2
    collecting &= inside
    canvas.paint(box, notch & inside & ~pelvis, hu["renal_sinus_fat"], organ="renal_sinus_fat")
    canvas.paint(box, parenchyma, cortex_hu + tex(u), KIDNEY, organ="kidney_cortex")
    canvas.paint(box, parenchyma & medulla, medulla_hu, KIDNEY, organ="kidney_medulla")
    canvas.paint(box, collecting, hu["excreted_contrast"], KIDNEY, organ="collecting_system")


def paint_adrenals(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    aorta: tuple[float, float, float],
    ivc: tuple[float, float, float, float],
    kidneys: Sequence[Kidney],
) -> None:
    """Inverted-Y adrenal limbs above each kidney's upper pole (the right behind the IVC, the
    left beside the aorta); drawn for both kidneys' places, as after a nephrectomy."""
    iy, ix, isy, _ = ivc
    ay, ax, ar = aorta
    for k in kidneys:
        pole = k.upper_pole
        r = rng.uniform(2.5, 3.5)
        if k.side < 0:
            apex = (
                pole[0] + rng.uniform(5.0, 25.0),
                iy + isy + rng.uniform(6.0, 12.0),
                ix - rng.uniform(0.0, 8.0),
            )
            limbs = ((-18.0, 16.0, 6.0), (-18.0, 14.0, -12.0))
        else:
            apex = (
                pole[0] + rng.uniform(-5.0, 15.0),
                ay + rng.uniform(0.0, 8.0),
                ax + ar + rng.uniform(12.0, 20.0),
            )
            limbs = ((-18.0, 18.0, 4.0), (-18.0, 14.0, -6.0))
        for dz, dy, dx in limbs:
            found = capsule(canvas.grid, apex, np.add(apex, (dz, dy, dx)), r)
            if found is not None:
                canvas.paint(*found, hu["adrenal"], organ="adrenal")


def mass_center(rng: np.random.Generator, k: Kidney, radius: float, exophytic: bool) -> tuple:
    """Centre of a mass on kidney ``k``: inside it (endophytic) or bulging out (exophytic)."""
    d = rng.normal(size=3)
    d[2] = -abs(d[2])  # lateral/anterior/posterior rim rather than the hilum
    d /= np.linalg.norm(d)
    surface = d / np.sqrt(np.sum((d / np.asarray(k.semi)) ** 2))
    depth = np.linalg.norm(surface)
    if exophytic:
        local = surface + d * radius * rng.uniform(0.1, 0.5)
    else:
        local = surface * max(0.0, 1 - (radius * rng.uniform(1.0, 1.3)) / depth)
    return tuple(np.asarray(k.center) + k.rot @ local)


def paint_masses(
    rng: np.random.Generator,
    canvas: Canvas,
    kidneys: Sequence[Kidney],
    hu: dict[str, float],
    phase: str,
) -> tuple[int, int, list[str]]:
    """Cysts then tumors on the kidneys present (tumor painted last, so it wins).

    Returns the number of tumors and cysts and the tumors' subtypes.
    """
    g = canvas.grid
    n_cysts = int(rng.integers(1, 3)) if rng.random() < 0.35 else 0
    n_tumors = int(rng.integers(1, 4)) if rng.random() < 0.9 else 0
    for _ in range(n_cysts):
        k = kidneys[int(rng.integers(len(kidneys)))]
        r = np.exp(rng.uniform(np.log(2.5), np.log(20.0)))
        c = mass_center(rng, k, r, rng.random() < 0.6)
        found = ellipsoid(g, c, r * rng.uniform(0.9, 1.1, size=3), rotation(rng))
        cyst_hu = hu["hyperdense_cyst"] if rng.random() < 0.1 else hu["cyst"]
        cyst_hu += rng.uniform(-3.0, 3.0)
        if found is not None:
            canvas.paint(found[0], found[2] < 1, cyst_hu, CYST, organ="cyst")
    subtypes = []
    for i in range(n_tumors):
        k = kidneys[int(rng.integers(len(kidneys)))]
        # Diameters log-uniform: the main tumor 15-95 mm (KiTS median ~40 mm), satellites 5-30.
        lo, hi = (7.5, 47.5) if i == 0 else (2.5, 15.0)
        r = np.exp(rng.uniform(np.log(lo), np.log(hi)))
        exophytic = rng.random() < 0.5 or r > 0.8 * k.semi[1]
        c = mass_center(rng, k, r, exophytic)
        found = ellipsoid(g, c, r * rng.uniform(0.8, 1.2, size=3), rotation(rng))
        subtype = TUMOR_TYPES[int(rng.choice(len(TUMOR_TYPES), p=_TUMOR_P))]
        subtypes.append(subtype)
        base = hu[f"tumor_{subtype}"] + rng.uniform(-10.0, 10.0)
        amp = {"clear_cell": rng.uniform(12.0, 25.0), "papillary": rng.uniform(3.0, 8.0)}.get(
            subtype, rng.uniform(6.0, 12.0)
        )
        # Heterogeneity is mostly uneven enhancement: faint without contrast.
        tex = texture(
            rng, amp * (0.35 if phase == "noncontrast" else 1.0), (0.4 * r + 4, 1.2 * r + 8)
        )
        shape_tex = texture(rng, 0.12, (0.5 * r + 3, r + 6))
        p_necrosis = 0.6 if subtype == "clear_cell" else 0.25
        necrosis = rng.uniform(0.15, 0.35) if r > 20 and rng.random() < p_necrosis else 0.0
        necrosis_hu = np.float32(hu["necrosis"] + rng.uniform(-5.0, 5.0))
        if found is None:
            continue
        box, u, r2 = found
        value = base + tex(u)
        if necrosis:  # an irregular necrotic centre
            value = np.where(r2 + shape_tex(u) < necrosis, necrosis_hu, value)
        value = np.clip(value, -5.0, 260.0).astype(np.float32)
        canvas.paint(box, r2 < 1, value, TUMOR, organ="tumor")
    return n_tumors, n_cysts, subtypes


__all__ = [
    "TUMOR_TYPES",
    "Kidney",
    "mass_center",
    "paint_adrenals",
    "paint_kidney",
    "paint_masses",
    "paint_perirenal_fat",
    "paint_renal_vessels",
    "paint_ureters",
    "place_kidneys",
]
