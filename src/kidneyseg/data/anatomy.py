"""The phantom's body: outline, fat, abdominal wall, spine, ribs, pelvis, back muscles, lungs.

The structures a kidney model must learn to ignore live here, in their real places (all in mm,
canonical LPS: +x patient left, +y posterior, +z superior, body centre at y = x = 0):

* skin, subcutaneous fat (thickness set by the patient's adiposity), the muscle wall with the
  oblique layers' fat planes and the linea alba, visceral fat in the cavity;
* the lumbar and lower thoracic spine level by level (T7..S1, the L1/L2 disc near z = 0): body
  with cortical shell and cancellous marrow, discs, pedicles, laminae, spinous and transverse
  processes, facets, the canal; ribs 7-12 with marrow and costal cartilage; iliac wings;
* erector spinae (paraspinal mass behind the transverse processes, either side of the spinous
  process), quadratus lumborum (lateral to the transverse processes, behind the kidneys' lower
  poles), psoas (beside the vertebral bodies, growing caudally from T12/L1), iliacus and
  gluteal muscles at the pelvis, the diaphragmatic crura beside the aorta;
* lung bases behind the liver and spleen at the top of the volume, under the diaphragm.

Sizes follow adult anatomy and a real CT measured here (TotalSegmentator example: erector spinae
23-26 cm2 per side, 60-80 mm wide; psoas 1 cm2 at L1 to 7 cm2 at L3; kidneys 55-90 mm from the
midline); the ranges are drawn per patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kidneyseg.data.shapes import (
    Canvas,
    Mask,
    capsule,
    ellipsoid,
    outline,
    segment,
    superellipse,
    texture,
    tube,
)

#: Vertebral levels modelled, caudal to cranial; the L1/L2 disc sits at `Body.z_disc`.
LEVELS = ("S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7")
_L1 = LEVELS.index("L1")
#: Vertebral body width relative to L2's, and transverse-process reach from the midline (mm).
_WIDTH = dict(zip(LEVELS, (1.12, 1.1, 1.08, 1.04, 1.0, 0.95, 0.9, 0.87, 0.85, 0.84, 0.83, 0.82)))
_TP_REACH = dict(zip(LEVELS, (44.0, 42.0, 47.0, 52.0, 46.0, 38.0, 27.0, 28.0, 30, 31, 32, 33)))


@dataclass(frozen=True)
class Body:
    """One patient's body plan (mm). Built by `draw_body`; painted by the ``paint_*`` functions."""

    a: float  # skin: lateral half-width
    b_ant: float  # skin: depth in front of y = 0
    b_post: float  # skin: depth behind y = 0
    p_ant: float  # boxiness of the belly
    p_post: float  # boxiness of the (flatter) back
    fat_lat: float
    fat_ant: float
    fat_post: float
    wall_lat: float
    wall_ant: float
    cav_a: float  # cavity (inside the muscle wall)
    cav_b_ant: float
    cav_b_post: float
    adiposity: float  # 0 lean .. 1 obese
    muscularity: float
    vb_rx: float  # L2 vertebral body semi-axes
    vb_ry: float
    vb_y: float  # vertebral body centre
    canal_rx: float
    canal_ry: float
    canal_y: float
    spinous_y: float  # spinous-process tip
    spinous_w: float
    erector: tuple[float, float, float, float, float]  # |x| centre, y centre, semi x, y, power
    z_disc: float  # L1/L2 disc
    level_h: float  # one vertebra + disc
    iliac_crest_z: float

    @property
    def vb_front(self) -> float:
        return self.vb_y - self.vb_ry

    def level_z(self, name: str) -> float:
        """z (mm) of the centre of vertebral body ``name`` (e.g. ``"L1"``)."""
        return self.z_disc + (LEVELS.index(name) - _L1 + 0.5) * self.level_h

    def level_range(self, name: str) -> tuple[float, float]:
        """``(bottom, top)`` z of vertebra ``name`` including half of each adjacent disc."""
        c = self.level_z(name)
        return c - self.level_h / 2, c + self.level_h / 2

    def erector_front(self, x: float) -> float:
        """y of the erector spinae's anterior surface at ``x`` (+inf where there is none)."""
        xc, yc, sx, sy, p = self.erector
        t = abs(abs(x) - xc) / sx
        if t >= 1:
            return float("inf")
        return yc - sy * (1 - t**p) ** (1 / p)


def draw_body(rng: np.random.Generator, fov_half: tuple[float, float]) -> Body:
    """Draw a body plan that fits a field of view of ``fov_half`` (y, x) mm half-widths."""
    fat = rng.uniform() ** 1.3
    muscle = rng.uniform(0.75, 1.2)
    fat_ant = 6.0 + 45.0 * fat * rng.uniform(0.7, 1.3)
    fat_lat = 5.0 + 35.0 * fat * rng.uniform(0.7, 1.3)
    fat_post = 5.0 + 35.0 * fat * rng.uniform(0.7, 1.3)
    wall_ant, wall_lat = rng.uniform(8.0, 14.0) * muscle, rng.uniform(8.0, 15.0) * muscle
    vb_rx, vb_ry = rng.uniform(19.0, 24.0), rng.uniform(14.0, 17.0)
    canal_rx, canal_ry = rng.uniform(10.0, 13.0), rng.uniform(7.0, 9.0)
    erector_t = rng.uniform(35.0, 55.0) * muscle
    erector_out = rng.uniform(62.0, 82.0) * np.sqrt(muscle)
    spinous_w = rng.uniform(6.0, 10.0)
    visceral = rng.uniform(70.0, 100.0) + 50.0 * fat * rng.uniform(0.6, 1.2)
    cav_a = rng.uniform(108.0, 132.0) + 35.0 * fat
    p_ant, p_post = rng.uniform(2.0, 2.6), rng.uniform(2.6, 3.6)
    level_h = rng.uniform(33.0, 38.0)
    z_disc = rng.uniform(-12.0, 12.0)
    crest = rng.uniform(2.4, 3.0)
    # Depths from the vertebral body's front (y = 0 for now; shifted to the body centre below).
    canal_y = 2 * vb_ry + 3.0 + canal_ry
    erector_front = canal_y - 2.0
    back_inner = erector_front + erector_t
    back, front = back_inner + fat_post, -visceral - wall_ant - fat_ant
    # Fit the field of view: excess width comes out of the fat first, then the cavity.
    lim_x, lim_y = 0.47 * 2 * fov_half[1], 0.47 * 2 * fov_half[0]
    excess = cav_a + wall_lat + fat_lat - lim_x
    if excess > 0:
        cut = min(excess, fat_lat - 4.0)
        fat_lat -= cut
        cav_a -= excess - cut
    excess = (back - front) / 2 - lim_y
    if excess > 0:
        cut = min(2 * excess, fat_ant - 5.0)
        fat_ant -= cut
        front += cut
        visceral -= max(0.0, 2 * excess - cut)
        front = -visceral - wall_ant - fat_ant
    shift = (back + front) / 2
    half = (back - front) / 2
    y = lambda v: v - shift  # noqa: E731
    spinous_y = y(back_inner) - rng.uniform(6.0, 14.0)
    sp_half = spinous_w / 2 + 1.0
    erector = (
        (sp_half + erector_out) / 2,
        (y(erector_front) + y(back_inner)) / 2,
        (erector_out - sp_half) / 2,
        (back_inner - erector_front) / 2 + 1.5,
        float(rng.uniform(2.2, 3.0)),
    )
    return Body(
        a=cav_a + wall_lat + fat_lat,
        b_ant=half,
        b_post=half,
        p_ant=p_ant,
        p_post=p_post,
        fat_lat=fat_lat,
        fat_ant=fat_ant,
        fat_post=fat_post,
        wall_lat=wall_lat,
        wall_ant=wall_ant,
        cav_a=cav_a,
        cav_b_ant=half - fat_ant - wall_ant,
        cav_b_post=half - fat_post - 3.0,
        adiposity=float(fat),
        muscularity=float(muscle),
        vb_rx=vb_rx,
        vb_ry=vb_ry,
        vb_y=y(vb_ry),
        canal_rx=canal_rx,
        canal_ry=canal_ry,
        canal_y=y(canal_y),
        spinous_y=spinous_y,
        spinous_w=spinous_w,
        erector=erector,
        z_disc=z_disc,
        level_h=level_h,
        iliac_crest_z=z_disc - crest * level_h,
    )


def _erector_masks(body: Body, Y: np.ndarray, X: np.ndarray) -> tuple[Mask, Mask]:
    xc, yc, sx, sy, p = body.erector
    return tuple(  # type: ignore[return-value]
        (np.abs((X - side * xc) / sx) ** p + np.abs((Y - yc) / sy) ** p) < 1 for side in (-1, 1)
    )


def _spine_block(body: Body, Y: np.ndarray, X: np.ndarray) -> Mask:
    """Where the spine can be at any level: kept out of the abdominal cavity."""
    rx, ry = body.vb_rx * max(_WIDTH.values()) + 2, body.vb_ry + 2
    vertebral = ((X / rx) ** 2 + ((Y - body.vb_y) / ry) ** 2) < 1
    arch = (np.abs(X) < body.canal_rx + 7) & (Y > body.vb_y) & (Y < body.spinous_y + 2)
    return vertebral | arch


def paint_body_wall(
    rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]
) -> None:
    """Skin outline, fat, muscle wall, erector spinae, visceral fat; sets the cavity mask.

    All of it is constant along z, so it is composed once as one slice and copied to all.
    """
    g = canvas.grid
    Y, X = g.y[:, None], g.x[None, :]
    b = body
    skin = outline(g.y, g.x, b.a, b.b_ant, b.b_post, b.p_ant, b.p_post)
    muscle_out = outline(
        g.y, g.x, b.a - b.fat_lat, b.b_ant - b.fat_ant, b.b_post - b.fat_post, b.p_ant, b.p_post
    )
    cavity = outline(g.y, g.x, b.cav_a, b.cav_b_ant, b.cav_b_post, b.p_ant, b.p_post)
    # Fat planes between the external oblique, internal oblique and transversus (lateral wall).
    planes = np.zeros_like(skin)
    for frac in sorted(rng.uniform(0.25, 0.75, size=2)):
        da, db = b.fat_lat + frac * b.wall_lat, b.fat_ant + frac * b.wall_ant
        shell = outline(g.y, g.x, b.a - da, b.b_ant - db, b.b_post - da, b.p_ant, b.p_post)
        inner = outline(
            g.y, g.x, b.a - da - 1.5, b.b_ant - db - 1.5, b.b_post - da - 1.5, b.p_ant, b.p_post
        )
        planes |= shell & ~inner
    planes &= (np.abs(X) > 0.45 * b.a) & (Y < 0.5 * b.b_post)
    linea_alba = (np.abs(X) < rng.uniform(2.0, 6.0)) & (Y < 0) & (rng.uniform() < 0.7)
    left, right = _erector_masks(body, Y, X)
    erector = (left | right) & muscle_out
    # A thin fat plane splits multifidus (medial) from longissimus/iliocostalis (lateral).
    xc, yc, sx, sy, _ = b.erector
    split_x = xc - sx * rng.uniform(0.0, 0.35)
    split = (np.abs(np.abs(X) - split_x - 0.25 * (Y - yc)) < 0.9) & (rng.uniform() < 0.6)
    back_tex = texture(rng, 4.0, (6.0, 20.0))
    sub_tex = texture(rng, 4.0, (8.0, 30.0))

    base = np.full(skin.shape, hu["air"], np.float32)
    names = np.zeros(skin.shape, np.uint8)

    def put(mask: Mask, value: float | np.ndarray, organ: str) -> None:
        base[mask] = value if np.isscalar(value) else np.broadcast_to(value, mask.shape)[mask]
        names[mask] = canvas._organ(organ) if canvas.organ_ids is not None else 0

    Yf, Xf = np.broadcast_arrays(Y.astype(np.float32), X.astype(np.float32))
    put(skin, hu["subcutaneous_fat"] + sub_tex([Yf, Xf]), "subcutaneous_fat")
    put(muscle_out, hu["muscle"], "abdominal_wall")
    put(muscle_out & (planes | (linea_alba & ~cavity)), hu["subcutaneous_fat"], "subcutaneous_fat")
    put(cavity, hu["visceral_fat"], "visceral_fat")
    put(erector, hu["back_muscle"] + back_tex([Yf, Xf]), "erector_spinae")
    put(erector & split, hu["subcutaneous_fat"], "erector_spinae")
    canvas.cavity2d[:] = cavity & ~erector & ~_spine_block(body, Y, X)
    canvas.hu[:] = base
    if canvas.organ_ids is not None:
        canvas.organ_ids[:] = names


def _box2d(
    grid: object, y0: float, y1: float, x0: float, x1: float
) -> tuple[slice, slice] | None:
    ys = np.searchsorted(grid.y, [y0, y1])  # type: ignore[attr-defined]
    xs = np.searchsorted(grid.x, [x0, x1])  # type: ignore[attr-defined]
    if ys[0] >= ys[1] or xs[0] >= xs[1]:
        return None
    return slice(int(ys[0]), int(ys[1])), slice(int(xs[0]), int(xs[1]))


def paint_spine(
    rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]
) -> None:
    """Vertebrae level by level: body, endplates, disc, arch, spinous/transverse processes."""
    g, b = canvas.grid, body
    disc_h = rng.uniform(7.0, 11.0)
    tp_scale, tp_t = rng.uniform(0.9, 1.1), rng.uniform(5.0, 8.0)
    pixel = float(abs(g.x[1] - g.x[0])) if len(g.x) > 1 else 1.0
    shell = max(1.8, 0.7 * pixel)  # keep the cortex visible on coarse grids
    reach = max(_TP_REACH.values()) * tp_scale + 6
    win = _box2d(g, b.vb_front - 4, b.spinous_y + 4, -reach, reach)
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
        rx, ry = b.vb_rx * _WIDTH[name], b.vb_ry * (0.95 + 0.05 * _WIDTH[name])
        d = (X / rx) ** 2 + ((Y - b.vb_y) / ry) ** 2
        flat = Y < b.vb_y + 0.85 * ry
        tp_len = _TP_REACH[name] * tp_scale
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
        name = LEVELS[int(np.clip(n + _L1, 0, len(LEVELS) - 1))]
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
            neck = (z_head - 3, b.canal_y + 4, side * (_TP_REACH["T12"] + 10))
            path = [head, neck]
            for psi in np.linspace(psi0, cart_end, 9):
                y, x = _wall_point(b, psi, depth)
                dz = drop * (psi - psi0) / max(cart_end - psi0, 1e-3)
                path.append((z_head - 6 - dz, y, side * x))
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
    """Iliac wings below the iliac crest, with iliacus inside and gluteal muscles outside."""
    g, b = canvas.grid, body
    thick, iliacus_t, glut_t = rng.uniform(6.0, 11.0), rng.uniform(12.0, 22.0), rng.uniform(
        20.0, 35.0
    )
    zs = g.zslab(-np.inf, b.iliac_crest_z)
    if zs.start == zs.stop:
        return
    Y, X = g.y[:, None], g.x[None, :]
    for side in (-1, 1):
        si = (b.canal_y - 2, side * (b.vb_rx * 1.1 + 14))
        ctrl = (b.canal_y + 15, side * (b.cav_a - 5))
        asis = (b.vb_y - 35, side * (b.cav_a - 8))
        t = np.linspace(0, 1, 9)[:, None]
        pts = (1 - t) ** 2 * np.array(si) + 2 * t * (1 - t) * np.array(ctrl) + t**2 * np.array(asis)
        dist, sgn = _polyline_distance(Y, X, pts)
        inner = sgn * side < 0  # the concave (abdominal) side of the wing
        bone = dist < thick / 2
        canvas.paint2d(inner & (dist < thick / 2 + iliacus_t) & ~bone, hu["muscle"], "iliacus", zs)
        glut = ~inner & (dist < thick / 2 + glut_t) & ~bone
        muscle_out = outline(
            g.y, g.x, b.a - b.fat_lat, b.b_ant - b.fat_ant, b.b_post - b.fat_post, b.p_ant,
            b.p_post,
        )
        canvas.paint2d(glut & muscle_out, hu["muscle"], "gluteal_muscle", zs)
        canvas.paint2d(bone, hu["cortical_bone"], "iliac_bone", zs)
        canvas.paint2d(dist < thick / 2 - 1.8, hu["cancellous_bone"], "iliac_bone", zs)


def paint_muscles(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    aorta: tuple[float, float, float],
) -> None:
    """Psoas, quadratus lumborum and the diaphragmatic crura (``aorta`` = (y, x, radius))."""
    g, b = canvas.grid, body
    bottom = g.z[0] - 20.0 if len(g.z) else -200.0
    psoas_max = rng.uniform(14.0, 24.0) * b.muscularity
    ql_max = rng.uniform(12.0, 20.0) * b.muscularity, rng.uniform(7.0, 11.0) * b.muscularity
    ql_x, ql_dy = rng.uniform(0.0, 8.0), rng.uniform(-3.0, 3.0)
    psoas_top = b.level_z("T12") - rng.uniform(0.0, 0.4) * b.level_h
    tex = texture(rng, 3.0, (8.0, 25.0))
    for side in (-1, 1):
        knots = []
        for z, frac, fy in (
            (psoas_top, 0.15, 0.35),
            (b.level_z("L1"), 0.3, 0.3),
            (b.level_z("L2"), 0.5, 0.2),
            (b.level_z("L3"), 0.7, 0.1),
            (b.level_z("L4"), 0.9, 0.0),
            (b.level_z("L5"), 1.0, -0.1),
            (min(bottom, b.level_z("L5") - 1), 1.0, -0.3),
        ):
            r = psoas_max * frac
            name = b.level_z  # noqa: F841  (level widths below)
            vb = b.vb_rx * 1.05
            knots.append((z, b.vb_y + fy * b.vb_ry, side * (vb + 0.85 * r + 1.0), 1.1 * r, 0.9 * r))
        found = tube(g, knots[::-1])
        if found is not None:
            box, mask = found
            dz, dy, dx = g.offsets(box, (0, 0, 0))
            canvas.paint(box, mask, hu["muscle"] + tex([dz, dy, dx]), organ="psoas")
    for side in (-1, 1):
        reach = _TP_REACH["L3"]
        y0 = b.canal_y - 4 + ql_dy
        knots = [
            (b.iliac_crest_z - 5, y0, side * (reach + ql_x), 0.9 * ql_max[1], 0.9 * ql_max[0]),
            (b.level_z("L3"), y0, side * (reach + ql_x), ql_max[1], ql_max[0]),
            (b.level_z("L1"), y0 + 2, side * (reach + ql_x - 4), 0.6 * ql_max[1], 0.6 * ql_max[0]),
            (b.level_z("T12") + 10, y0 + 4, side * (reach + ql_x - 8), 3.0, 4.0),
        ]
        found = tube(g, knots)
        if found is not None:
            canvas.paint(*found, hu["muscle"], organ="quadratus_lumborum")
    ao_y, ao_x, ao_r = aorta
    crus_t = rng.uniform(4.0, 7.0)
    top = g.z[-1] + 20.0 if len(g.z) else 200.0
    for side, low in ((-1, b.level_z("L3")), (1, b.level_z("L2"))):
        x_in = ao_x + side * (ao_r + crus_t + 1)
        knots = [
            (low, b.vb_front + 3, side * b.vb_rx * 0.45, 4.0, 3.0),
            (b.z_disc, b.vb_front - 3, x_in, 9.0, crus_t),
            (b.level_z("T12"), ao_y - 2, x_in, 14.0, crus_t),
            (max(top, b.level_z("T12") + 1), ao_y - 8, x_in + side * 4, 16.0, crus_t),
        ]
        found = tube(g, knots)
        if found is not None:
            canvas.paint(*found, hu["muscle"], organ="diaphragm_crus")


def paint_lungs(rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]) -> None:
    """Lung bases in the posterior costophrenic recesses, each under a diaphragm dome."""
    g, b = canvas.grid, body
    for side in (-1, 1):
        low = b.z_disc + rng.uniform(1.2, 2.2) * b.level_h + (8.0 if side < 0 else 0.0)
        semi = (rng.uniform(80.0, 110.0), 0.5 * b.cav_b_post + 10, rng.uniform(0.35, 0.45) * b.cav_a)
        center = (low + semi[0], 0.45 * b.cav_b_post, side * 0.55 * b.cav_a)
        dome_t = rng.uniform(3.0, 5.0)
        grown = (semi[0] + dome_t, semi[1] + dome_t, semi[2] + dome_t)
        found = ellipsoid(g, center, grown)
        if found is not None:
            canvas.paint(found[0], found[2] < 1, hu["muscle"], organ="diaphragm")
        found = ellipsoid(g, center, semi)
        if found is not None:
            canvas.paint(found[0], found[2] < 1, hu["lung"], organ="lung")


__all__ = [
    "LEVELS",
    "Body",
    "capsule",
    "draw_body",
    "paint_body_wall",
    "paint_lungs",
    "paint_muscles",
    "paint_pelvis",
    "paint_ribs",
    "paint_spine",
    "superellipse",
]
