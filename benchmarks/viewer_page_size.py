"""Size and build time of a `kidneyseg view` page for a clinical-size CT (512 x 512 x 300).

No real 512 x 512 x 300 CT with kidneys is stored here, so one is made from the real one that is:
``../shared/data/totalseg_example/example_ct.nii.gz`` (3 mm, real HU) resampled (linear) to
``--shape`` canonical voxels, plus Gaussian noise of ``--noise`` HU inside the body (real CTs at
0.7 mm carry 10-25 HU of noise, and noise is what resists compression), with TotalSegmentator's
kidneys (labels 2/3 -> 1, nearest) and a 3 cm tumor sphere as labels.

Example:
    python benchmarks/viewer_page_size.py --shape 300 512 512 --noise 15
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidneyseg.geometry import CanonicalGeometry
from kidneyseg.io import read_volume
from kidneyseg.types import KIDNEY, TUMOR
from kidneyseg.viewer import in_plane_factor, viewer_html

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_example"


def clinical_case(shape: tuple[int, int, int], noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Canonical CT (int16 HU) and labels of ``shape`` from the real example CT."""
    ct = read_volume(DATA / "example_ct.nii.gz")
    seg = read_volume(DATA / "example_seg_fast_force_split.nii.gz")
    zoom = [n / s for n, s in zip(shape, ct.to_canonical().shape, strict=True)]
    hu = ndimage.zoom(ct.to_canonical().astype(np.float32), zoom, order=1)
    kidneys = np.isin(seg.to_canonical(), (2, 3)).astype(np.uint8)
    labels = ndimage.zoom(kidneys, zoom, order=0) * KIDNEY
    rng = np.random.default_rng(0)
    body = hu > -500
    hu[body] += rng.normal(0, noise, int(body.sum())).astype(np.float32)
    zz, yy, xx = np.nonzero(labels)
    c = np.array([zz.mean(), yy.mean(), xx.min() + 40])
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    sphere = sum(((g - c[a]) / (15 / (300 / shape[a] if a == 0 else 0.7))) ** 2
                 for a, g in enumerate(grid)) <= 1  # fmt: skip
    labels[sphere] = TUMOR
    return np.clip(hu, -1024, 3071).astype(np.int16), labels.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--noise", type=float, default=15.0, help="HU noise std in the body")
    args = parser.parse_args()
    shape = tuple(args.shape)
    ct, labels = clinical_case(shape, args.noise)  # type: ignore[arg-type]
    geometry = CanonicalGeometry.axis_aligned((1.0, 0.7, 0.7))
    start = time.perf_counter()
    page = viewer_html(ct, [("labels", labels)], geometry, "size benchmark")
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "page.html"
        path.write_text(page, encoding="utf-8")
        size = path.stat().st_size
    print(
        f"CT {shape[2]} x {shape[1]} x {shape[0]} (x, y, z), noise {args.noise:g} HU: in-plane "
        f"factor {in_plane_factor(shape)}, page {size / 1e6:.1f} MB, built in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
