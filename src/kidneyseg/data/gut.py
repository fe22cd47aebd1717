"""Hollow organs of the phantom: stomach, duodenum, colon and small-bowel loops.

Each is a hollow tube (`kidneyseg.data.shapes.hollow_chain`) that only replaces fat, so loops
mould themselves around the solid organs painted before them. Contents per segment: fluid, gas
(with an air-fluid level: gas lies anterior, the patient being supine), positive oral contrast
(in ~35 % of patients), faeces (colon: soft stool mottled with gas), food (stomach), or nothing
(a collapsed loop is a solid ~40 HU blob - a classic kidney look-alike without contrast).

Placement (canonical mm, +x patient left, +y posterior): stomach from the fundus (left, high,
posterior, beside the spleen) along the body (anterior left) to the antrum and pylorus (right of
the midline at L1); duodenum from the bulb down in front of the right kidney's hilum (L2-L3),
across the midline between aorta and SMA, up to the duodenojejunal flexure; colon from the
caecum up the right flank (anterolateral to the right kidney) to the hepatic flexure, across
the front (sagging), to the splenic flexure high on the left, and down the left flank; small
bowel loops fill the anterior and lower abdomen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kidneyseg.data.anatomy import Body
from kidneyseg.data.kidneys import Kidney
from kidneyseg.data.shapes import Box, Canvas, Mask, hollow_chain, texture
from kidneyseg.data.vessels import Vessels

Content = Callable[[Box, Mask], float | np.ndarray]
_KINDS = ("fluid", "gas", "gas_fluid", "contrast", "faeces", "food", "collapsed")


def _content(
    rng: np.random.Generator,
    canvas: Canvas,
    kind: str,
    hu: dict[str, float],
    level_y: float,
) -> Content:
    """The lumen filler of one tube; every draw happens now, before any grid is looked at."""
    fluid, gas = hu["bowel_fluid"] + rng.uniform(-3, 3), hu["bowel_gas"]
    contrast = hu["oral_contrast"] * rng.uniform(0.8, 1.1)
    stool, bubbles = texture(rng, 40.0, (4.0, 12.0)), texture(rng, 1.0, (3.0, 9.0))
    gas_level = rng.random() < 0.5  # contrast with gas floating on top
    g = canvas.grid

    def fill(box: Box, lumen: Mask) -> float | np.ndarray:
        y = g.y[box[1]].astype(np.float32)[None, :, None]
        if kind == "fluid":
            return fluid
        if kind == "gas":
            return gas
        if kind == "collapsed":
            return hu["bowel_wall"]
        if kind in ("gas_fluid", "contrast"):
            below = contrast if kind == "contrast" else fluid
            if kind == "contrast" and not gas_level:
                return below
            return np.where(y < level_y, np.float32(gas), np.float32(below))
        dz, dy, dx = g.offsets(box, (0, 0, 0))
        local = [dz, dy, dx]
        if kind == "food":
            return (fluid + 25.0 + stool(local) * 0.5).astype(np.float32)
        soft = hu["faeces"] + stool(local)  # faeces: soft matter mottled with gas bubbles
        return np.where(bubbles(local) > 0.75, np.float32(gas), soft).astype(np.float32)

    return fill


def _draw_kind(rng: np.random.Generator, weights: dict[str, float], oral: bool) -> str:
    w = np.array([weights.get(k, 0.0) * (oral if k == "contrast" else 1.0) for k in _KINDS])
    return _KINDS[int(rng.choice(len(_KINDS), p=w / w.sum()))]


def paint_stomach_duodenum(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    v: Vessels,
    oral: bool,
) -> list[tuple]:
    """Stomach (fundus to pylorus) and duodenum (bulb to the duodenojejunal flexure)."""
    b = body
    ao_y, ao_x, ao_r = v.aorta
    l1, l2, l3 = b.level_z("L1"), b.level_z("L2"), b.level_z("L3")
    stomach = [
        (b.level_z("T11") + rng.uniform(0, 0.5) * b.level_h, 0.15 * b.cav_b_post, 0.45 * b.cav_a),
        (b.level_z("T12"), -0.35 * b.cav_b_ant, 0.4 * b.cav_a),
        (l1 + rng.uniform(-0.3, 0.3) * b.level_h, -0.6 * b.cav_b_ant, 0.05 * b.cav_a),
        (l1, -0.45 * b.cav_b_ant, -0.2 * b.cav_a),
    ]
    s_radii = [rng.uniform(35, 45), rng.uniform(28, 38), rng.uniform(20, 26), rng.uniform(10, 13)]
    s_kind = _draw_kind(
        rng, {"gas_fluid": 0.45, "fluid": 0.2, "food": 0.15, "contrast": 0.2, "gas": 0.05}, oral
    )
    s_level = float(np.mean([p[1] for p in stomach])) + rng.uniform(-15, 10)
    s_fill = _content(rng, canvas, s_kind, hu, s_level)
    wall = rng.uniform(3.5, 6.0)
    duodenum = [
        stomach[-1],
        (l1 - 0.2 * b.level_h, -0.25 * b.cav_b_ant, -0.3 * b.cav_a),
        (l2, b.vb_y - 35.0, -0.35 * b.cav_a),
        (l3, b.vb_y - 30.0, -0.3 * b.cav_a),
        (l3 + 5.0, ao_y - ao_r - 12.0, ao_x - 5.0),
        (l2, -0.15 * b.cav_b_ant, 0.2 * b.cav_a),
    ]
    d_r = rng.uniform(11.0, 15.0)
    d_kind = _draw_kind(
        rng, {"fluid": 0.35, "gas_fluid": 0.2, "collapsed": 0.3, "contrast": 0.3}, oral
    )
    d_fill = _content(rng, canvas, d_kind, hu, b.vb_y - 40.0)
    hollow_chain(canvas, stomach, s_radii, wall, hu["bowel_wall"], s_fill, "stomach")
    hollow_chain(
        canvas, duodenum, [d_r] * len(duodenum), 2.5, hu["bowel_wall"], d_fill, "small_bowel"
    )
    return [(p, (r, r, r), np.eye(3)) for p, r in zip(stomach, s_radii, strict=True)] + [
        (p, (d_r, d_r, d_r), np.eye(3)) for p in duodenum
    ]


def _resample(points: Sequence[Sequence[float]], step: float) -> list[np.ndarray]:
    """Points every ~``step`` mm along a polyline."""
    out = [np.asarray(points[0], dtype=np.float64)]
    for p0, p1 in zip(points[:-1], points[1:], strict=True):
        a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.extend(a + (b - a) * (i / n) for i in range(1, n + 1))
    return out


def paint_colon(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    kidneys: Sequence[Kidney],
    oral: bool,
) -> list[tuple]:
    """Ascending, transverse and descending colon with haustra."""
    b = body
    g = canvas.grid
    lo = min((g.z[0] if len(g.z) else 0.0) - 20.0, b.level_z("L5"))
    right, left = kidneys[0], kidneys[1]
    r = rng.uniform(16.0, 26.0)
    asc_y, desc_y = b.vb_y - rng.uniform(15.0, 35.0), b.vb_y - rng.uniform(0.0, 20.0)
    hepatic = (right.center[0] + rng.uniform(-10.0, 20.0), b.vb_y - 30.0, -(b.cav_a - r - 15))
    splenic = (left.center[0] + rng.uniform(20.0, 50.0), b.vb_y - 10.0, b.cav_a - r - 10)
    sag = b.z_disc - rng.uniform(0.5, 2.0) * b.level_h
    parts = {
        "ascending": [(lo, asc_y, -(b.cav_a - r - 6)), hepatic],
        "transverse": [hepatic, (sag, -0.7 * b.cav_b_ant + r, 0.0), splenic],
        "descending": [splenic, (lo, desc_y, b.cav_a - r - 6)],
    }
    weights = {"faeces": 0.5, "gas": 0.3, "fluid": 0.1, "contrast": 0.1}
    obstacles = []
    for name, key in parts.items():
        kind = _draw_kind(rng, weights, oral)
        fill = _content(rng, canvas, kind, hu, float(np.mean([p[1] for p in key])))
        points = _resample(key, rng.uniform(16.0, 24.0))
        radii = [r * (1.0 if i % 2 else rng.uniform(0.75, 0.9)) for i in range(len(points))]
        hollow_chain(canvas, points, radii, 2.5, hu["bowel_wall"], fill, f"colon_{name}")
        obstacles += [(p, (r + 3, r + 3, r + 3), np.eye(3)) for p in points]
    return obstacles


def paint_small_bowel(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    avoid: list[tuple],
    oral: bool,
) -> None:
    """Loops as persistent random walks through the anterior and lower abdomen."""
    b = body
    n_loops = int(round(rng.uniform(16, 30) * (1.0 - 0.35 * b.adiposity)))
    z_lo, z_hi = b.z_disc - 4.5 * b.level_h, b.z_disc + 1.0 * b.level_h
    weights = {"fluid": 0.35, "gas_fluid": 0.1, "gas": 0.05, "collapsed": 0.3, "contrast": 0.3}

    # Obstacles as arrays, so one test of a point against all of them is one numpy call.
    centers = np.array([o[0] for o in avoid], dtype=np.float64).reshape(-1, 3)
    semis = np.array([o[1] for o in avoid], dtype=np.float64).reshape(-1, 3)
    rots = np.array([o[2] for o in avoid], dtype=np.float64).reshape(-1, 3, 3)

    def free(p: np.ndarray, r: float) -> bool:
        ya = b.cav_b_ant if p[1] < 0 else b.cav_b_post
        ok = (abs(p[2]) / (b.cav_a - r - 4)) ** b.p_ant + (abs(p[1]) / (ya - r - 4)) ** b.p_ant
        if ok >= 1 or not z_lo < p[0] < z_hi or p[1] > b.vb_front + 10:
            return False
        if p[1] > b.vb_front - 15 and abs(p[2]) < b.vb_rx + 40:  # spine, psoas, aorta, IVC
            return False
        u = np.einsum("nji,nj->ni", rots, p - centers)  # into each obstacle's own axes
        return not bool((((u / (semis + 0.3 * r)) ** 2).sum(axis=1) < 1).any())

    for _ in range(n_loops):
        r = rng.uniform(10.0, 16.0)
        kind = _draw_kind(rng, weights, oral)
        starts = np.column_stack(
            [
                rng.uniform(z_lo, z_hi, size=8),
                rng.uniform(-0.95 * b.cav_b_ant, b.vb_front, size=8),
                rng.uniform(-0.85 * b.cav_a, 0.85 * b.cav_a, size=8),
            ]
        )
        steps, step = int(rng.integers(6, 14)), rng.uniform(18.0, 28.0)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        proposals = rng.normal(size=(steps, 6, 3))
        fill = _content(rng, canvas, kind, hu, float(starts[0, 1]) + rng.uniform(-5, 5))
        start = next((c for c in starts if free(c, r)), None)
        if start is None:
            continue
        points = [start]
        for tries in proposals:
            for d in tries:
                new = direction + 0.9 * d
                new /= np.linalg.norm(new)
                p = points[-1] + step * new
                if free(p, r):
                    points.append(p)
                    direction = new
                    break
            else:
                break
        if len(points) > 1:
            hollow_chain(
                canvas, points, [r] * len(points), 2.5, hu["bowel_wall"], fill, "small_bowel"
            )
