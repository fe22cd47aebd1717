"""Solid organs and bones of the phantom: liver, gallbladder, spleen, pancreas, vertebrae,
ribs, iliac wings.

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
* vertebrae level by level (`kidneyseg.data.anatomy.LEVELS`): body with cortical shell and
  cancellous marrow, endplates, discs, pedicles, laminae, spinous and transverse processes,
  facets, the canal; ribs 7-12 (marrow, costal cartilage; 11 and 12 float); iliac wings below
  the crest with iliacus inside and gluteal muscles outside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kidneyseg.data.anatomy import L1_INDEX, LEVELS, TP_REACH, WIDTH, Body
from kidneyseg.data.kidneys import Kidney
from kidneyseg.data.shapes import (
    Canvas,
    Mask,
    axis_rotation,
    box2d,
    capsule,
    ellipsoid,
    outline,
    segment,
    texture,
)
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

    def local(frac: Sequence[float]) -> np.ndarray:
        return np.asarray(center) + rot @ (np.asarray(frac) * np.asarray(semi))

    ivc_top = (center[0] + 0.45 * semi[0], iy - 4, ix)
    for frac in ((0.2, -0.5, -0.5), (0.25, -0.6, 0.1), (0.2, 0.1, -0.6)):
        vein = capsule(g, ivc_top, local(frac), hv_r)
        if vein is not None:
            canvas.paint(*vein, hu["hepatic_vein"], organ="hepatic_vein")
    for target in (local((-0.2, 0.0, -0.5)), local((0.0, -0.5, -0.4)), np.asarray(left_c)):
        vein = capsule(g, v.porta, target, pv_r)
        if vein is not None:
            canvas.paint(*vein, hu["portal_vein"], organ="portal_vein")
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
    # Posterolateral: about as deep as the vertebral body, against the ribs.
    center = (
        bottom + semi[0],
        min(b.vb_y + rng.uniform(-5.0, 15.0), 0.8 * b.cav_b_post - 10.0),
        min(rng.uniform(0.68, 0.78) * b.cav_a, b.cav_a - semi[2] - 4.0),
    )
    rot = axis_rotation(0, float(np.rad2deg(psi)) - 90.0)
    normal = rot[:, 2]
    hollow_c = np.asarray(center) - 1.1 * semi[2] * normal
    hollow_s = (0.7 * semi[0], 0.6 * semi[1], semi[2])
    arciform = rng.uniform(15.0, 25.0)  # drawn in every phase: the anatomy must not change
    tex = texture(rng, arciform if phase == "arterial" else 3.0, (8.0, 20.0))
    found = ellipsoid(canvas.grid, center, semi, rot)
    if found is not None:
        box, u, r2 = found
        dz, dy, dx = canvas.grid.offsets(box, hollow_c)
        hu2 = sum(
            ((rot[0, j] * dz + rot[1, j] * dy + rot[2, j] * dx) / hollow_s[j]) ** 2
            for j in range(3)
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
        (
            b.level_z("L2") + rng.uniform(0.0, 0.3) * b.level_h,
            sy + rng.uniform(0.0, 6.0),
            sx - rng.uniform(14.0, 22.0),
        ),
        (l1 - 0.1 * b.level_h, sy - 12.0, sx + 5.0),
        (l1 + 0.1 * b.level_h, ay - 16.0, 25.0),
        (t12 - rng.uniform(0.0, 0.3) * b.level_h, b.vb_y - 15.0, 0.5 * b.cav_a),
        (v.splenic_hilum[0] - 5.0, v.splenic_hilum[1] - 8.0, v.splenic_hilum[2] - 8.0),
    ]
    radii = [
        9.0,
        rng.uniform(13.0, 19.0),
        rng.uniform(8.0, 11.0),
        rng.uniform(9.0, 13.0),
        rng.uniform(8.0, 12.0),
        6.0,
    ]
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
    path = (
        [v.confluence]
        + [
            (p[0], p[1] + r + sv_r + 1.0, p[2])
            for p, r in zip(points[3:5], radii[3:5], strict=True)
        ]
        + [v.splenic_hilum]
    )
    for p0, p1 in zip(path[:-1], path[1:], strict=True):
        vein = capsule(canvas.grid, p0, p1, sv_r)
        if vein is not None:
            canvas.paint(*vein, hu["portal_vein"], organ="splenic_vein")
    return [(p, (r + 4.0, r + 4.0, r + 4.0), np.eye(3)) for p, r in zip(points, radii, strict=True)]


def paint_spine(rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]) -> None:
    """Vertebrae level by level: body, endplates, disc, arch, spinous/transverse processes."""
    g, b = canvas.grid, body
    disc_h = rng.uniform(7.0, 11.0)
    tp_scale, tp_t = rng.uniform(0.9, 1.1), rng.uniform(5.0, 8.0)
    pixel = float(abs(g.x[1] - g.x[0])) if len(g.x) > 1 else 1.0
    shell = max(1.8, 0.7 * pixel)  # keep the cortex visible on coarse grids
    reach = max(TP_REACH.values()) * tp_scale + 6
    win = box2d(g, b.vb_front - 4, b.spinous_y + 4, -reach, reach)
    if win is None:
        return
    Y, X = g.y[win[0]][:, None], g.x[win[1]][None, :]
    canal = ((X / b.canal_rx) ** 2 + ((Y - b.canal_y) / b.canal_ry) ** 2) < 1
    ring = (X / (b.canal_rx + 6)) ** 2 + ((Y - b.canal_y) / (b.canal_ry + 5)) ** 2 < 1
    ring &= ~canal & (Y > b.vb_y + 0.5 * b.vb_ry)
    lamina = ring & (Y > b.canal_y)
    spinous = (np.abs(X) < b.spinous_w / 2) & (Y > b.canal_y + b.canal_ry) & (Y < b.spinous_y)
    facets = np.zeros_like(canal)
    for side in (-1, 1):
        facets |= ((X - side * (b.canal_rx + 5)) / 5) ** 2 + (
            (Y - b.canal_y - 0.5 * b.canal_ry) / 6
        ) ** 2 < 1
    templates = {}
    for name in LEVELS:
        rx, ry = b.vb_rx * WIDTH[name], b.vb_ry * (0.95 + 0.05 * WIDTH[name])
        d = (X / rx) ** 2 + ((Y - b.vb_y) / ry) ** 2
        flat = Y < b.vb_y + 0.85 * ry
        tp_len = TP_REACH[name] * tp_scale
        ax = np.abs(X)
        tp = (ax > b.canal_rx) & (ax < tp_len)
        tp = tp & (np.abs(Y - (b.canal_y - 1 + 0.12 * (ax - b.canal_rx))) < tp_t / 2)
        templates[name] = {
            "outer": (d < 1) & flat,
            "inner": (d < (1 - shell / ry) ** 2) & flat & (Y < b.vb_y + 0.85 * ry - shell),
            "disc": (d < 1.1) & flat,
            "tp": tp,
        }
    for k, z in enumerate(g.z):
        p = (z - b.z_disc) / b.level_h
        n = int(np.floor(p))
        f = p - n
        name = LEVELS[int(np.clip(n + L1_INDEX, 0, len(LEVELS) - 1))]
        t = templates[name]
        delta = disc_h / (2 * b.level_h)
        sl_hu, sl_id = canvas.hu[k, win[0], win[1]], None
        if canvas.organ_ids is not None:
            sl_id = canvas.organ_ids[k, win[0], win[1]]
        paints: list[tuple[Mask, float, str]] = []
        if f < delta or f > 1 - delta:
            paints.append((t["disc"], hu["intervertebral_disc"], "intervertebral_disc"))
            paints.append((facets | spinous, hu["posterior_elements"], "vertebra"))
        else:
            endplate = min(f - delta, 1 - delta - f) * b.level_h < 1.2
            paints.append((t["outer"], hu["cortical_bone"], "vertebra"))
            if not endplate:
                paints.append((t["inner"], hu["cancellous_bone"], "vertebra"))
            if 0.45 <= f <= 0.9:
                paints.append((ring, hu["posterior_elements"], "vertebra"))
            if 0.5 <= f <= 0.8:
                paints.append((t["tp"], hu["posterior_elements"], "vertebra"))
            if f < 0.45:
                paints.append((lamina | facets, hu["posterior_elements"], "vertebra"))
            if f < 0.75:
                paints.append((spinous, hu["posterior_elements"], "vertebra"))
        paints.append((canal, hu["csf"], "spinal_canal"))
        for mask, value, organ in paints:
            sl_hu[mask] = value
            if sl_id is not None:
                sl_id[mask] = canvas._organ(organ)


def _wall_point(body: Body, psi: float, depth: float) -> tuple[float, float]:
    """(y, x>=0) on the body outline shrunk by ``depth`` mm, at angle psi from the back."""
    s, c = np.sin(psi), np.cos(psi)
    a = body.a - body.fat_lat - depth
    if c >= 0:
        bb, p = body.b_post - body.fat_post - depth, body.p_post
    else:
        bb, p = body.b_ant - body.fat_ant - depth, body.p_ant
    return float(np.sign(c) * bb * abs(c) ** (2 / p)), float(a * abs(s) ** (2 / p))


def paint_ribs(rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]) -> None:
    """Ribs 12 to 7 on each side: head at their vertebra, shaft along the wall, sloping down.

    Ribs 11 and 12 float and end laterally; 7-10 continue as costal cartilage toward the front.
    """
    g, b = canvas.grid, body
    xc, _, sx, _, _ = b.erector
    for side in (-1, 1):
        for rib in (12, 11, 10, 9, 8, 7):
            z_head = b.level_z(f"T{rib}") + rng.uniform(0.0, 8.0)
            radius, drop = rng.uniform(4.0, 5.5), rng.uniform(45.0, 85.0)
            if rib == 12:
                psi_end = rng.uniform(0.9, 1.3)
            elif rib == 11:
                psi_end = rng.uniform(1.3, 1.8)
            else:
                psi_end = rng.uniform(2.0, 2.45)
            cart_end = psi_end + rng.uniform(0.25, 0.55)
            depth = 0.5 * b.wall_lat
            psi0 = float(np.arcsin(min(0.95, (xc + sx + 6) / (b.a - b.fat_lat - depth))))
            psi0 = min(psi0, psi_end - 0.2)
            head = (z_head, b.vb_y + 0.3 * b.vb_ry, side * (b.vb_rx * 0.9 + 4))
            neck = (z_head - 6, b.canal_y + 4, side * (TP_REACH["T12"] + 10))
            path = [head, neck]
            for psi in np.linspace(psi0, cart_end, 9):
                y, x = _wall_point(b, psi, depth)
                dz = drop * (psi - psi0) / max(cart_end - psi0, 1e-3)
                path.append((z_head - 18 - dz, y, side * x))
            n_bone = 2 + int(np.searchsorted(np.linspace(psi0, cart_end, 9), psi_end))
            for i, (p0, p1) in enumerate(zip(path[:-1], path[1:], strict=True)):
                bone = i < n_bone - 1 or rib >= 11
                if rib >= 11 and i >= n_bone - 1:
                    break
                found = segment(g, p0, p1, radius)
                if found is None:
                    continue
                box, dist2, _ = found
                if bone:
                    canvas.paint(box, dist2 < radius**2, hu["cortical_bone"], None, False, "rib")
                    inner = dist2 < (radius - 1.6) ** 2
                    canvas.paint(box, inner, hu["rib"] - 150.0, None, False, "rib")
                else:
                    cart = dist2 < (0.8 * radius) ** 2
                    canvas.paint(box, cart, hu["costal_cartilage"], None, False, "costal_cartilage")


def _polyline_distance(
    Y: np.ndarray, X: np.ndarray, pts: npt.NDArray[np.float64]
) -> tuple[np.ndarray, np.ndarray]:
    """2D distance to a polyline of (y, x) points, and which side (+1/-1) of it each pixel is."""
    best = np.full(np.broadcast(Y, X).shape, np.inf, np.float32)
    sign = np.ones_like(best)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((Y - y0) * dy + (X - x0) * dx) / (dy * dy + dx * dx), 0, 1)
        d = np.hypot(Y - y0 - t * dy, X - x0 - t * dx).astype(np.float32)
        cross = np.sign(dx * (Y - y0) - dy * (X - x0)).astype(np.float32)
        closer = d < best
        best = np.where(closer, d, best)
        sign = np.where(closer, cross, sign)
    return best, sign


def paint_pelvis(
    rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]
) -> None:
    """Iliac wings below the iliac crest, with iliacus inside and gluteal muscles outside.

    Each wing is a curved plate from the sacroiliac joint (posteromedial) to the anterior
    superior iliac spine (anterolateral); going down from the crest it narrows toward the
    midline, so it is drawn in 18 mm bands.
    """
    g, b = canvas.grid, body
    thick, iliacus_t = rng.uniform(6.0, 11.0), rng.uniform(12.0, 22.0)
    glut_t, narrowing = rng.uniform(20.0, 35.0), rng.uniform(0.2, 0.4)
    if not len(g.z) or g.z[0] > b.iliac_crest_z:
        return
    muscle_out = outline(
        g.y, g.x, b.a - b.fat_lat, b.b_ant - b.fat_ant, b.b_post - b.fat_post, b.p_ant, b.p_post
    )
    step, depth = 6.0, 90.0  # bands; the wing narrows over ``depth`` mm below the crest
    n_bands = int(np.ceil(min(b.iliac_crest_z - g.z[0], depth) / step))
    for band in range(n_bands):
        top = b.iliac_crest_z - band * step
        zs = g.zslab(-np.inf if band == n_bands - 1 else top - step, top)
        if zs.start == zs.stop:
            continue
        f = 1.0 - narrowing * min(1.0, (band + 0.5) * step / depth)
        for side in (-1, 1):
            si = (b.canal_y - 2, side * (b.vb_rx * 1.1 + 14))
            ctrl = (b.canal_y + 15, side * f * (b.cav_a - 5))
            asis = (b.vb_y - 35 * f, side * f * (b.cav_a - 8))
            t = np.linspace(0, 1, 9)[:, None]
            pts = (1 - t) ** 2 * np.array(si) + 2 * t * (1 - t) * np.array(ctrl)
            pts = pts + t**2 * np.array(asis)
            reach = thick / 2 + max(iliacus_t, glut_t) + 2
            xs = sorted((side * (b.vb_rx * 1.1 + 14 - reach), side * (b.cav_a + reach)))
            win = box2d(g, pts[:, 0].min() - reach, pts[:, 0].max() + reach, xs[0], xs[1])
            if win is None:
                continue
            Y, X = g.y[win[0]][:, None], g.x[win[1]][None, :]
            dist, sgn = _polyline_distance(Y, X, pts)
            inner = sgn * side < 0  # the concave (abdominal) side of the wing
            bone = dist < thick / 2
            parts = (
                (
                    inner & (dist < thick / 2 + iliacus_t) & ~bone & canvas.cavity2d[win],
                    hu["muscle"],
                    "iliacus",
                ),
                (
                    ~inner & (dist < thick / 2 + glut_t) & ~bone & muscle_out[win],
                    hu["muscle"],
                    "gluteal_muscle",
                ),
                (bone, hu["cortical_bone"], "iliac_bone"),
                (dist < thick / 2 - 1.8, hu["cancellous_bone"], "iliac_bone"),
            )
            for mask, value, organ in parts:
                full = np.zeros(canvas.cavity2d.shape, bool)
                full[win] = mask
                canvas.paint2d(full, value, organ, zs)
