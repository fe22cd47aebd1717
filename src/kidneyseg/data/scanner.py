"""The scanner side of a phantom: grid geometry, patient table, metal, artefacts, noise.

* geometry: in-plane field of view 320..480 mm (pixel = FOV / columns: 0.63..0.94 mm at 512,
  2.5..3.75 mm at 128), slices 0.5..5 mm (the thickness nearest a 200..300 mm scan range);
* the table: a curved carbon-fibre top (two thin shells around a foam core) under the back;
* metal: surgical clips in the renal fossa after a nephrectomy, occasionally pedicle screws and
  rods in the lumbar spine;
* artefacts: streaks (bright and dark lines radiating from metal and, in the excretory phase,
  from dense contrast in the collecting system), cupping (beam hardening: the centre of a large
  body reads low), the reconstruction circle (outside it -1024 in some scanners' files);
* noise: Gaussian, correlated by the reconstruction kernel (added before the final blur), its
  level set by dose, body size, pixel size and slice thickness (finer voxels are noisier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kidneyseg.data.anatomy import Body
from kidneyseg.data.shapes import Array, Canvas, Grid, capsule, outline

#: Slice thicknesses a scanner would reconstruct (mm).
THICKNESSES = (0.5, 0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)

#: A streak source: (z_lo, z_hi, y, x, strength HU).
Source = tuple[float, float, float, float, float]


def draw_geometry(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[tuple[float, float, float], Grid, tuple[float, float, float]]:
    """Canonical spacing (z, y, x mm), the grid, and the world LPS origin offset (the table)."""
    nz, ny, nx = shape
    fov = rng.uniform(320.0, 480.0)
    inplane = fov / max(ny, nx)
    extent = rng.uniform(200.0, 300.0)
    wanted = float(np.clip(extent / nz, THICKNESSES[0], THICKNESSES[-1]))
    thickness = min(THICKNESSES, key=lambda t: abs(np.log(t / wanted)))
    # Kidneys sit near z=0; the scan's centre is shifted so they are not always centred.
    z_shift, y_shift = rng.uniform(-25.0, 25.0), rng.uniform(-10.0, 10.0)
    grid = Grid(
        z=(np.arange(nz) - (nz - 1) / 2) * thickness + z_shift,
        y=(np.arange(ny) - (ny - 1) / 2) * inplane + y_shift,
        x=(np.arange(nx) - (nx - 1) / 2) * inplane,
    )
    table = (0.0, rng.uniform(-20.0, 20.0), rng.uniform(-400.0, 0.0))  # scanner offsets, LPS
    return (thickness, inplane, inplane), grid, table


@dataclass(frozen=True)
class Scanner:
    """One acquisition's settings."""

    noise: float  # HU standard deviation of the final image noise
    blur: tuple[float, float, float]  # Gaussian sigma in voxels (z, y, x)
    cupping: float  # HU lost at the body's centre (0: none)
    circle: bool  # pad outside the reconstruction circle with -1024


def draw_scanner(
    rng: np.random.Generator, spacing: tuple[float, float, float], body: Body
) -> Scanner:
    """Noise from dose, body size and voxel size; kernel; cupping; padding."""
    thickness, pixel = spacing[0], spacing[1]
    reference = rng.uniform(12.0, 28.0)  # HU at 0.75 mm pixels, 2.5 mm slices, average body
    size = float(np.clip(body.a / 150.0, 0.8, 1.6))
    noise = reference * size * (0.75 / pixel) ** 0.25 * (2.5 / thickness) ** 0.5
    blur = (rng.uniform(0.3, 0.5), *(rng.uniform(0.3, 0.65),) * 2)
    cupping = rng.uniform(5.0, 20.0) if rng.random() < 0.3 else 0.0
    circle = rng.random() < 0.4
    return Scanner(float(np.clip(noise, 4.0, 60.0)), blur, cupping, circle)  # type: ignore[arg-type]


def paint_table(rng: np.random.Generator, canvas: Canvas, body: Body, hu: dict[str, float]) -> None:
    """The table top under the patient's back: curved shells around a foam core."""
    g, b = canvas.grid, body
    top = b.b_post + rng.uniform(0.0, 6.0)
    thick, shell = rng.uniform(25.0, 50.0), rng.uniform(1.5, 3.0)
    radius, half = rng.uniform(500.0, 1500.0), rng.uniform(200.0, 260.0)
    Y, X = g.y[:, None], g.x[None, :]
    depth = Y - (top - X**2 / (2 * radius))  # mm below the curved top surface
    within = (np.abs(X) < half) & (depth >= 0) & (depth < thick)
    skin = outline(g.y, g.x, b.a, b.b_ant, b.b_post, b.p_ant, b.p_post)
    within &= ~skin
    shells = within & ((depth < shell) | (depth > thick - shell))
    canvas.paint2d(within & ~shells, hu["table_core"], "table")
    canvas.paint2d(shells, hu["table_shell"], "table")


def paint_metal(
    rng: np.random.Generator,
    canvas: Canvas,
    body: Body,
    hu: dict[str, float],
    empty_fossa: npt.NDArray[np.float64] | None,
) -> list[Source]:
    """Surgical clips in an empty renal fossa (after nephrectomy) and, rarely, spinal hardware.

    Returns the streak sources they cause.
    """
    g, b = canvas.grid, body
    sources: list[Source] = []
    clips = rng.random() < 0.6
    clip_pts = rng.normal(scale=12.0, size=(int(rng.integers(3, 7)), 2, 3))
    clip_pts[:, 1] = clip_pts[:, 0] + rng.normal(scale=3.0, size=(len(clip_pts), 3))
    clip_strength = rng.uniform(80.0, 250.0)
    hardware = rng.random() < 0.03
    levels = ("L2", "L3", "L4") if rng.random() < 0.5 else ("L3", "L4", "L5")
    hw_strength = rng.uniform(200.0, 450.0)
    if empty_fossa is not None and clips:
        for p0, p1 in clip_pts:
            found = capsule(g, empty_fossa + p0, empty_fossa + p1, 1.2)
            if found is not None:
                canvas.paint(*found, hu["metal"], organ="metal")
        z, y, x = empty_fossa
        sources.append((z - 15.0, z + 15.0, y, x, clip_strength))
    if hardware:
        zs = [b.level_z(name) for name in levels]
        for side in (-1, 1):
            rod = (b.canal_y + 14.0, side * (b.canal_rx + 9.0))
            for z in zs:
                screw = capsule(
                    g,
                    (z, b.canal_y + 12.0, side * (b.canal_rx + 8.0)),
                    (z, b.vb_y, side * 0.35 * b.vb_rx),
                    3.0,
                )
                if screw is not None:
                    canvas.paint(*screw, hu["metal"], None, False, "metal")
            found = capsule(g, (zs[-1], *rod), (zs[0], *rod), 3.0)
            if found is not None:
                canvas.paint(*found, hu["metal"], None, False, "metal")
        for z in zs:
            sources.append((z - 6.0, z + 6.0, b.vb_y + 10.0, 0.0, hw_strength))
    return sources


def _streak_pattern(
    rng: np.random.Generator, grid: Grid, y0: float, x0: float, strength: float
) -> tuple[list[tuple[float, float, float]], float]:
    lines = [
        (rng.uniform(0, np.pi), strength * rng.uniform(0.4, 1.0) * rng.choice((-1.0, 1.0)), 0.0)
        for _ in range(int(rng.integers(6, 16)))
    ]
    return lines, rng.uniform(40.0, 90.0)


def add_streaks(rng: np.random.Generator, hu: Array, grid: Grid, sources: Sequence[Source]) -> None:
    """Bright and dark lines through each source, fading with distance, on its slices."""
    pixel = float(abs(grid.x[1] - grid.x[0])) if len(grid.x) > 1 else 1.0
    width = max(1.0, 0.5 * pixel)
    Y = grid.y.astype(np.float32)[:, None]
    X = grid.x.astype(np.float32)[None, :]
    for z_lo, z_hi, y0, x0, strength in sources:
        lines, fade = _streak_pattern(rng, grid, y0, x0, strength)
        zs = grid.zslab(z_lo, z_hi)
        if zs.start == zs.stop:
            continue
        dy, dx = Y - np.float32(y0), X - np.float32(x0)
        rho = np.hypot(dy, dx)
        pattern = np.zeros(rho.shape, np.float32)
        for angle, amp, _ in lines:
            d = dx * np.float32(np.sin(angle)) - dy * np.float32(np.cos(angle))
            pattern += np.float32(amp) * np.exp(-((d / np.float32(width)) ** 2))
        pattern /= 1.0 + rho / np.float32(fade)
        hu[zs] += pattern[None]


def finish(
    rng: np.random.Generator,
    hu: Array,
    grid: Grid,
    scanner: Scanner,
    body: Body,
    sources: Sequence[Source],
) -> npt.NDArray[np.int16]:
    """Artefacts, correlated noise and the reconstruction blur; int16 HU out."""
    from scipy.ndimage import gaussian_filter

    if scanner.cupping:
        Y, X = grid.y[:, None], grid.x[None, :]
        b = body
        by = np.where(Y < 0, b.b_ant, b.b_post)
        rho = (np.abs(X / b.a) ** b.p_ant + np.abs(Y / by) ** b.p_ant) ** (1 / b.p_ant)
        dip = np.where(rho < 1, scanner.cupping * (1 - rho**2), 0.0).astype(np.float32)
        hu -= dip[None]
    add_streaks(rng, hu, grid, sources)
    # Noise before the blur comes out correlated like a CT reconstruction's; scale it so the
    # final standard deviation is the scanner's.
    gain = 1.0
    for s in scanner.blur:
        radius = int(3.0 * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        gain *= float(np.sqrt(np.sum((w / w.sum()) ** 2)))
    sigma = np.float32(scanner.noise / gain)
    step = max(1, 2**22 // max(1, hu[0].size))  # noise in slabs keeps the memory peak low
    for k in range(0, hu.shape[0], step):
        slab = hu[k : k + step]
        slab += sigma * rng.standard_normal(slab.shape, dtype=np.float32)
    hu = gaussian_filter(hu, sigma=scanner.blur, truncate=3.0, output=np.float32)
    out = np.empty(hu.shape, np.int16)
    for k in range(0, hu.shape[0], step):
        out[k : k + step] = np.clip(np.rint(hu[k : k + step]), -1024, 3071)
    if scanner.circle:
        fov_r = min(np.ptp(grid.y), np.ptp(grid.x)) / 2 if len(grid.x) > 1 else np.inf
        cy, cx = (grid.y[0] + grid.y[-1]) / 2, (grid.x[0] + grid.x[-1]) / 2
        outside = np.hypot(grid.y[:, None] - cy, grid.x[None, :] - cx) > fov_r
        out[:, outside] = -1024
    return out
