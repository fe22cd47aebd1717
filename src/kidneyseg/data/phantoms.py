"""Synthetic abdominal CT phantoms with kidney, tumor and cyst labels: the default cohort.

Each phantom is built in physical millimetres on the canonical ``(z, y, x)`` LPS grid (see
`kidneyseg.types`), so spacing changes only the sampling, then written with a random file
orientation (KiTS's ``I,P,L`` with its permuted, negated affine, ``RAS``, ``LPS``, ...) whose
direction matrix keeps the anatomy correct in world space: the right kidney is on the patient's
right (LPS x < midline) whatever the array order in the file.

Anatomy (HU, corticomedullary phase, each value drawn per case):

* air -1000 outside a body outline: subcutaneous fat (-120..-80), abdominal-wall muscle
  (35..55), intra-abdominal fat (-110..-80);
* spine (cortical shell 700..1200, cancellous 200..350, discs ~80), ribs (400..900): bone that
  the paper's [0, 200] HU window saturates to the same value as enhanced cortex;
* aorta (200..300), IVC and renal veins (90..150), renal arteries; liver (60..110), gallbladder
  (0..20), spleen (100..130, mottled), psoas and paraspinal muscles; bowel loops with air, fluid
  or positive oral contrast (180..450);
* two kidneys beside the spine (one missing in ~10 % of cases): cortex (150..250), medulla
  pyramids (80..130), renal pelvis (0..20), hilum facing anteromedially, the right one lower;
* tumors in ~90 % of cases (1-3, 5 mm to > 80 mm, heterogeneous 30..130 with necrosis in large
  ones, endophytic or exophytic) and cysts (0..20) in ~35 %.

Labels (uint8): 1 kidney, 2 tumor, 3 cyst, painted kidney, then cyst, then tumor (tumor wins).
Then mild blur and Gaussian noise (sigma 10..25 HU); stored as int16 HU.

Geometry: in-plane field of view 320..480 mm (spacing = FOV / columns: 0.63..0.94 mm at 512,
2.5..3.75 mm at the default 128), slices 0.5..5 mm (a typical thickness near
250 mm / slices). The same seed gives the same anatomy at any shape.

Example:
    >>> ct, labels = make_phantom(0, shape=(24, 64, 64))
    >>> ct.array.dtype.name, labels.array.dtype.name, ct.shape == labels.shape
    ('int16', 'uint8', True)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kidneyseg.data.kits import IMAGE_NAME, KitsCase
from kidneyseg.errors import KidneysegError
from kidneyseg.types import CYST, KIDNEY, TUMOR, Volume

#: Canonical ``(slices, rows, cols)`` of the default phantom: small, so the CPU demo is quick.
DEFAULT_SHAPE = (48, 128, 128)
#: Label file written next to ``imaging.nii.gz`` (the KiTS19/KiTS23 name).
LABEL_NAME = "segmentation.nii.gz"
#: File orientations drawn when writing (nibabel-style axcodes); KiTS's own is the most common.
ORIENTATIONS = ("IPL", "RAS", "LPS", "LAS", "RPI", "PLS", "ASR", "SLA")
_KITS_ORIENTATION_P = 0.4
#: Slice thicknesses a scanner would reconstruct (mm).
_THICKNESSES = (0.5, 0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
_MIN_INPLANE = 16
#: Bumped whenever the generator's output changes, so a resumed cohort is never mixed.
GENERATOR_VERSION = 1

Array = npt.NDArray[np.float32]
Box = tuple[slice, slice, slice]


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
class _Grid:
    """Voxel-centre coordinates (mm, LPS, relative to the body centre) of the canonical axes."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def axes(self) -> tuple[np.ndarray, ...]:
        return (self.z, self.y, self.x)

    def box(self, center: npt.ArrayLike, half: npt.ArrayLike) -> Box | None:
        """Index slices covering ``center +- half`` (mm), or None when outside the volume."""
        out = []
        for coords, c, h in zip(self.axes, np.asarray(center), np.asarray(half), strict=True):
            step = coords[1] - coords[0] if len(coords) > 1 else 1.0
            lo = max(int(np.floor((c - h - coords[0]) / step)), 0)
            hi = min(int(np.ceil((c + h - coords[0]) / step)) + 1, len(coords))
            if lo >= hi:
                return None
            out.append(slice(lo, hi))
        return tuple(out)  # type: ignore[return-value]

    def offsets(self, box: Box, center: npt.ArrayLike) -> tuple[Array, Array, Array]:
        """Broadcastable ``(dz, dy, dx)`` from ``center`` over ``box``."""
        c = np.asarray(center, dtype=np.float64)
        dz = (self.z[box[0]] - c[0]).astype(np.float32)[:, None, None]
        dy = (self.y[box[1]] - c[1]).astype(np.float32)[None, :, None]
        dx = (self.x[box[2]] - c[2]).astype(np.float32)[None, None, :]
        return dz, dy, dx


@dataclass
class _Canvas:
    """The HU and label arrays being painted, with the grid and the abdominal-cavity mask."""

    grid: _Grid
    hu: Array
    labels: npt.NDArray[np.uint8]
    cavity2d: npt.NDArray[np.bool_]

    def paint(
        self,
        box: Box,
        mask: npt.NDArray[np.bool_],
        value: float | Array,
        label: int | None = None,
        inside_cavity: bool = True,
    ) -> None:
        """Set HU (a number or an array over ``box``) and optionally the label where ``mask``."""
        if inside_cavity:
            mask = mask & self.cavity2d[box[1], box[2]][None]
        region = self.hu[box]
        region[mask] = value if np.isscalar(value) else np.broadcast_to(value, mask.shape)[mask]
        if label is not None:
            self.labels[box][mask] = label


def _rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _ellipsoid(
    grid: _Grid,
    center: npt.ArrayLike,
    semi: npt.ArrayLike,
    rot: npt.NDArray[np.float64] | None = None,
) -> tuple[Box, list[Array], Array] | None:
    """Local coordinates and normalised radius^2 of an ellipsoid over its bounding box.

    ``rot``'s columns are the ellipsoid's axes in world ``(z, y, x)``; ``semi`` its semi-axes.
    Returns ``(box, [u0, u1, u2], r2)`` with ``r2 < 1`` inside, or None when off the grid.
    """
    a = np.asarray(semi, dtype=np.float64)
    R = np.eye(3) if rot is None else rot
    half = np.sqrt((R**2) @ (a**2)) + 1e-6
    box = grid.box(center, half)
    if box is None:
        return None
    dz, dy, dx = grid.offsets(box, center)
    u = [
        np.float32(R[0, j]) * dz + np.float32(R[1, j]) * dy + np.float32(R[2, j]) * dx
        for j in range(3)
    ]
    r2 = sum((uj / np.float32(aj)) ** 2 for uj, aj in zip(u, a, strict=True))
    return box, u, r2  # type: ignore[return-value]


def _capsule(
    grid: _Grid, p0: npt.ArrayLike, p1: npt.ArrayLike, radius: float
) -> tuple[Box, npt.NDArray[np.bool_]] | None:
    """A tube of ``radius`` mm around the segment p0-p1 (world ``(z, y, x)`` mm)."""
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    box = grid.box((a + b) / 2, np.abs(b - a) / 2 + radius)
    if box is None:
        return None
    dz, dy, dx = grid.offsets(box, a)
    d = (b - a).astype(np.float32)
    length2 = max(float(d @ d), 1e-9)
    t = np.clip((dz * d[0] + dy * d[1] + dx * d[2]) / np.float32(length2), 0, 1)
    dist2 = (dz - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dx - t * d[2]) ** 2
    return box, dist2 < np.float32(radius**2)


def _texture(
    rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float]
) -> Callable[[list[Array]], Array]:
    """Smooth pseudo-random texture: a sum of three random plane waves over local coords.

    The waves are drawn now (whether or not the object is on the grid, so later draws and thus
    the anatomy do not depend on the volume's shape) and evaluated on local coordinates later.
    """
    waves = []
    for _ in range(3):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (np.linalg.norm(k) * rng.uniform(*wavelength))
        waves.append((k.astype(np.float32), np.float32(rng.uniform(0, 2 * np.pi))))
    scale = np.float32(amplitude / np.sqrt(3))

    def evaluate(u: list[Array]) -> Array:
        out = sum(np.sin(sum(k[j] * u[j] for j in range(3)) + phase) for k, phase in waves)
        return (scale * out).astype(np.float32)

    return evaluate


def _superellipse(
    y: npt.NDArray[np.float64], x: npt.NDArray[np.float64], a: float, b: float, p: float
) -> npt.NDArray[np.bool_]:
    """2D mask ``|x/a|^p + |y/b|^p < 1`` on the (rows, cols) grid (a boxy body outline)."""
    return (np.abs(x[None, :] / a) ** p + np.abs(y[:, None] / b) ** p) < 1


def _geometry(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[tuple[float, float, float], _Grid, tuple[float, float, float]]:
    """Canonical spacing (z, y, x mm), the grid, and the world LPS origin offset."""
    nz, ny, nx = shape
    fov = rng.uniform(320.0, 480.0)
    inplane = fov / max(ny, nx)
    extent = rng.uniform(200.0, 300.0)
    wanted = float(np.clip(extent / nz, _THICKNESSES[0], _THICKNESSES[-1]))
    thickness = min(_THICKNESSES, key=lambda t: abs(np.log(t / wanted)))
    # Kidneys sit near z=0; the scan's centre is shifted so they are not always centred.
    z_shift, y_shift = rng.uniform(-25.0, 25.0), rng.uniform(-10.0, 10.0)
    grid = _Grid(
        z=(np.arange(nz) - (nz - 1) / 2) * thickness + z_shift,
        y=(np.arange(ny) - (ny - 1) / 2) * inplane + y_shift,
        x=(np.arange(nx) - (nx - 1) / 2) * inplane,
    )
    table = (0.0, rng.uniform(-20.0, 20.0), rng.uniform(-400.0, 0.0))  # scanner offsets, LPS
    return (thickness, inplane, inplane), grid, table


def _body(rng: np.random.Generator, canvas: _Canvas, fov_half: tuple[float, float]) -> dict:
    """Body outline, fat, wall muscle, cavity, back muscles; returns the body's dimensions."""
    g = canvas.grid
    a = min(rng.uniform(135.0, 175.0), 0.46 * 2 * fov_half[1])  # lateral half-width
    b = min(a * rng.uniform(0.62, 0.8), 0.46 * 2 * fov_half[0])  # antero-posterior
    p = rng.uniform(2.2, 2.8)
    fat_t, wall_t = rng.uniform(8.0, 35.0), rng.uniform(8.0, 14.0)
    body = _superellipse(g.y, g.x, a, b, p)
    wall = _superellipse(g.y, g.x, a - fat_t, b - fat_t, p)
    cavity = _superellipse(g.y, g.x, a - fat_t - wall_t, b - fat_t - wall_t, p)
    canvas.cavity2d[:] = cavity
    canvas.hu[:, body] = rng.uniform(-120.0, -80.0)
    canvas.hu[:, wall] = rng.uniform(35.0, 55.0)
    canvas.hu[:, cavity] = rng.uniform(-110.0, -80.0)
    cav_a, cav_b = a - fat_t - wall_t, b - fat_t - wall_t
    # Spine landmarks (mm, +y posterior): the spinous process tip lies just under the skin fat.
    canal_y = b - fat_t - rng.uniform(38.0, 48.0)
    vb_r = rng.uniform(16.0, 21.0)
    vb_y = canal_y - rng.uniform(9.0, 11.0) - 0.85 * vb_r
    muscle_hu = rng.uniform(40.0, 55.0)
    # Paraspinal muscles behind the transverse processes (part of the wall, not the cavity).
    for side in (-1, 1):
        m = (
            ((g.x[None, :] - side * 35.0) / 26.0) ** 2 + ((g.y[:, None] - canal_y - 12) / 24.0) ** 2
        ) < 1
        canvas.hu[:, m] = muscle_hu
    return {
        "a": a,
        "b": b,
        "p": p,
        "fat_t": fat_t,
        "wall_t": wall_t,
        "cav_a": cav_a,
        "cav_b": cav_b,
        "canal_y": canal_y,
        "vb_r": vb_r,
        "vb_y": vb_y,
        "muscle_hu": muscle_hu,
    }


def _psoas(rng: np.random.Generator, canvas: _Canvas, body: dict, z_top: float) -> None:
    """Psoas muscles beside the vertebral bodies, growing caudally below ``z_top``."""
    g = canvas.grid
    growth = rng.uniform(0.12, 0.2)
    for k, z in enumerate(g.z):
        r = min(6.0 + (z_top - z) * growth, 30.0)
        if r <= 4.0:
            continue
        for side in (-1, 1):
            cx, cy = side * (body["vb_r"] + r * 0.9), body["vb_y"] + 0.2 * r
            box = g.box((z, cy, cx), (0.0, r, r))
            if box is None:
                continue
            _, dy, dx = g.offsets(box, (z, cy, cx))
            mask = (dy[0] ** 2 + dx[0] ** 2) < r * r
            canvas.hu[k, box[1], box[2]][mask] = body["muscle_hu"]


def _spine_and_ribs(rng: np.random.Generator, canvas: _Canvas, body: dict) -> None:
    """Vertebrae (bodies, discs, canal, posterior elements) and the lower ribs."""
    g = canvas.grid
    Y, X = g.y[:, None], g.x[None, :]
    vb_r, vb_y, canal_y = body["vb_r"], body["vb_y"], body["canal_y"]
    vb_dist = (X / vb_r) ** 2 + ((Y - vb_y) / (0.85 * vb_r)) ** 2
    shell = 2.0 / vb_r
    vb_inner, vb_all = vb_dist < (1 - shell) ** 2, vb_dist < 1
    canal_d2 = X**2 + (Y - canal_y) ** 2
    canal_r = rng.uniform(8.0, 10.0)
    arch = (canal_d2 < (canal_r + 5.0) ** 2) & ~vb_all
    canal = canal_d2 < canal_r**2
    spinous = ((X / 4.5) ** 2 + ((Y - canal_y - canal_r - 14) / 16.0) ** 2) < 1
    transverse = ((np.abs(X) - 32.0) / 20.0) ** 2 + ((Y - canal_y + 3) / 6.0) ** 2 < 1
    cortical, cancellous = rng.uniform(700.0, 1200.0), rng.uniform(200.0, 350.0)
    posterior_hu, disc_hu = rng.uniform(500.0, 900.0), rng.uniform(70.0, 100.0)
    level, disc_h, phase = rng.uniform(27.0, 32.0), rng.uniform(6.0, 9.0), rng.uniform(0, 40)
    for k, z in enumerate(g.z):
        in_level = (z + phase) % level
        sl = canvas.hu[k]
        if in_level < disc_h:
            sl[vb_all] = disc_hu
        else:
            sl[vb_all] = cortical
            sl[vb_inner] = cancellous
            if in_level < disc_h + 0.45 * level:
                sl[transverse] = posterior_hu
        sl[arch | spinous] = posterior_hu
        sl[canal] = 15.0
    # Ribs: tubes along the body wall, sloping down anteriorly; the lowest near mid-kidney.
    wall_a = body["a"] - body["fat_t"] - body["wall_t"] * 0.5
    wall_b = body["b"] - body["fat_t"] - body["wall_t"] * 0.5
    rib_hu, rib_gap = rng.uniform(400.0, 900.0), rng.uniform(24.0, 30.0)
    z_low = rng.uniform(-10.0, 20.0)
    for side in (-1, 1):
        for k in range(8):
            z0 = z_low + k * rib_gap + (8.0 if side > 0 else 0.0)
            drop, radius = rng.uniform(40.0, 70.0), rng.uniform(3.5, 5.5)
            psi_end = min(1.5 + 0.18 * k, 2.4)
            psis = np.linspace(0.35, psi_end, 9)
            pts = [
                (
                    z0 - drop * (psi - psis[0]) / (psi_end - psis[0]),
                    wall_b * np.cos(psi),
                    side * wall_a * np.sin(psi),
                )
                for psi in psis
            ]
            for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
                tube = _capsule(g, p0, p1, radius)
                if tube is not None:
                    canvas.paint(*tube, rib_hu, inside_cavity=False)


def _vessels(rng: np.random.Generator, canvas: _Canvas, body: dict) -> dict:
    """Aorta (left of midline, in front of the spine) and IVC (right); returns their axes."""
    g = canvas.grid
    z0, z1 = g.z[0] - 10, g.z[-1] + 10
    ao_r = rng.uniform(9.0, 13.0)
    ao = (body["vb_y"] - 0.85 * body["vb_r"] - ao_r - 2.0, rng.uniform(4.0, 14.0))
    ivc_r = rng.uniform(9.0, 13.0)
    ivc = (ao[0] + rng.uniform(-6.0, 2.0), -rng.uniform(22.0, 32.0))
    ao_hu, vein_hu = rng.uniform(200.0, 300.0), rng.uniform(90.0, 150.0)
    for (y, x), r, hu in ((ao, ao_r, ao_hu), (ivc, ivc_r, vein_hu)):
        tube = _capsule(g, (z0, y, x), (z1, y, x), r)
        if tube is not None:
            canvas.paint(*tube, hu)
    return {"aorta": ao, "ivc": ivc, "ao_hu": ao_hu, "vein_hu": vein_hu}


def _organs(rng: np.random.Generator, canvas: _Canvas, body: dict) -> list[tuple]:
    """Liver, gallbladder and spleen; returns their (centre, semi, rot) for placement checks."""
    g = canvas.grid
    ca, cb = body["cav_a"], body["cav_b"]
    placed = []
    tilt = np.eye(3)
    liver_c = (rng.uniform(85.0, 115.0), -0.15 * cb, -0.42 * ca)
    liver_s = (rng.uniform(75.0, 95.0), 0.8 * cb, 0.55 * ca)
    liver_hu, liver_tex = rng.uniform(60.0, 110.0), _texture(rng, 6.0, (15.0, 40.0))
    liver = _ellipsoid(g, liver_c, liver_s, tilt)
    if liver is not None:
        box, u, r2 = liver
        canvas.paint(box, r2 < 1, liver_hu + liver_tex(u))
    placed.append((liver_c, liver_s, tilt))
    if rng.random() < 0.6:
        gb_c = (liver_c[0] - 0.6 * liver_s[0], liver_c[1] - 0.4 * liver_s[1], liver_c[2] + 10)
        gb = _ellipsoid(g, gb_c, (rng.uniform(25, 40), rng.uniform(12, 18), rng.uniform(12, 18)))
        gb_hu = rng.uniform(0.0, 20.0)
        if gb is not None:
            canvas.paint(gb[0], gb[2] < 1, gb_hu)
    spleen_c = (rng.uniform(55.0, 80.0), 0.3 * cb, 0.68 * ca)
    spleen_s = (rng.uniform(45.0, 60.0), rng.uniform(40.0, 55.0), rng.uniform(18.0, 28.0))
    rot = _axis_rotation(0, rng.uniform(-35.0, -15.0))
    spleen_hu, spleen_tex = rng.uniform(100.0, 130.0), _texture(rng, 18.0, (10.0, 25.0))
    spleen = _ellipsoid(g, spleen_c, spleen_s, rot)
    if spleen is not None:
        box, u, r2 = spleen
        canvas.paint(box, r2 < 1, spleen_hu + spleen_tex(u))
    placed.append((spleen_c, spleen_s, rot))
    return placed


def _axis_rotation(axis: int, degrees: float) -> npt.NDArray[np.float64]:
    """Rotation about canonical axis 0 (z), 1 (y) or 2 (x)."""
    t = np.deg2rad(degrees)
    i, j = (k for k in range(3) if k != axis)
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return R


def _inside(point: npt.ArrayLike, obstacle: tuple, pad: float) -> bool:
    """True when ``point`` lies in the ellipsoid ``(center, semi, rot)`` grown by ``pad`` mm."""
    center, semi, rot = obstacle
    u = rot.T @ (np.asarray(point) - np.asarray(center))
    return bool(np.sum((u / (np.asarray(semi) + pad)) ** 2) < 1)


@dataclass(frozen=True)
class _Kidney:
    side: int  # -1 patient right (LPS x < 0), +1 left
    center: tuple[float, float, float]
    semi: tuple[float, float, float]  # long, antero-posterior, medio-lateral (mm)
    rot: npt.NDArray[np.float64]  # columns: long axis, AP axis, hilum (medial) axis

    @property
    def hilum(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.center) + self.rot[:, 2] * self.semi[2] * 0.8


def _place_kidneys(rng: np.random.Generator, body: dict) -> list[_Kidney]:
    kidneys = []
    z_left = rng.uniform(-5.0, 15.0)
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
        x = min(rng.uniform(62.0, 80.0), body["cav_a"] - semi[2] - 12.0)
        y = body["vb_y"] + rng.uniform(-5.0, 8.0)
        z = z_left - (rng.uniform(8.0, 20.0) if side < 0 else 0.0)  # the liver pushes it down
        kidneys.append(
            _Kidney(side, (z, y, side * x), semi, np.stack([long_axis, ap, hilum], axis=1))
        )
    return kidneys


def _renal_vessels(canvas: _Canvas, kidneys: list[_Kidney], vessels: dict) -> None:
    g = canvas.grid
    for k in kidneys:
        h = k.hilum
        ao = np.array([h[0] + 5, *vessels["aorta"]])
        ivc_y, ivc_x = vessels["ivc"]
        if k.side < 0:
            vein = [(h, np.array([h[0], ivc_y, ivc_x]))]
        else:  # the left renal vein crosses in front of the aorta to reach the IVC
            front = np.array([h[0], vessels["aorta"][0] - 14.0, vessels["aorta"][1]])
            vein = [(h, front), (front, np.array([h[0], ivc_y, ivc_x]))]
        for p0, p1 in vein:
            tube = _capsule(g, p0, p1, 4.5)
            if tube is not None:
                canvas.paint(*tube, vessels["vein_hu"])
        tube = _capsule(g, ao, h + np.array([5.0, -4.0, 0.0]), 2.8)
        if tube is not None:
            canvas.paint(*tube, vessels["ao_hu"])


def _bowel(rng: np.random.Generator, canvas: _Canvas, body: dict, avoid: list[tuple]) -> None:
    """Bowel loops (wall ~40 HU) holding air, fluid or positive oral contrast."""
    g = canvas.grid
    ca, cb = body["cav_a"], body["cav_b"]
    wanted, tries = int(rng.integers(50, 81)), 0
    placed = 0
    while placed < wanted and tries < 1000:
        tries += 1
        colon = rng.random() < 0.3
        r = rng.uniform(14.0, 22.0) if colon else rng.uniform(9.0, 15.0)
        c = np.array(
            [
                rng.uniform(-140.0, 140.0),  # physical range: the same loops at any shape
                rng.uniform(-0.95 * cb, 0.4 * cb),
                rng.uniform(-0.85 * ca, 0.85 * ca),
            ]
        )
        if abs(c[2] / ca) ** body["p"] + abs(c[1] / cb) ** body["p"] > 0.9:
            continue
        if any(_inside(c, obstacle, pad=r + 4) for obstacle in avoid):
            continue
        d = rng.normal(size=3)
        d *= rng.uniform(15.0, 40.0) / np.linalg.norm(d)
        content = rng.choice(3, p=(0.25, 0.35, 0.4))
        hu = (rng.uniform(-950.0, -600.0), rng.uniform(0.0, 25.0), rng.uniform(180.0, 450.0))
        wall = _capsule(g, c - d, c + d, r)
        lumen = _capsule(g, c - d, c + d, r - rng.uniform(1.5, 3.0))
        wall_hu = rng.uniform(30.0, 50.0)
        if wall is not None:
            canvas.paint(*wall, wall_hu)
        if lumen is not None:
            canvas.paint(*lumen, hu[content])
        placed += 1


def _paint_kidney(rng: np.random.Generator, canvas: _Canvas, k: _Kidney) -> None:
    """Cortex, medullary pyramids, renal pelvis and the hilum notch of one kidney."""
    cortex_t = rng.uniform(5.0, 8.0)
    n_pyr, phase = int(rng.integers(5, 8)), np.float32(rng.uniform(0, 2 * np.pi))
    sinus_hu, cortex_hu = rng.uniform(-100.0, -60.0), rng.uniform(150.0, 250.0)
    medulla_hu, pelvis_hu = rng.uniform(80.0, 130.0), rng.uniform(0.0, 20.0)
    found = _ellipsoid(canvas.grid, k.center, k.semi, k.rot)
    if found is None:
        return
    box, u, r2 = found
    L, ap, lat = k.semi

    def ellipsoid(center: tuple[float, float, float], semi: tuple[float, float, float]) -> Any:
        return sum(((u[j] - center[j]) / semi[j]) ** 2 for j in range(3)) < 1

    inside = r2 < 1
    notch = ellipsoid((0, 0, 0.95 * lat), (0.35 * L, 0.55 * ap, 0.5 * lat))
    parenchyma = inside & ~notch
    inner = ellipsoid((0, 0, 0), (L - cortex_t, ap - cortex_t, lat - cortex_t))
    # Pyramids: wedges around the sinus, separated by columns of cortex (Bertin).
    theta = np.arctan2(u[0] / L, (u[1] + u[2]) / (ap + lat))
    pyramids = inner & (np.cos(n_pyr * theta + phase) > -0.25)
    pelvis = inside & ellipsoid((0, 0, 0.45 * lat), (0.3 * L, 0.35 * ap, 0.4 * lat))
    canvas.paint(box, notch & inside & ~pelvis, sinus_hu)
    canvas.paint(box, parenchyma, cortex_hu, KIDNEY)
    canvas.paint(box, parenchyma & pyramids, medulla_hu, KIDNEY)
    canvas.paint(box, pelvis, pelvis_hu, KIDNEY)


def _mass_center(rng: np.random.Generator, k: _Kidney, radius: float, exophytic: bool) -> tuple:
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


def _masses(rng: np.random.Generator, canvas: _Canvas, kidneys: list[_Kidney]) -> tuple[int, int]:
    """Cysts then tumors on the kidneys present (tumor painted last, so it wins)."""
    g = canvas.grid
    n_cysts = int(rng.integers(1, 3)) if rng.random() < 0.35 else 0
    n_tumors = int(rng.integers(1, 4)) if rng.random() < 0.9 else 0
    for _ in range(n_cysts):
        k = kidneys[int(rng.integers(len(kidneys)))]
        r = np.exp(rng.uniform(np.log(2.5), np.log(20.0)))
        c = _mass_center(rng, k, r, exophytic=rng.random() < 0.6)
        found = _ellipsoid(g, c, r * rng.uniform(0.9, 1.1, size=3), _rotation(rng))
        cyst_hu = rng.uniform(0.0, 20.0)
        if found is not None:
            canvas.paint(found[0], found[2] < 1, cyst_hu, CYST)
    for i in range(n_tumors):
        k = kidneys[int(rng.integers(len(kidneys)))]
        # Diameters log-uniform: the main tumor 15-95 mm (KiTS median ~40 mm), satellites 5-30.
        lo, hi = (7.5, 47.5) if i == 0 else (2.5, 15.0)
        r = np.exp(rng.uniform(np.log(lo), np.log(hi)))
        exophytic = rng.random() < 0.5 or r > 0.8 * k.semi[1]
        c = _mass_center(rng, k, r, exophytic)
        found = _ellipsoid(g, c, r * rng.uniform(0.8, 1.2, size=3), _rotation(rng))
        base, texture = rng.uniform(45.0, 115.0), _texture(rng, 20.0, (0.4 * r + 4, 1.2 * r + 8))
        necrosis = rng.uniform(0.15, 0.35) if r > 20 and rng.random() < 0.6 else 0.0
        necrosis_hu = np.float32(rng.uniform(20.0, 40.0))
        if found is None:
            continue
        box, u, r2 = found
        hu = base + texture(u)
        if necrosis:  # the necrotic centre of a large tumor
            hu = np.where(r2 < necrosis, necrosis_hu, hu)
        canvas.paint(box, r2 < 1, np.clip(hu, 25.0, 140.0).astype(np.float32), TUMOR)
    return n_tumors, n_cysts


def _finish(rng: np.random.Generator, hu: Array) -> npt.NDArray[np.int16]:
    """Mild blur (partial volume), Gaussian noise, rounding to int16 HU."""
    from scipy.ndimage import gaussian_filter

    hu = gaussian_filter(hu, sigma=(0.4, 0.6, 0.6), truncate=3.0, output=np.float32)
    sigma = np.float32(rng.uniform(10.0, 25.0))
    out = np.empty(hu.shape, np.int16)
    step = max(1, 2**22 // max(1, hu[0].size))  # noise in slabs keeps the memory peak low
    for k in range(0, hu.shape[0], step):
        slab = hu[k : k + step]
        slab += sigma * rng.standard_normal(slab.shape, dtype=np.float32)
        out[k : k + step] = np.clip(np.rint(slab), -1024, 3071)
    return out


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    case_id: str = "",
) -> tuple[Volume, Volume]:
    """One synthetic abdominal CT and its label map.

    Args:
        seed: the same seed gives identical volumes; the anatomy (in mm) does not depend on
            ``shape`` or ``orientation``.
        shape: canonical ``(slices, rows, cols)``; default `DEFAULT_SHAPE`.
        orientation: file axcodes such as ``"IPL"`` (KiTS) or ``"RAS"``; default drawn at random.
        case_id: the volumes' ``case_id``.

    Returns:
        ``(ct, labels)``: int16 HU and uint8 labels (1 kidney, 2 tumor, 3 cyst) on one grid, in
        the file orientation. ``ct.metadata`` says which kidneys exist (``kidneys``: both,
        right or left), the number of tumors and cysts, and the orientation.

    Example:
        >>> ct, labels = make_phantom(3, shape=(16, 48, 48), orientation="RAS")
        >>> ct.axcodes, labels.shape
        (('R', 'A', 'S'), (48, 48, 16))
    """
    shape = _check_shape(shape)
    seq = np.random.SeedSequence(int(seed))
    rng_geo, rng_anat, rng_noise, rng_orient = (np.random.default_rng(s) for s in seq.spawn(4))
    if rng_orient.random() < _KITS_ORIENTATION_P:
        drawn = "IPL"
    else:
        drawn = ORIENTATIONS[int(rng_orient.integers(1, len(ORIENTATIONS)))]
    orientation = (orientation or drawn).upper()
    direction = direction_from_axcodes(orientation)

    spacing, grid, table = _geometry(rng_geo, shape)
    canvas = _Canvas(
        grid,
        hu=np.full(shape, -1000.0, np.float32),
        labels=np.zeros(shape, np.uint8),
        cavity2d=np.zeros(shape[1:], bool),
    )
    fov_half = (shape[1] * spacing[1] / 2, shape[2] * spacing[2] / 2)
    body = _body(rng_anat, canvas, fov_half)
    kidneys = _place_kidneys(rng_anat, body)
    _psoas(rng_anat, canvas, body, z_top=max(k.center[0] for k in kidneys) + 20.0)
    organs = _organs(rng_anat, canvas, body)
    vessels = _vessels(rng_anat, canvas, body)
    # ~10 % of patients have one kidney (nephrectomy or agenesis).
    missing = int(rng_anat.integers(2)) if rng_anat.random() < 0.1 else None
    present = [k for i, k in enumerate(kidneys) if i != missing]
    avoid = organs + [(k.center, k.semi, k.rot) for k in kidneys]
    _bowel(rng_anat, canvas, body, avoid)
    _spine_and_ribs(rng_anat, canvas, body)
    _renal_vessels(canvas, present, vessels)
    for k in present:
        _paint_kidney(rng_anat, canvas, k)
    n_tumors, n_cysts = _masses(rng_anat, canvas, present)
    ct = _finish(rng_noise, canvas.hu)

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
    kidneys_present = {None: "both", 0: "left", 1: "right"}[missing]  # kidneys[0] is the right
    metadata = {
        "kidneys": kidneys_present,
        "tumors": str(n_tumors),
        "cysts": str(n_cysts),
        "orientation": orientation,
        "seed": str(int(seed)),
    }
    sp = (file_spacing[0], file_spacing[1], file_spacing[2])
    org = (origin[0], origin[1], origin[2])
    dirs = tuple(tuple(float(v) for v in row) for row in direction)
    image = Volume(_file_order(ct, direction), sp, org, dirs, case_id, metadata)
    labels = Volume(_file_order(canvas.labels, direction), sp, org, dirs, case_id)
    return image, labels


def _file_order(canonical: np.ndarray, direction: npt.NDArray[np.float64]) -> np.ndarray:
    """A contiguous file-order array from a canonical one (see `kidneyseg.types`)."""
    from kidneyseg.types import from_canonical

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


def _write_case(out_dir: str, index: int, seed: int, shape: tuple[int, int, int]) -> str:
    from kidneyseg.io import write_volume
    from kidneyseg.utils import atomic_dir

    case_id = f"case_{index:05d}"
    ct, labels = make_phantom(seed, shape, case_id=case_id)
    stamp = {
        **ct.metadata,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "shape": list(shape),
    }
    with atomic_dir(Path(out_dir) / case_id) as tmp:
        write_volume(ct, tmp / IMAGE_NAME)
        write_volume(labels, tmp / LABEL_NAME)
        (tmp / "phantom.json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    return case_id


def _is_done(case_dir: Path, seed: int, shape: tuple[int, int, int]) -> bool:
    """True when ``case_dir`` already holds this exact phantom (a resumed cohort)."""
    try:
        stamp = json.loads((case_dir / "phantom.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        stamp.get("generator_version") == GENERATOR_VERSION
        and stamp.get("seed") == seed
        and stamp.get("shape") == list(shape)
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
) -> list[KitsCase]:
    """Write ``cases`` phantoms in the KiTS layout (``OUT/case_XXXXX/*.nii.gz``).

    Each case folder is written under a temporary name and renamed when complete, so a case
    folder is complete or absent. Cases already written with the same seed and shape are kept
    (an interrupted cohort resumes). A ``phantom.json`` beside the images records how the case
    was made (seed, shape, kidneys present, number of tumors and cysts, file orientation).

    Args:
        out_dir: output folder (created).
        cases: number of cases (>= 1).
        seed: cohort seed; case i uses `case_seed` (seed, i).
        shape: canonical ``(slices, rows, cols)`` of every case; default `DEFAULT_SHAPE`.
        workers: parallel processes.
        progress: show a progress bar (on a terminal).

    Returns:
        The cases, sorted by id.

    Raises:
        KidneysegError: ``cases`` < 1, a bad shape, or an unwritable ``out_dir``.

    Example:
        >>> cases = write_cohort("phantoms", cases=4, seed=0)  # doctest: +SKIP
        >>> cases[0].image.name, cases[0].label.name  # doctest: +SKIP
        ('imaging.nii.gz', 'segmentation.nii.gz')
    """
    from kidneyseg.utils import check_writable_dir

    if int(cases) < 1:
        raise KidneysegError(f"number of cases must be at least 1, got {cases}")
    if int(workers) < 1:
        raise KidneysegError(f"workers must be at least 1, got {workers}")
    dims = _check_shape(shape)
    out = check_writable_dir(out_dir)
    todo = []
    for i in range(int(cases)):
        s = case_seed(seed, i)
        if not _is_done(out / f"case_{i:05d}", s, dims):
            todo.append((i, s))
    _run(todo, int(workers), progress, out, dims)
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
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="phantoms", unit="case", disable=not progress or None)
    try:
        if workers == 1 or len(todo) <= 1:
            for i, s in todo:
                _write_case(str(out), i, s, shape)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork where there is one: workers need no state the parent's threads could hold (the
        # parent writes nothing with ITK), and spawn would demand a __main__ guard in scripts.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_write_case, str(out), i, s, shape) for i, s in todo]
            for future in as_completed(futures):
                future.result()
                bar.update()
    finally:
        bar.close()
