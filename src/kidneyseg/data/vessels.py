"""Great vessels of the phantom: aorta and its branches, IVC, mesenteric and portal veins.

Placement (canonical mm, +x patient left, +y posterior): the aorta lies just in front of the
vertebral body, left of the midline, and divides into the common iliac arteries at L4; the IVC
lies right of the aorta at about its depth, is formed by the iliac veins at L5, and above the
renal veins carries the enhanced renal return (so it is brighter there in the arterial phase,
the "mixing" of unenhanced infrarenal and enhanced renal blood). The superior mesenteric
artery leaves the aorta at L1 and runs down in front of it with the superior mesenteric vein on
its right; behind the pancreatic neck the SMV and the splenic vein form the portal vein.
Small mesenteric branches and lymph nodes speckle the fat between the bowel loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidneyseg.data.anatomy import Body
from kidneyseg.data.shapes import Canvas, capsule, ellipsoid, segment, tube


@dataclass(frozen=True)
class Vessels:
    """Where the great vessels run (mm)."""

    aorta: tuple[float, float, float]  # y, x, radius at the renal arteries
    ivc: tuple[float, float, float, float]  # y, x, semi y, semi x
    bifurcation_z: float
    sma: tuple[float, float, float, float]  # origin z, y, x, radius
    smv: tuple[float, float, float]  # y, x, radius
    confluence: tuple[float, float, float]  # portal confluence (z, y, x)
    porta: tuple[float, float, float]  # porta hepatis (z, y, x)
    splenic_hilum: tuple[float, float, float]


def draw_vessels(rng: np.random.Generator, body: Body) -> Vessels:
    b = body
    ao_r = rng.uniform(9.0, 12.5)
    aorta = (b.vb_front - ao_r - rng.uniform(1.0, 5.0), rng.uniform(6.0, 18.0), ao_r)
    ivc = (
        aorta[0] + rng.uniform(-6.0, 4.0),
        -rng.uniform(16.0, 28.0),
        rng.uniform(7.0, 11.0),
        rng.uniform(10.0, 15.0),
    )
    bif = b.level_z("L4") + rng.uniform(-0.3, 0.3) * b.level_h
    sma_r = rng.uniform(3.5, 5.0)
    sma = (
        b.level_z("L1") + rng.uniform(-0.2, 0.3) * b.level_h,
        aorta[0] - ao_r - rng.uniform(8.0, 14.0),
        aorta[1] - rng.uniform(0.0, 5.0),
        sma_r,
    )
    smv = (sma[1] + rng.uniform(-3.0, 3.0), sma[2] - rng.uniform(10.0, 16.0), rng.uniform(5.0, 7.0))
    conf = (b.level_z("L1") + rng.uniform(0.0, 0.3) * b.level_h, smv[0] + 4.0, smv[1] - 2.0)
    porta = (
        conf[0] + rng.uniform(35.0, 55.0),
        conf[1] + rng.uniform(0.0, 10.0),
        -rng.uniform(0.25, 0.35) * b.cav_a,
    )
    hilum = (
        b.level_z("T12") + rng.uniform(-0.3, 0.3) * b.level_h,
        0.1 * b.cav_b_post,
        0.6 * b.cav_a,
    )
    return Vessels(aorta, ivc, bif, sma, smv, conf, porta, hilum)


def paint_vessels(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    v: Vessels,
    hu: dict[str, float],
    renal_vein_z: float,
) -> None:
    """Aorta (with wall calcification in some), iliac arteries and veins, IVC, SMA, SMV."""
    g = canvas.grid
    lo = (g.z[0] if len(g.z) else 0.0) - 20.0
    hi = (g.z[-1] if len(g.z) else 0.0) + 20.0
    ao_y, ao_x, ao_r = v.aorta
    taper = rng.uniform(0.8, 0.92)
    iliac_r, iliac_x = rng.uniform(5.0, 7.0), rng.uniform(30.0, 45.0)
    calcified = rng.random() < 0.4
    plaques = [
        (rng.uniform(lo, hi), rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.5))
        for _ in range(int(rng.integers(3, 13)))
    ]
    vein_x, vein_r = rng.uniform(28.0, 38.0), rng.uniform(6.0, 8.0)
    # Aorta: from the top down to the bifurcation, tapering; then the common iliac arteries.
    top, bif = max(hi, v.bifurcation_z + 1), v.bifurcation_z
    knots = [(bif, ao_y + 2, ao_x, taper * ao_r, taper * ao_r), (top, ao_y - 2, ao_x, ao_r, ao_r)]
    found = tube(g, knots)
    if found is not None:
        canvas.paint(*found, hu["aorta"], organ="aorta")
    for side in (-1, 1):
        end = (min(lo, bif - 1), ao_y + 8, side * iliac_x)
        found = capsule(g, (bif + 3, ao_y + 2, ao_x), end, iliac_r)
        if found is not None:
            canvas.paint(*found, hu["aorta"], organ="iliac_artery")
    if calcified:
        for z, angle, r in plaques:
            if not bif < z < top:
                continue
            c = (z, ao_y + ao_r * np.cos(angle), ao_x + ao_r * np.sin(angle))
            plaque = ellipsoid(g, c, (r, r, r))
            if plaque is not None:
                canvas.paint(plaque[0], plaque[2] < 1, hu["calcification"], organ="calcification")
    # IVC: formed by the iliac veins below the bifurcation, darker below the renal veins in the
    # arterial phase (unenhanced leg return), brighter above (enhanced renal return).
    iy, ix, sy, sx = v.ivc
    confluence = bif - rng.uniform(10.0, 25.0)
    for z0, z1, tissue in (
        (confluence, renal_vein_z, "ivc_infrarenal"),
        (renal_vein_z, max(top, renal_vein_z + 1), "ivc_suprarenal"),
    ):
        if z1 <= z0:
            continue
        found = tube(g, [(z0, iy, ix, sy, sx), (z1, iy - 2, ix, sy * 1.05, sx * 1.05)])
        if found is not None:
            canvas.paint(*found, hu[tissue], organ="ivc")
    for side in (-1, 1):
        end = (min(lo, confluence - 1), iy + 14, side * vein_x)
        found = capsule(g, (confluence + 3, iy, ix), end, vein_r)
        if found is not None:
            canvas.paint(*found, hu["ivc_infrarenal"], organ="iliac_vein")
    # SMA: a short anterior course from the aorta, then down in front of it; SMV on its right.
    z0, sy_, sx_, r = v.sma
    bend = (z0 - 12, sy_, sx_)
    for p0, p1 in (((z0, ao_y - ao_r + 2, ao_x), bend), (bend, (lo, sy_ - 10, sx_ - 4))):
        found = capsule(g, p0, p1, r)
        if found is not None:
            canvas.paint(*found, hu["aorta"], organ="mesenteric_vessel")
    vy, vx, vr = v.smv
    found = capsule(g, (lo, vy - 10, vx - 6), v.confluence, vr)
    if found is not None:
        canvas.paint(*found, hu["portal_vein"], organ="mesenteric_vessel")


def paint_portal_vein(
    rng: np.random.Generator, canvas: Canvas, v: Vessels, hu: dict[str, float]
) -> None:
    """The portal vein, from the confluence behind the pancreatic neck to the porta hepatis."""
    found = capsule(canvas.grid, v.confluence, v.porta, rng.uniform(6.0, 8.0))
    if found is not None:
        canvas.paint(*found, hu["portal_vein"], organ="portal_vein")


def paint_mesentery(
    rng: np.random.Generator, canvas: Canvas, body: Body, v: Vessels, hu: dict[str, float]
) -> None:
    """Small mesenteric vessels and lymph nodes in the fat between the bowel loops.

    Short branches radiate from the SMA/SMV root toward the bowel; nodes are 3-7 mm soft-tissue
    ovals (small kidney look-alikes without contrast). Both only replace fat.
    """
    b, g = body, canvas.grid
    root = np.array([v.sma[0] - 20.0, v.smv[0], v.smv[1]])
    n_vessels, n_nodes = int(rng.integers(25, 55)), int(rng.integers(4, 16))
    ends = np.column_stack(
        [
            rng.uniform(b.z_disc - 4.0 * b.level_h, b.z_disc + 0.3 * b.level_h, n_vessels),
            rng.uniform(-0.8 * b.cav_b_ant, b.vb_front - 20.0, n_vessels),
            rng.uniform(-0.6 * b.cav_a, 0.6 * b.cav_a, n_vessels),
        ]
    )
    frac, lengths = rng.uniform(0.3, 0.8, n_vessels), rng.uniform(15.0, 40.0, n_vessels)
    radii, arterial = rng.uniform(1.2, 2.5, n_vessels), rng.random(n_vessels) < 0.5
    nodes = ends[:n_nodes] + rng.normal(scale=10.0, size=(n_nodes, 3))
    node_r = rng.uniform(1.5, 3.5, size=(n_nodes, 3))
    for end, f, length, r, art in zip(ends, frac, lengths, radii, arterial, strict=True):
        start = root + f * (end - root)
        d = end - start
        stop = start + d * min(1.0, length / max(float(np.linalg.norm(d)), 1e-6))
        found = segment(g, start, stop, r)
        if found is None:
            continue
        box, dist2, _ = found
        before = canvas.hu[box]
        mask = (dist2 < r * r) & (before > -200) & (before < -30)
        canvas.paint(box, mask, hu["aorta" if art else "portal_vein"], organ="mesenteric_vessel")
    for c, semi in zip(nodes, node_r, strict=True):
        node = ellipsoid(g, c, semi)
        if node is not None:
            box, _, r2 = node
            before = canvas.hu[box]
            mask = (r2 < 1) & (before > -200) & (before < -30)
            canvas.paint(box, mask, hu["adrenal"], organ="lymph_node")
