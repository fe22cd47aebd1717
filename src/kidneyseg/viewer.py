"""``kidneyseg view``: one self-contained HTML page to scroll through a CT and its labels.

The page opens from disk in any current browser, with no server and no network (a
Content-Security-Policy forbids every request): axial, coronal and sagittal canvases with the
voxels' physical aspect, slider and mouse wheel through slices, a crosshair linking the views
(click or drag sets it), overlay on/off and opacity, window presets (soft tissue [-160, 240] HU,
the paper's [0, 200], wide [-1000, 1000]), patient orientation letters, and the measurements
(`kidneyseg.stats`: volumes per label and side, each tumor with a row that jumps to its
centroid). Several label maps may be shown at once: the first filled, the others outlined
(the report shows prediction vs ground truth so).

Why a canvas viewer of our own rather than NiiVue: NiiVue (~1 MB of JavaScript, WebGL2) would
have to be inlined into every page and its version kept; ours is ~300 lines of vanilla JS
(`viewer_assets/viewer.js`) that needs no WebGL, makes no request, and exposes its state
(`window.kidneysegViewer`, ``data-slice`` on each canvas) so the browser tests can drive it.
What it lacks (3D rendering, oblique reslicing) is not needed to check a kidney segmentation.

How the page stays small: arrays are embedded as base64 of gzip-compressed uint8, decompressed
in the browser by ``DecompressionStream`` (Chrome 80+, Firefox 113+, Safari 16.4+).

* CT: one byte per voxel through a piecewise-linear HU code (`encode_hu`): 2.5 HU per step
  in [-200, 300] HU (where every preset's window lies), coarse steps below (air, lung) and
  above (bone, metal). When ``nz * ny * nx`` exceeds `CT_VOXEL_BUDGET` (20 M) the CT is
  averaged over f x f blocks in-plane, f the smallest integer that fits (a 512 x 512 x 300 CT:
  f = 2, 19.7 M bytes before compression); slices are never merged.
* Labels: full resolution when the compressed map stays under `LABEL_BYTES_BUDGET`
  (kidney label maps compress ~100x), otherwise sampled on the CT's grid.

So a page holds at most ~27 MB of CT (base64 of 20 M incompressible bytes) plus a few MB of
labels; a real 512 x 512 x 300 CT gives ~11 MB (see the README).

Example:
    >>> view_files("ct.nii.gz", "labels.nii.gz", "page.html")  # doctest: +SKIP
    PosixPath('page.html')
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import case_id_from_path
from kidneyseg.io import read_image, read_labels
from kidneyseg.preview import LABEL_RGB, SOFT_TISSUE
from kidneyseg.stats import REGIONS, SIDE_RULES, CanonicalGeometry, Measurements, measure
from kidneyseg.types import LABEL_NAMES, Array, Volume
from kidneyseg.utils import atomic_write_text

#: CT voxels embedded at most (in-plane block averaging above it).
CT_VOXEL_BUDGET: Final = 20_000_000
#: Compressed bytes of one label map above which it is sampled on the CT's grid.
LABEL_BYTES_BUDGET: Final = 4 << 20
#: Window presets (name, (low, high) HU); the first is the default.
WINDOWS: Final = (
    ("soft tissue [-160, 240]", SOFT_TISSUE),
    ("paper [0, 200]", (0.0, 200.0)),
    ("wide [-1000, 1000]", (-1000.0, 1000.0)),
)
VIEW_SUFFIX: Final = "_view.html"

_CODE_HU = (-1024.0, -200.0, 300.0, 3071.0)  # HU at the code breakpoints below
_CODE_AT = (0.0, 24.0, 224.0, 255.0)
_BOX_PX = 400
_LETTERS = {  # top, left, right, bottom
    "axial": ("A", "R", "L", "P"),
    "coronal": ("S", "R", "L", "I"),
    "sagittal": ("S", "A", "P", "I"),
}


def encode_hu(hu: Array) -> Array:
    """HU -> uint8 codes (module doc); `hu_of_codes` inverts it.

    Example:
        >>> encode_hu(np.array([-2000, -200, 0, 300, 4000])).tolist()
        [0, 24, 104, 224, 255]
    """
    return np.rint(np.interp(np.asarray(hu, np.float32), _CODE_HU, _CODE_AT)).astype(np.uint8)


def hu_of_codes() -> list[float]:
    """The HU each of the 256 codes stands for."""
    return [round(float(v), 2) for v in np.interp(np.arange(256), _CODE_AT, _CODE_HU)]


def in_plane_factor(shape: Sequence[int], budget: int = CT_VOXEL_BUDGET) -> int:
    """The smallest in-plane block size f with ``nz * ceil(ny/f) * ceil(nx/f) <= budget``.

    Example:
        >>> in_plane_factor((300, 512, 512)), in_plane_factor((100, 512, 512))
        (2, 1)
    """
    nz, ny, nx = (int(n) for n in shape)
    f = 1
    while nz * math.ceil(ny / f) * math.ceil(nx / f) > budget and f < max(ny, nx):
        f += 1
    return f


def _ct_codes(ct: Array, f: int) -> Array:
    """The canonical CT as codes, averaged over f x f in-plane blocks (edges padded)."""
    if f == 1:
        return encode_hu(ct)
    nz, ny, nx = ct.shape
    my, mx = math.ceil(ny / f), math.ceil(nx / f)
    out = np.empty((nz, my, mx), np.uint8)
    for z in range(nz):  # one slice at a time keeps the float copy small
        sl = np.pad(np.asarray(ct[z], np.float32), ((0, my * f - ny), (0, mx * f - nx)), "edge")
        out[z] = encode_hu(sl.reshape(my, f, mx, f).mean(axis=(1, 3)))
    return out


def _blob(arr: Array) -> str:
    data = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    return base64.b64encode(gzip.compress(data, compresslevel=6, mtime=0)).decode("ascii")


def _volume_table(names: Sequence[str], measured: Sequence[Measurements]) -> str:
    head = "".join(
        f"<th>{html.escape(n)}: {side}</th>" for n in names for side in ("right", "left", "total")
    )
    rows = []
    for region, ids in REGIONS.items():
        label = f"{region} (label {ids[0]})" if len(ids) == 1 else f"{region} (labels 1-3)"
        cells = "".join(
            f"<td>{m.volumes_ml[region][side]:.2f}</td>"
            for m in measured
            for side in ("right", "left", "total")
        )
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    return (
        f"<table id='volumes'><thead><tr><th>mL</th>{head}</tr></thead>"
        + "".join(rows)
        + "</table>"
    )


def _tumor_table(names: Sequence[str], measured: Sequence[Measurements]) -> str:
    where = "LPS mm" if all(m.patient_coordinates for m in measured) else "mm from first voxel"
    rows = []
    for li, (name, m) in enumerate(zip(names, measured, strict=True)):
        for t in m.tumors:
            index = json.dumps([round(v) for v in t.centroid_index])
            mm = ", ".join(f"{v:.1f}" for v in t.centroid_mm)
            rows.append(
                f"<tr class='tumor-row' id='tumor-{li}-{t.number}' tabindex='0' "
                f"data-index='{index}'><td>{t.number}</td><td>{html.escape(name)}</td>"
                f"<td>{t.volume_ml:.2f}</td><td>{t.side}</td><td>{mm}</td>"
                f"<td>{round(t.centroid_index[0])}</td></tr>"
            )
    if not rows:
        return "<p id='no-tumor'>No tumor (label 2) in the label map.</p>"
    head = (
        f"<tr><th>#</th><th>label map</th><th>volume mL</th><th>side</th>"
        f"<th>centroid ({where})</th><th>axial slice z</th></tr>"
    )
    return f"<table id='tumors'><thead>{head}</thead>{''.join(rows)}</table>"


def viewer_html(
    ct: Array | None,
    layers: Sequence[tuple[str, Array]],
    geometry: CanonicalGeometry,
    title: str,
) -> str:
    """The viewer page for canonical ``(z, y, x)`` arrays (the CT in HU may be None).

    Args:
        ct: the canonical CT, or None (a black background then).
        layers: ``(name, canonical label map)``; the first is filled, the others outlined.
        geometry: the arrays' `CanonicalGeometry` (spacing and LPS mapping).
        title: the page's heading.
    """
    if not layers:
        raise ValueError("the viewer needs at least one label map")
    shape = tuple(int(n) for n in layers[0][1].shape)
    for name, arr in layers:
        if tuple(arr.shape) != shape or (ct is not None and tuple(ct.shape) != shape):
            raise KidneysegError(f"{name}: shape {arr.shape} differs from the CT's {shape}")
    f = in_plane_factor(shape, CT_VOXEL_BUDGET)
    codes = _ct_codes(ct if ct is not None else np.full(shape, -1024, np.int16), f)
    blobs = {"data-ct": _blob(codes)}
    layer_meta, measured = [], []
    for i, (name, arr) in enumerate(layers):
        labels = np.asarray(arr, np.uint8)
        measured.append(measure(labels, geometry, ct))
        blob, lf = _blob(labels), 1
        if len(blob) * 3 // 4 > LABEL_BYTES_BUDGET and f > 1:
            blob, lf = _blob(labels[:, ::f, ::f]), f
        blobs[f"data-layer-{i}"] = blob
        layer_shape = [shape[0], math.ceil(shape[1] / lf), math.ceil(shape[2] / lf)]
        style = "fill" if i == 0 else "outline"
        layer_meta.append(
            {"name": name, "id": f"data-layer-{i}", "shape": layer_shape,
             "factor": [1, lf, lf], "style": style}
        )  # fmt: skip
    sz, sy, sx = geometry.spacing
    embed = (
        "CT embedded as 8-bit codes (2.5 HU steps in [-200, 300] HU)"
        + (f", averaged over {f} x {f} voxels in-plane" if f > 1 else ", full resolution")
        + (" (no CT given: black background)" if ct is None else "")
        + f". Grid {shape[2]} x {shape[1]} x {shape[0]} voxels (x, y, z) of "
        f"{sx:g} x {sy:g} x {sz:g} mm. Sides split at the {SIDE_RULES[measured[0].side_rule]} "
        f"(x = {measured[0].midline_x_mm:.1f} mm); kidney = labels 1-3."
    )
    meta = {
        "title": title,
        "shape": list(shape),
        "spacing": [sz, sy, sx],
        "box": _BOX_PX,
        "opacity": 0.5,
        "has_ct": ct is not None,
        "ct": {"id": "data-ct", "shape": list(codes.shape), "factor": [1, f, f]},
        "hu_of_code": hu_of_codes(),
        "windows": [{"name": n, "range": list(r)} for n, r in WINDOWS],
        "layers": layer_meta,
        "colors": {str(k): list(v) for k, v in LABEL_RGB.items()},
        "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "geometry": {
            "matrix": [list(r) for r in geometry.matrix],
            "offset": list(geometry.offset),
            "patient": geometry.patient,
        },
        "measurements": [m.to_json() for m in measured],
    }
    names = [name for name, _ in layers]
    views = "".join(
        f"<figure class='view'><div class='frame'><span class='ori top'>{t}</span>"
        f"<span class='ori left'>{left}</span><canvas id='{v}'></canvas>"
        f"<span class='ori right'>{right}</span><span class='ori bottom'>{b}</span></div>"
        f"<input type='range' id='slider-{v}' min='0' max='0' aria-label='{v} slice'>"
        f"<figcaption id='label-{v}'>{v}</figcaption></figure>"
        for v, (t, left, right, b) in _LETTERS.items()
    )
    swatches = "".join(
        f"<span class='swatch' style='background:rgb{LABEL_RGB[k]}'></span>{LABEL_NAMES[k]}"
        for k in sorted(LABEL_RGB)
    )
    toggles = "".join(
        f"<label><input type='checkbox' id='layer-{i}' checked> {html.escape(n)} "
        f"({'fill' if i == 0 else 'outline'})</label>"
        for i, n in enumerate(names)
    )
    assets = resources.files("kidneyseg") / "viewer_assets"
    css = (assets / "viewer.css").read_text(encoding="utf-8")
    js = (assets / "viewer.js").read_text(encoding="utf-8")
    meta_text = json.dumps(meta).replace("</", "<\\/")
    data = "".join(
        f"<script type='application/octet-stream' id='{k}'>{v}</script>" for k, v in blobs.items()
    )
    csp = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data: blob:"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p id='loading'>Decoding the images…</p>"
        "<div id='controls'><label>window <select id='window'></select></label>"
        "<label><input type='checkbox' id='overlay' checked> overlay</label>"
        "<label>fill opacity <input type='range' id='opacity' min='0' max='100'></label>"
        "<label><input type='checkbox' id='crosshair' checked> crosshair</label>"
        f"{toggles}<span>{swatches}</span></div><div id='views'>{views}</div>"
        "<div id='info'></div><p class='note'>Click or drag to move the crosshair; the wheel or "
        "the sliders move through slices. Axial and coronal views: patient right on the "
        "image's left.</p>"
        f"<h2>Volumes per side</h2>{_volume_table(names, measured)}"
        f"<h2>Tumors (click a row to jump to it)</h2>{_tumor_table(names, measured)}"
        f"<p class='note'>{html.escape(embed)}</p>"
        f"<script type='application/json' id='meta'>{meta_text}</script>{data}"
        f"<script>{js}</script></body></html>\n"
    )


def write_viewer(
    ct: Volume | None,
    labels: Volume | Sequence[tuple[str, Volume]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write the viewer page of a CT and one or more label maps on its grid, atomically.

    Args:
        ct: the CT (HU), or None.
        labels: one label map, or ``(name, label map)`` pairs (first filled, others outlined).
        path: the HTML file to write.
        title: the page heading (default: the case id).

    Raises:
        KidneysegError: a label map not on the CT's grid.
    """
    pairs = [("labels", labels)] if isinstance(labels, Volume) else list(labels)
    ref = ct if ct is not None else pairs[0][1]
    for name, vol in pairs:
        if not ref.same_geometry(vol):
            raise KidneysegError(f"{name} label map does not lie on the CT's grid", path=path)
    canon = [(name, vol.to_canonical()) for name, vol in pairs]
    page = viewer_html(
        None if ct is None else ct.to_canonical(),
        canon,
        CanonicalGeometry.of(ref),
        title or ref.case_id or "kidneyseg viewer",
    )
    atomic_write_text(path, page)
    return Path(path)


def view_files(ct_path: str | Path, labels_path: str | Path, out: str | Path | None = None) -> Path:
    """``kidneyseg view CT LABELMAP [-o page.html]``: read both files, write the page.

    The page goes to ``out``, by default ``<labels case>_view.html`` beside the label map.
    """
    ct = read_image(ct_path)
    labels = read_labels(labels_path, like=ct)
    case = case_id_from_path(labels_path)
    target = Path(out) if out is not None else Path(labels_path).with_name(case + VIEW_SUFFIX)
    return write_viewer(ct, labels, target, title=f"{case_id_from_path(ct_path)}: {case}")


def write_comparison_viewer(
    path: str | Path,
    ct: Array | None,
    prediction: Array,
    truth: Array,
    spacing: tuple[float, float, float],
    title: str,
) -> Path:
    """The report's page for one case: prediction filled, ground truth outlined.

    Args are canonical ``(z, y, x)`` arrays and their spacing (the report holds no origin, so
    positions are millimetres from the first voxel).
    """
    layers = [("prediction", prediction), ("ground truth", truth)]
    page = viewer_html(ct, layers, CanonicalGeometry.axis_aligned(spacing), title)
    atomic_write_text(path, page)
    return Path(path)
