"""Solid upper-abdominal organs of the phantom: liver, gallbladder, spleen, pancreas, adrenals.

Placement (canonical mm, +x patient left, +y posterior, +z superior):

* liver: right upper quadrant, its right lobe reaching down lateral and anterior to the right
  kidney (the lowest tip between ~45 mm below and ~20 mm above the kidney's centre), the left
  lobe in front of the stomach across the midline; hepatic veins converge on the IVC, portal
  branches fan out from the porta hepatis;
* gallbladder (absent in ~25 %, as after cholecystectomy): under the liver, anterior;
* spleen: left, posterolateral against the ribs, a crescent whose hilum faces the kidney; its
  lower tip near the upper half of the left kidney;
* pancreas: head in the duodenal C-loop right of the superior mesenteric vein at L1-L2, neck and
  body across the front of the SMA and aorta, tail up to the splenic hilum in front of the left
  kidney's upper pole; the splenic vein runs along its back;
* adrenals: thin inverted-Y glands above the kidneys' upper poles, the right behind the IVC, the
  left beside the aorta.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kidneyseg.data.anatomy import Body
from kidneyseg.data.kidneys import Kidney
from kidneyseg.data.shapes import Canvas, axis_rotation, capsule, ellipsoid, segment, texture
from kidneyseg.data.vessels import Vessels

Obstacle = tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]


def paint_liver(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    v: Vessels,
    right_kidney: Kidney,
) -> list[Obstacle]:
    """Right and left lobes with a lumpy surface, hepatic veins and portal branches."""
    g, b = canvas.grid, body
    tilt = np.deg2rad(rng.uniform(5.0, 20.0))
    semi = (rng.uniform(110.0, 150.0), 0.85 * (b.cav_b_ant + b.cav_b_post) / 2, 0.6 * b.cav_a)
    bottom = right_kidney.center[0] - rng.uniform(-20.0, 45.0)
    tip_x = -rng.uniform(0.55, 0.75) * b.cav_a
    center = (
        bottom + semi[0] * np.cos(tilt),
        -rng.uniform(0.0, 0.2) * b.cav_b_ant,
        tip_x + semi[0] * np.sin(tilt),
    )
    rot = axis_rotation(1, float(np.rad2deg(tilt)))
    left_c = (
        b.z_disc + rng.uniform(2.0, 3.0) * b.level_h,
        -0.55 * b.cav_b_ant,
        rng.uniform(0.0, 0.15) * b.cav_a,
    )
    left_s = (rng.uniform(40.0, 60.0), 0.32 * b.cav_b_ant, rng.uniform(0.35, 0.5) * b.cav_a)
    hu_tex = texture(rng, rng.uniform(3.0, 6.0), (15.0, 40.0))
    shape_tex = texture(rng, 0.05, (30.0, 80.0))
    for c, s, r in ((center, semi, rot), (left_c, left_s, np.eye(3))):
        found = ellipsoid(g, c, s, r)
        if found is None:
            continue
        box, u, r2 = found
        dz, dy, dx = g.offsets(box, (0, 0, 0))
        world = [dz, dy, dx]
        canvas.paint(box, r2 + shape_tex(world) < 1, hu["liver"] + hu_tex(world), organ="liver")
    # Vessels: hepatic veins to the IVC near the top, portal branches from the porta hepatis.
    hv_r, pv_r = rng.uniform(4.0, 6.0), rng.uniform(3.5, 5.0)
    iy, ix, _, _ = v.ivc

    def local(u: Sequence[float]) -> np.ndarray:
        return np.asarray(center) + rot @ (np.asarray(u) * np.asarray(semi))

    ivc_top = (center[0] + 0.45 * semi[0], iy - 4, ix)
    for u in ((0.2, -0.5, -0.5), (0.25, -0.6, 0.1), (0.2, 0.1, -0.6)):
        found = capsule(g, ivc_top, local(u), hv_r)
        if found is not None:
            canvas.paint(*found, hu["hepatic_vein"], organ="hepatic_vein")
    for target in (local((-0.2, 0.0, -0.5)), local((0.0, -0.5, -0.4)), np.asarray(left_c)):
        found = capsule(g, v.porta, target, pv_r)
        if found is not None:
            canvas.paint(*found, hu["portal_vein"], organ="portal_vein")
    return [(center, semi, rot), (left_c, left_s, np.eye(3))]


def paint_gallbladder(
    rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]
) -> list[Obstacle]:
    b = body
    present = rng.random() < 0.75
    c = (
        b.z_disc + rng.uniform(-0.3, 0.8) * b.level_h,
        -rng.uniform(0.4, 0.55) * b.cav_b_ant,
        -rng.uniform(0.2, 0.35) * b.cav_a,
    )
    s = (rng.uniform(28.0, 45.0), rng.uniform(12.0, 20.0), rng.uniform(12.0, 20.0))
    rot = axis_rotation(1, rng.uniform(-25.0, 25.0)) @ axis_rotation(2, rng.uniform(-30.0, 0.0))
    wall = rng.uniform(1.5, 3.0)
    if not present:
        return []
    found = ellipsoid(canvas.grid, c, s, rot)
    if found is not None:
        box, _, r2 = found
        canvas.paint(box, r2 < 1, hu["bowel_wall"], organ="gallbladder")
        canvas.paint(box, r2 < (1 - wall / min(s)) ** 2, hu["bile"], organ="gallbladder")
    return [(c, s, rot)]


def paint_spleen(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    left_kidney: Kidney,
    phase: str,
) -> list[Obstacle]:
    """A crescent against the left posterolateral wall, mottled in the arterial phase."""
    b = body
    semi = (rng.uniform(45.0, 62.0), rng.uniform(38.0, 52.0), rng.uniform(18.0, 26.0))
    bottom = left_kidney.center[0] + rng.uniform(-15.0, 35.0)
    psi = np.deg2rad(rng.uniform(55.0, 75.0))  # angle of the wall from the back, toward the side
    center = (
        bottom + semi[0],
        rng.uniform(0.2, 0.4) * b.cav_b_post,
        min(rng.uniform(0.68, 0.78) * b.cav_a, b.cav_a - semi[2] - 4.0),
    )
    rot = axis_rotation(0, float(np.rad2deg(psi)) - 90.0)
    normal = rot[:, 2]
    hollow_c = np.asarray(center) - 1.1 * semi[2] * normal
    hollow_s = (0.7 * semi[0], 0.6 * semi[1], semi[2])
    mottled = phase == "arterial"
    tex = texture(rng, rng.uniform(15.0, 25.0) if mottled else 3.0, (8.0, 20.0))
    found = ellipsoid(canvas.grid, center, semi, rot)
    if found is not None:
        box, u, r2 = found
        dz, dy, dx = canvas.grid.offsets(box, hollow_c)
        hu2 = sum(
            ((rot[0, j] * dz + rot[1, j] * dy + rot[2, j] * dx) / hollow_s[j]) ** 2 for j in range(3)
        )
        canvas.paint(box, (r2 < 1) & (hu2 >= 1), hu["spleen"] + tex(u), organ="spleen")
    return [(center, semi, rot)]


def paint_pancreas(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    v: Vessels,
) -> list[Obstacle]:
    """Uncinate, head, neck, body and tail as a tapering solid chain; splenic vein behind."""
    b = body
    sy, sx, _ = v.smv
    _, ay, ax, _ = v.sma
    l1, t12 = b.level_z("L1"), b.level_z("T12")
    points = [
        (b.level_z("L2") - 10.0, sy + 8.0, sx - 5.0),
        (b.level_z("L2") + rng.uniform(0.0, 0.3) * b.level_h, sy + rng.uniform(0.0, 6.0),
         sx - rng.uniform(14.0, 22.0)),
        (l1 - 0.1 * b.level_h, sy - 12.0, sx + 5.0),
        (l1 + 0.1 * b.level_h, ay - 16.0, 25.0),
        (t12 - rng.uniform(0.0, 0.3) * b.level_h, b.vb_y - 15.0, 0.5 * b.cav_a),
        (v.splenic_hilum[0] - 5.0, v.splenic_hilum[1] - 8.0, v.splenic_hilum[2] - 8.0),
    ]
    radii = [9.0, rng.uniform(13.0, 19.0), rng.uniform(8.0, 11.0), rng.uniform(9.0, 13.0),
             rng.uniform(8.0, 12.0), 6.0]
    lobules = texture(rng, 8.0 + 12.0 * body.adiposity, (6.0, 14.0))
    sv_r = rng.uniform(3.5, 5.0)
    for i in range(len(points) - 1):
        r0, r1 = radii[i], radii[i + 1]
        found = segment(canvas.grid, points[i], points[i + 1], max(r0, r1))
        if found is None:
            continue
        box, dist2, t = found
        r = r0 + (r1 - r0) * t
        dz, dy, dx = canvas.grid.offsets(box, (0, 0, 0))
        canvas.paint(box, dist2 < r * r, hu["pancreas"] + lobules([dz, dy, dx]), organ="pancreas")
    # Splenic vein along the back of the body and tail, to the splenic hilum.
    path = [v.confluence] + [
        (p[0], p[1] + r + sv_r + 1.0, p[2]) for p, r in zip(points[3:5], radii[3:5], strict=True)
    ] + [v.splenic_hilum]
    for p0, p1 in zip(path[:-1], path[1:], strict=True):
        found = capsule(canvas.grid, p0, p1, sv_r)
        if found is not None:
            canvas.paint(*found, hu["portal_vein"], organ="splenic_vein")
    return [(p, (r + 4.0, r + 4.0, r + 4.0), np.eye(3)) for p, r in zip(points, radii, strict=True)]


def paint_adrenals(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    v: Vessels,
    kidneys: Sequence[Kidney],
) -> None:
    """Inverted-Y adrenal limbs above each kidney's upper pole."""
    iy, ix, isy, _ = v.ivc
    ay, ax, ar = v.aorta
    for k in kidneys:
        pole = k.upper_pole
        r = rng.uniform(2.5, 3.5)
        if k.side < 0:
            apex = (pole[0] + rng.uniform(5.0, 25.0), iy + isy + rng.uniform(6.0, 12.0),
                    ix - rng.uniform(0.0, 8.0))
            limbs = ((-18.0, 16.0, 6.0), (-18.0, 14.0, -12.0))
        else:
            apex = (pole[0] + rng.uniform(-5.0, 15.0), ay + rng.uniform(0.0, 8.0),
                    ax + ar + rng.uniform(12.0, 20.0))
            limbs = ((-18.0, 18.0, 4.0), (-18.0, 14.0, -6.0))
        for dz, dy, dx in limbs:
            found = capsule(canvas.grid, apex, np.add(apex, (dz, dy, dx)), r)
            if found is not None:
                canvas.paint(*found, hu["adrenal"], organ="adrenal")
