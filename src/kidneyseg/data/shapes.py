"""Geometry of the phantom generator: the mm grid, the painting canvas, solids and textures.

Everything is built in physical millimetres on the canonical ``(z, y, x)`` LPS grid (see
`kidneyseg.types`: z inferior->superior, y anterior->posterior, x patient right->left), with the
body centre at ``y = x = 0``. A solid is evaluated only over its bounding box, so its cost scales
with its size in voxels, not with the volume.

Example:
    >>> import numpy as np
    >>> grid = Grid(np.arange(5.0), np.arange(6.0), np.arange(7.0))
    >>> box, mask = capsule(grid, (2, 2, 1), (2, 2, 5), 1.5)  # 9 voxels a section, 5 + 2 caps
    >>> int(mask.sum())
    55
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
Box = tuple[slice, slice, slice]
Point = Sequence[float] | npt.NDArray[np.float64]


@dataclass(frozen=True)
class Grid:
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

    def zslab(self, z_lo: float, z_hi: float) -> slice:
        """The slices whose centres lie in ``[z_lo, z_hi]`` mm (possibly empty)."""
        lo = int(np.searchsorted(self.z, z_lo, side="left"))
        hi = int(np.searchsorted(self.z, z_hi, side="right"))
        return slice(lo, max(lo, hi))

    def offsets(self, box: Box, center: npt.ArrayLike) -> tuple[Array, Array, Array]:
        """Broadcastable ``(dz, dy, dx)`` from ``center`` over ``box``."""
        c = np.asarray(center, dtype=np.float64)
        dz = (self.z[box[0]] - c[0]).astype(np.float32)[:, None, None]
        dy = (self.y[box[1]] - c[1]).astype(np.float32)[None, :, None]
        dx = (self.x[box[2]] - c[2]).astype(np.float32)[None, None, :]
        return dz, dy, dx


@dataclass
class Canvas:
    """The HU and label arrays being painted, the grid, and the abdominal-cavity mask.

    ``organ_ids`` (optional, uint8 like ``labels``) records which named structure each voxel
    shows, so tests can find every organ; it costs one byte per voxel, so the cohort writer
    leaves it off.
    """

    grid: Grid
    hu: Array
    labels: npt.NDArray[np.uint8]
    cavity2d: Mask
    organ_ids: npt.NDArray[np.uint8] | None = None
    organ_names: list[str] = field(default_factory=lambda: ["background"])

    def _organ(self, organ: str | None) -> int:
        if organ is None:
            return 0
        if organ not in self.organ_names:
            self.organ_names.append(organ)
        return self.organ_names.index(organ)

    def paint(
        self,
        box: Box,
        mask: Mask,
        value: float | Array,
        label: int | None = None,
        inside_cavity: bool = True,
        organ: str | None = None,
    ) -> None:
        """Set HU (a number or an array over ``box``) and optionally the label where ``mask``."""
        if inside_cavity:
            mask = mask & self.cavity2d[box[1], box[2]][None]
        region = self.hu[box]
        region[mask] = value if np.isscalar(value) else np.broadcast_to(value, mask.shape)[mask]
        if label is not None:
            self.labels[box][mask] = label
        if self.organ_ids is not None:
            self.organ_ids[box][mask] = self._organ(organ)

    def paint2d(
        self, mask2d: Mask, value: float | Array, organ: str | None, zs: slice = slice(None)
    ) -> None:
        """Paint a 2D ``(rows, cols)`` mask on every slice of ``zs`` (a structure constant in z).

        ``value`` is a number or a 2D array over the whole slice.
        """
        if not mask2d.any() or not len(range(*zs.indices(self.hu.shape[0]))):
            return
        v = value if np.isscalar(value) else np.asarray(value)[mask2d]
        self.hu[zs][:, mask2d] = v
        if self.organ_ids is not None:
            self.organ_ids[zs][:, mask2d] = self._organ(organ)

    def organ_masks(self) -> dict[str, Mask]:
        """Boolean mask of every named structure where it is visible in the final image."""
        if self.organ_ids is None:
            raise ValueError("this canvas does not record organs")
        ids = self.organ_ids
        return {name: ids == i for i, name in enumerate(self.organ_names) if i > 0}


def rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def axis_rotation(axis: int, degrees: float) -> npt.NDArray[np.float64]:
    """Rotation about canonical axis 0 (z), 1 (y) or 2 (x)."""
    t = np.deg2rad(degrees)
    i, j = (k for k in range(3) if k != axis)
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return rot


def ellipsoid(
    grid: Grid,
    center: npt.ArrayLike,
    semi: npt.ArrayLike,
    rot: npt.NDArray[np.float64] | None = None,
) -> tuple[Box, list[Array], Array] | None:
    """Local coordinates and normalised radius^2 of an ellipsoid over its bounding box.

    ``rot``'s columns are the ellipsoid's axes in world ``(z, y, x)``; ``semi`` its semi-axes.
    Returns ``(box, [u0, u1, u2], r2)`` with ``r2 < 1`` inside, or None when off the grid.
    """
    a = np.asarray(semi, dtype=np.float64)
    rmat = np.eye(3) if rot is None else rot
    half = np.sqrt((rmat**2) @ (a**2)) + 1e-6
    box = grid.box(center, half)
    if box is None:
        return None
    dz, dy, dx = grid.offsets(box, center)
    u = [
        np.float32(rmat[0, j]) * dz + np.float32(rmat[1, j]) * dy + np.float32(rmat[2, j]) * dx
        for j in range(3)
    ]
    r2 = sum((uj / np.float32(aj)) ** 2 for uj, aj in zip(u, a, strict=True))
    return box, u, r2  # type: ignore[return-value]


def segment(grid: Grid, p0: Point, p1: Point, radius: float) -> tuple[Box, Array, Array] | None:
    """Squared distance (mm^2) to the segment p0-p1 and the position t in [0, 1] along it.

    Evaluated over the box of the segment grown by ``radius``; None when off the grid.
    """
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    box = grid.box((a + b) / 2, np.abs(b - a) / 2 + radius)
    if box is None:
        return None
    dz, dy, dx = grid.offsets(box, a)
    d = (b - a).astype(np.float32)
    length2 = max(float(d @ d), 1e-9)
    t = np.clip((dz * d[0] + dy * d[1] + dx * d[2]) / np.float32(length2), 0, 1)
    dist2 = (dz - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dx - t * d[2]) ** 2
    return box, dist2, t


def capsule(grid: Grid, p0: Point, p1: Point, radius: float) -> tuple[Box, Mask] | None:
    """A tube of ``radius`` mm around the segment p0-p1 (world ``(z, y, x)`` mm)."""
    found = segment(grid, p0, p1, radius)
    if found is None:
        return None
    box, dist2, _ = found
    return box, dist2 < np.float32(radius**2)


def tube(
    grid: Grid,
    knots: Sequence[Sequence[float]],
    power: float = 2.0,
) -> tuple[Box, Mask] | None:
    """A vertical tube whose elliptical cross-section follows ``knots`` along z.

    Each knot is ``(z, cy, cx, semi_y, semi_x)`` mm, sorted by z; between knots everything is
    interpolated linearly, and the tube ends at the first and last knot. ``power`` 2 gives
    ellipses, larger powers boxier sections. Muscles (psoas, quadratus lumborum), the crura and
    the IVC are tubes.
    """
    k = np.asarray(knots, dtype=np.float64)
    lo = [k[0, 0], np.min(k[:, 1] - k[:, 3]), np.min(k[:, 2] - k[:, 4])]
    hi = [k[-1, 0], np.max(k[:, 1] + k[:, 3]), np.max(k[:, 2] + k[:, 4])]
    center, half = (np.add(lo, hi)) / 2, (np.subtract(hi, lo)) / 2
    box = grid.box(center, half)
    if box is None:
        return None
    z = grid.z[box[0]]
    inz = (z >= k[0, 0]) & (z <= k[-1, 0])
    cy, cx, sy, sx = (np.interp(z, k[:, 0], k[:, j]).astype(np.float32) for j in range(1, 5))
    y = grid.y[box[1]].astype(np.float32)[None, :, None]
    x = grid.x[box[2]].astype(np.float32)[None, None, :]
    dy = np.abs(y - cy[:, None, None]) / np.maximum(sy, 1e-3)[:, None, None]
    dx = np.abs(x - cx[:, None, None]) / np.maximum(sx, 1e-3)[:, None, None]
    if power == 2.0:
        mask = dy**2 + dx**2 < 1
    else:
        mask = dy**power + dx**power < 1
    return box, mask & inz[:, None, None]


def texture(
    rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float], waves: int = 3
) -> Callable[[Sequence[Array]], Array]:
    """Smooth pseudo-random texture: a sum of random plane waves over local coordinates.

    The waves are drawn now (whether or not the object is on the grid, so later draws and thus
    the anatomy do not depend on the volume's shape) and evaluated on coordinates later: three
    arrays for 3D, two for a 2D (y, x) texture, using the waves' first components.
    """
    drawn = []
    for _ in range(waves):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (np.linalg.norm(k) * rng.uniform(*wavelength))
        drawn.append((k.astype(np.float32), np.float32(rng.uniform(0, 2 * np.pi))))
    scale = np.float32(amplitude * np.sqrt(2.0 / waves))

    def evaluate(u: Sequence[Array]) -> Array:
        out = sum(np.sin(sum(k[j] * u[j] for j in range(len(u))) + phase) for k, phase in drawn)
        return (scale * out).astype(np.float32)

    return evaluate


def superellipse(
    y: npt.NDArray[np.float64], x: npt.NDArray[np.float64], a: float, b: float, p: float
) -> Mask:
    """2D mask ``|x/a|^p + |y/b|^p < 1`` on the (rows, cols) grid (a boxy body outline)."""
    return (np.abs(x[None, :] / a) ** p + np.abs(y[:, None] / b) ** p) < 1


def outline(
    y: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    a: float,
    b_ant: float,
    b_post: float,
    p_ant: float,
    p_post: float,
) -> Mask:
    """A body-like 2D outline: a superellipse with its own depth and boxiness front and back.

    The back of a supine patient is flatter (larger ``p_post``) than the belly.
    """
    ant = superellipse(y, x, a, max(b_ant, 1e-3), p_ant) & (y[:, None] < 0)
    post = superellipse(y, x, a, max(b_post, 1e-3), p_post) & (y[:, None] >= 0)
    return ant | post


def inside(point: npt.ArrayLike, obstacle: tuple, pad: float) -> bool:
    """True when ``point`` lies in the ellipsoid ``(center, semi, rot)`` grown by ``pad`` mm."""
    center, semi, rot = obstacle
    u = rot.T @ (np.asarray(point) - np.asarray(center))
    return bool(np.sum((u / (np.asarray(semi) + pad)) ** 2) < 1)


def hollow_chain(
    canvas: Canvas,
    points: Sequence[Point],
    radii: Sequence[float],
    wall: float,
    wall_hu: float,
    content: Callable[[Box, Mask], float | Array],
    organ: str,
    into_fat: bool = True,
) -> None:
    """A hollow tube along a polyline (bowel, stomach): all walls first, then all lumens.

    Painting every wall before any lumen keeps the lumen open across the joints. ``radii`` give
    the outer radius at each point (linear in between); ``content(box, lumen)`` returns the
    lumen's HU (a number or an array over the box: gas above a fluid level, contrast, faeces).
    With ``into_fat`` the tube only replaces fat (HU -200..-30 before it is painted), so bowel
    moulds itself around the solid organs painted before it instead of cutting into them.
    """
    parts = []
    for i in range(len(points) - 1):
        r0, r1 = float(radii[i]), float(radii[i + 1])
        found = segment(canvas.grid, points[i], points[i + 1], max(r0, r1))
        if found is None:
            continue
        box, dist2, t = found
        r = np.float32(r0) + np.float32(r1 - r0) * t
        outer = dist2 < r * r
        lumen = dist2 < np.maximum(r - np.float32(wall), 0.5) ** 2
        if into_fat:
            before = canvas.hu[box]
            allowed = (before > -200) & (before < -30)
            outer &= allowed
            lumen &= allowed
        parts.append((box, outer, lumen))
    for box, outer, _ in parts:
        canvas.paint(box, outer, wall_hu, organ=organ)
    for box, _, lumen in parts:
        canvas.paint(box, lumen, content(box, lumen), organ=organ)


def box2d(grid: Grid, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice] | None:
    """Row and column slices of the in-plane window ``[y0, y1] x [x0, x1]`` mm (None if empty)."""
    ys = np.searchsorted(grid.y, [y0, y1])
    xs = np.searchsorted(grid.x, [x0, x1])
    if ys[0] >= ys[1] or xs[0] >= xs[1]:
        return None
    return slice(int(ys[0]), int(ys[1])), slice(int(xs[0]), int(xs[1]))
