"""The README's pictures: the slice viewer (shot by the tests' browser) and a preview PNG.

Both show the real CT ``../shared/data/totalseg_example/example_ct.nii.gz`` with TotalSegmentator's
kidney masks (labels 2/3 of ``example_seg_fast_force_split.nii.gz``) as label 1 and, to show the
tumor features, a synthetic 2 cm sphere labelled tumor in the left kidney (said in the titles:
it is an illustration, not a finding). The viewer page is opened from ``file://`` in headless
Chromium (Debian's ``/usr/bin/chromium``) through Playwright, as ``tests/test_viewer.py`` does.

Example:
    python benchmarks/screenshots.py --out docs/images   # writes viewer.png and preview.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidneyseg.io import read_image, read_volume
from kidneyseg.preview import write_preview
from kidneyseg.types import KIDNEY, TUMOR, Volume
from kidneyseg.utils import atomic_path
from kidneyseg.viewer import write_viewer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_example"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TITLE = "example CT · kidneys: TotalSegmentator · tumor: synthetic 2 cm sphere (illustration)"


def example_case() -> tuple[Volume, Volume]:
    """The real CT and its labels (module doc)."""
    ct = read_image(DATA / "example_ct.nii.gz")
    seg = read_volume(DATA / "example_seg_fast_force_split.nii.gz")
    labels = np.where(np.isin(seg.array, (2, 3)), KIDNEY, 0).astype(np.uint8)
    # Centre: the left kidney's voxel deepest inside it (the sphere sits in the parenchyma).
    depth = ndimage.distance_transform_edt(seg.array == 3, sampling=seg.spacing)
    centre = np.unravel_index(int(np.argmax(depth)), seg.shape)
    grid = np.indices(seg.shape).reshape(3, -1).T
    mm = (grid - np.asarray(centre)) * np.asarray(seg.spacing)
    labels[(np.linalg.norm(mm, axis=1) <= 10.0).reshape(seg.shape)] = TUMOR
    return ct, seg.with_array(labels, case_id="example_ct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    ct, labels = example_case()
    args.out.mkdir(parents=True, exist_ok=True)
    preview = write_preview(ct, labels, args.out / "preview.png")
    print(f"{preview.path}: {preview.title}")
    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_viewer(ct, labels, Path(tmp) / "viewer.html", title=TITLE)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_selector("body[data-ready=true]", timeout=30000)
            page.click("#tumor-0-1")  # jump to the tumor, as a user would
            with atomic_path(args.out / "viewer.png") as shot:
                page.screenshot(path=str(shot), full_page=True)
            browser.close()
    print(f"{args.out / 'viewer.png'}: {TITLE}")


if __name__ == "__main__":
    main()
