"""The phantom's body plan: outline, fat, abdominal wall, back muscles, lungs, spine levels.

`draw_body` sets where everything sits (all in mm, canonical LPS: +x patient left, +y
posterior, +z superior, body centre at y = x = 0): body size and fat, the spine's depth and its
levels T7..S1 (the L1/L2 disc near z = 0), the muscles' sizes. The structures a kidney model
must learn to ignore that are painted here:

* skin, subcutaneous fat (thickness set by the patient's adiposity), the muscle wall with the
  oblique layers' fat planes and the linea alba, visceral fat in the cavity;
* erector spinae (paraspinal mass behind the transverse processes, either side of the spinous
  process), quadratus lumborum (lateral to the transverse processes, behind the kidneys' lower
  poles), psoas (beside the vertebral bodies, growing caudally from T12/L1), the
  diaphragmatic crura beside the aorta;
* lung bases behind the liver and spleen at the top of the volume, above the diaphragm.

The bones (vertebrae, ribs, iliac wings) are painted by `kidneyseg.data.organs`.

Sizes follow adult anatomy and a real CT measured here (TotalSegmentator example: erector spinae
23-26 cm2 per side, 60-80 mm wide; psoas 1 cm2 at L1 to 7 cm2 at L3; kidneys 55-90 mm from the
midline); the ranges are drawn per patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidneyseg.data.shapes import (
    Canvas,
    Mask,
    outline,
    texture,
    tube,
)

#: Vertebral levels modelled, caudal to cranial; the L1/L2 disc sits at `Body.z_disc`.
LEVELS = ("S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7")
L1_INDEX = LEVELS.index("L1")
#: Vertebral body width relative to L2's, and transverse-process reach from the midline (mm).
WIDTH = dict(
    zip(LEVELS, (1.12, 1.1, 1.08, 1.04, 1.0, 0.95, 0.9, 0.87, 0.85, 0.84, 0.83, 0.82), strict=True)
)
TP_REACH = dict(
    zip(LEVELS, (44.0, 42.0, 47.0, 52.0, 46.0, 38.0, 27.0, 28.0, 30, 31, 32, 33), strict=True)
)


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
        return self.z_disc + (LEVELS.index(name) - L1_INDEX + 0.5) * self.level_h

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
    """Draw a body plan for a field of view of ``fov_half`` (y, x) mm half-widths.

    The field of view is set to the patient, so the body fills 70-94 % of its width; fat
    thickness follows the patient's adiposity and the cavity takes the rest (within adult
    limits); the depth is 68-85 % of the width.
    """
    fat = rng.uniform() ** 1.3
    muscle = rng.uniform(0.75, 1.2)
    fill, ratio = rng.uniform(0.7, 0.94), rng.uniform(0.68, 0.85)
    fat_ant = 6.0 + 45.0 * fat * rng.uniform(0.7, 1.3)
    fat_lat = 5.0 + 35.0 * fat * rng.uniform(0.7, 1.3)
    fat_post = 5.0 + 35.0 * fat * rng.uniform(0.7, 1.3)
    wall_ant, wall_lat = rng.uniform(8.0, 14.0) * muscle, rng.uniform(8.0, 15.0) * muscle
    vb_rx, vb_ry = rng.uniform(19.0, 24.0), rng.uniform(14.0, 17.0)
    canal_rx, canal_ry = rng.uniform(10.0, 13.0), rng.uniform(7.0, 9.0)
    erector_t = rng.uniform(42.0, 62.0) * muscle
    erector_out = rng.uniform(62.0, 82.0) * np.sqrt(muscle)
    spinous_w, spinous_gap = rng.uniform(6.0, 10.0), rng.uniform(15.0, 30.0)
    p_ant, p_post = rng.uniform(2.0, 2.6), rng.uniform(2.6, 3.6)
    level_h = rng.uniform(33.0, 38.0)
    z_disc = rng.uniform(-12.0, 12.0)
    crest = rng.uniform(2.4, 3.0)
    # Width: the cavity takes what fat and wall leave, within adult limits.
    a = fill * fov_half[1]
    cav_lo, cav_hi = 105.0, 140.0 + 40.0 * fat
    cav_a = a - wall_lat - fat_lat
    if cav_a < cav_lo:
        fat_lat = max(4.0, fat_lat - (cav_lo - cav_a))
        cav_a = max(cav_lo, a - wall_lat - fat_lat)
    elif cav_a > cav_hi:
        fat_lat += cav_a - cav_hi
        cav_a = cav_hi
    a = min(cav_a + wall_lat + fat_lat, 0.94 * fov_half[1])
    fat_lat = a - cav_a - wall_lat
    # Depth, from the vertebral body's front (y = 0 for now; shifted to the body centre below).
    canal_y = 2 * vb_ry + 3.0 + canal_ry
    erector_front = canal_y - 2.0
    back_inner = erector_front + erector_t
    back = back_inner + fat_post
    depth = min(2 * ratio * a, 2 * 0.94 * fov_half[0])
    visceral = depth - back - wall_ant - fat_ant
    if visceral < 70.0:
        fat_ant = max(5.0, fat_ant - (70.0 - visceral))
        visceral = max(70.0, depth - back - wall_ant - fat_ant)
    elif visceral > 150.0 + 40.0 * fat:  # a deep body is a fatter one, front and back
        extra = visceral - 150.0 - 40.0 * fat
        fat_ant += 0.55 * extra
        fat_post += 0.3 * extra
        erector_t += 0.15 * extra
        visceral = 150.0 + 40.0 * fat
        back_inner = erector_front + erector_t
        back = back_inner + fat_post
    # Too deep for the field of view (a small FOV, a thick back): thin the fat, then the
    # back muscles, then the belly.
    excess = back + visceral + wall_ant + fat_ant - 2 * 0.9 * fov_half[0]
    for part in ("fat_ant", "fat_post", "erector_t", "visceral"):
        if excess <= 0:
            break
        floor = {"fat_ant": 4.0, "fat_post": 4.0, "erector_t": 35.0, "visceral": 60.0}[part]
        value = {
            "fat_ant": fat_ant,
            "fat_post": fat_post,
            "erector_t": erector_t,
            "visceral": visceral,
        }[part]
        cut = min(excess, max(0.0, value - floor))
        excess -= cut
        if part == "fat_ant":
            fat_ant -= cut
        elif part == "fat_post":
            fat_post -= cut
        elif part == "erector_t":
            erector_t -= cut
        else:
            visceral -= cut
    back_inner = erector_front + erector_t
    back = back_inner + fat_post
    front = -visceral - wall_ant - fat_ant
    shift = (back + front) / 2
    half = (back - front) / 2
    y = lambda v: v - shift  # noqa: E731
    sp_half = spinous_w / 2 + 1.0
    erector = (
        (sp_half + erector_out) / 2,
        (y(erector_front) + y(back_inner)) / 2,
        (erector_out - sp_half) / 2,
        (back_inner - erector_front) / 2 + 1.5,
        float(rng.uniform(2.2, 3.0)),
    )
    return Body(
        a=a,
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
        spinous_y=y(back_inner) - spinous_gap,
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
    rx, ry = body.vb_rx * max(WIDTH.values()) + 2, body.vb_ry + 2
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
    split = (np.abs(np.abs(X) - split_x - 0.25 * (Y - yc)) < 0.8) & (rng.uniform() < 0.4)
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
    put(erector & split, 0.3 * hu["subcutaneous_fat"] + 0.7 * hu["back_muscle"], "erector_spinae")
    canvas.cavity2d[:] = cavity & ~erector & ~_spine_block(body, Y, X)
    canvas.hu[:] = base
    if canvas.organ_ids is not None:
        canvas.organ_ids[:] = names


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
            vb = b.vb_rx * 1.05
            knots.append((z, b.vb_y + fy * b.vb_ry, side * (vb + 0.85 * r + 1.0), 1.1 * r, 0.9 * r))
        found = tube(g, knots[::-1])
        if found is not None:
            box, mask = found
            dz, dy, dx = g.offsets(box, (0, 0, 0))
            canvas.paint(box, mask, hu["muscle"] + tex([dz, dy, dx]), organ="psoas")
    for side in (-1, 1):
        reach = TP_REACH["L3"]
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
    """Lung bases above each diaphragm dome, reaching lowest in the posterior recesses.

    The dome's surface is a paraboloid, highest (near T9-T10) over the middle of each
    hemithorax and lowest (T12-L1) at the back, so the lungs wrap behind the upper liver and
    spleen and the kidneys' upper poles rather than sitting on them.
    """
    g, b = canvas.grid, body
    Y, X = g.y[:, None], g.x[None, :]
    for side in (-1, 1):
        apex = b.z_disc + rng.uniform(3.5, 4.5) * b.level_h
        low = b.z_disc + rng.uniform(0.8, 1.6) * b.level_h + (8.0 if side < 0 else 0.0)
        yc, xc = 0.05 * b.cav_b_post, side * 0.5 * b.cav_a
        half_x, back = 0.55 * b.cav_a, b.cav_b_post - yc
        muscle_t = rng.uniform(3.0, 6.0)
        r2 = ((X - xc) / half_x) ** 2 + ((Y - yc) / np.where(Y > yc, back, 2.5 * b.cav_b_ant)) ** 2
        dome = (apex - (apex - low) * r2).astype(np.float32)
        lateral = (X * side > 25.0) & canvas.cavity2d
        for k in range(*g.zslab(low, np.inf).indices(len(g.z))):
            z = np.float32(g.z[k])
            diaphragm = lateral & (z > dome)
            lung = diaphragm & (z > dome + muscle_t)
            for mask, value, organ in (
                (diaphragm, hu["muscle"], "diaphragm"),
                (lung, hu["lung"], "lung"),
            ):
                canvas.hu[k][mask] = value
                if canvas.organ_ids is not None:
                    canvas.organ_ids[k][mask] = canvas._organ(organ)


__all__ = ["LEVELS", "Body", "draw_body", "paint_body_wall", "paint_lungs", "paint_muscles"]
