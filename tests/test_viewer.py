"""Tests of kidneyseg.viewer and ``kidneyseg view``, the page driven in a real browser.

Browser tests run headless Chromium from Debian's package (``apt-get install -y chromium``)
through Playwright (``pip install playwright``, in the ``test`` extra); Playwright cannot download
its own browser here. When either is missing these tests are skipped, with the reason.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kidneyseg import viewer
from kidneyseg.cli import main
from kidneyseg.io import read_volume, write_volume
from kidneyseg.reporting import make_report
from kidneyseg.types import Volume
from kidneyseg.viewer import encode_hu, hu_of_codes, in_plane_factor, view_files, write_viewer
from test_preview import SHAPE, SPACING_ZYX, TUMOR, TUMOR_CENTRE, canonical_case, synthetic_case
from test_reporting import inputs  # noqa: F401  (the report fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
COLORS = {1: (255, 176, 0), 2: (230, 25, 25), 3: (40, 140, 255)}


# ----------------------------------------------------------------------------- without a browser
def test_hu_codes_are_fine_where_the_windows_are() -> None:
    hu = np.arange(-200, 301)
    back = np.asarray(hu_of_codes())[encode_hu(hu)]
    assert np.abs(back - hu).max() <= 1.25
    assert encode_hu(np.array([-3000, 5000])).tolist() == [0, 255]


def test_clinical_ct_is_downsampled_to_fit_the_page_cap() -> None:
    assert in_plane_factor((300, 512, 512)) == 2 and in_plane_factor((70, 512, 512)) == 1
    # Worst case (incompressible CT): base64 of one byte per embedded voxel stays under 40 MB.
    assert 300 * 256 * 256 * 4 / 3 < 40e6 and 300 * 512 * 512 > viewer.CT_VOXEL_BUDGET


def test_page_is_one_offline_file_with_the_measurements(tmp_path: Path) -> None:
    ct, labels = synthetic_case()
    page = write_viewer(ct, labels, tmp_path / "page.html", title="synth </script>")
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text) and " src=" not in text
    assert "default-src 'none'" in text and "synth &lt;/script&gt;" in text
    meta = json.loads(re.search(r"id='meta'>(.*?)</script>", text, re.S).group(1))  # type: ignore[union-attr]
    assert meta["shape"] == list(SHAPE) and meta["spacing"] == list(SPACING_ZYX)
    assert meta["geometry"]["patient"] is True
    (tumor,) = meta["measurements"][0]["tumors"]
    assert tumor["side"] == "left" and tumor["centroid_index"] == list(TUMOR_CENTRE)
    assert "<tr class='tumor-row' id='tumor-0-1' tabindex='0' data-index='[7, 20, 35]'>" in text
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_cli_view_writes_the_page_and_rejects_other_grids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct, labels = synthetic_case()
    ct_path = write_volume(ct, tmp_path / "ct.nii.gz")
    lab_path = write_volume(labels, tmp_path / "case_7.nii.gz")
    assert main(["view", str(ct_path), str(lab_path)]) == 0
    assert (tmp_path / "case_7_view.html").is_file()
    assert "case_7_view.html" in capsys.readouterr().out
    assert main(["view", str(ct_path), str(lab_path), "-o", str(tmp_path / "x" / "p.html")]) == 0
    assert (tmp_path / "x" / "p.html").is_file()
    small = Volume(labels.array[:-1].copy(), labels.spacing, labels.origin, labels.direction)
    other = write_volume(small, tmp_path / "small.nii.gz")
    assert main(["view", str(ct_path), str(other), "-o", str(tmp_path / "bad.html")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "bad.html").exists()


def test_report_links_a_viewer_per_case(inputs: dict[str, Path]) -> None:  # noqa: F811
    html_path = make_report(inputs["run"], inputs["eval"], inputs["out"], max_cases=2)
    pages = sorted(p.name for p in inputs["out"].glob("view_*.html"))
    assert len(pages) == 2
    text = html_path.read_text(encoding="utf-8")
    assert all(f"href='{p}'" in text for p in pages)
    page = (inputs["out"] / pages[0]).read_text(encoding="utf-8")
    assert "prediction (fill)" in page and "ground truth (outline)" in page


# ----------------------------------------------------------------------------- in the browser
def _skip(reason: str) -> None:
    """Skip, and say why in the warnings summary too (``pytest -q`` hides skip reasons)."""
    warnings.warn(reason, stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("browser tests skipped: playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        _skip(f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


class Opened:
    """A viewer page open in the browser, with what it logged and requested."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on(
            "console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text)
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=15000)

    def slice(self, view: str) -> int:
        return int(self.page.get_attribute(f"#{view}", "data-slice"))

    def cursor(self) -> list[int]:
        return list(self.page.evaluate("window.kidneysegViewer.state.cursor"))

    def shot(self, view: str) -> np.ndarray:
        from PIL import Image

        png = self.page.locator(f"#{view}").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def voxel_pixel(self, view: str, row: Any, col: Any) -> tuple[Any, Any]:
        """Canvas pixel (row, col) of the centre of voxel (row, col) of a view's canonical plane
        (numbers or integer arrays)."""
        scale = self.page.evaluate(f"window.kidneysegViewer.state.scale.{view}")
        axes = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[view]
        if view != "axial":
            row = SHAPE[0] - 1 - row  # superior at the top
        sr, sc = (SPACING_ZYX[a] for a in axes)
        return (
            np.floor((row + 0.5) * sr * scale).astype(int),
            np.floor((col + 0.5) * sc * scale).astype(int),
        )

    def close(self) -> None:
        self.page.close()


@pytest.fixture()
def synth_page(tmp_path: Path) -> Path:
    ct, labels = synthetic_case()
    return write_viewer(ct, labels, tmp_path / "synth.html")


def _classify(pixels: np.ndarray) -> np.ndarray:
    """Label shown by each RGB pixel: a label colour, or 0 for grey (anything else fails)."""
    out = np.zeros(pixels.shape[:-1], np.uint8)
    for label, rgb in COLORS.items():
        out[np.abs(pixels - rgb).max(axis=-1) <= 12] = label
    grey = np.ptp(pixels, axis=-1) <= 12
    assert np.all((out > 0) | grey), "pixels neither grey nor a label colour"
    return out


def test_page_loads_from_file_without_errors_or_network(browser: Any, synth_page: Path) -> None:
    opened = Opened(browser, synth_page)
    assert opened.errors == []
    assert opened.requests == [opened.url]
    assert opened.cursor() == [s // 2 for s in SHAPE]
    sizes = {
        v: opened.page.locator(f"#{v}").bounding_box() for v in ("axial", "coronal", "sagittal")
    }
    nz, ny, nx = (n * s for n, s in zip(SHAPE, SPACING_ZYX, strict=True))  # extents in mm
    for view, (w, h) in {"axial": (nx, ny), "coronal": (nx, nz), "sagittal": (ny, nz)}.items():
        box = sizes[view]
        assert box["width"] / box["height"] == pytest.approx(w / h, rel=0.02)
    assert opened.page.text_content("#tumors") and "left" in opened.page.text_content("#tumors")
    opened.close()


def test_slider_and_wheel_move_through_slices(browser: Any, synth_page: Path) -> None:
    opened = Opened(browser, synth_page)
    before = opened.shot("axial")
    opened.page.focus("#slider-axial")
    opened.page.keyboard.press("Home")
    for _ in range(3):
        opened.page.keyboard.press("ArrowRight")
    assert opened.slice("axial") == 3 and opened.cursor()[0] == 3
    assert "axial z = 3 / 11" in opened.page.text_content("#label-axial")
    after = opened.shot("axial")
    assert np.abs(after - before).sum() > 0
    box = opened.page.locator("#axial").bounding_box()
    opened.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    opened.page.mouse.wheel(0, -100)
    opened.page.wait_for_function("document.querySelector('#axial').dataset.slice === '4'")
    assert opened.errors == []
    opened.close()


@pytest.mark.parametrize("budget", [None, 600], ids=["full", "downsampled"])
def test_overlay_pixels_lie_where_the_labels_are(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int | None
) -> None:
    if budget is not None:  # force 2 x 2 in-plane averaging of the CT (labels stay full size)
        monkeypatch.setattr(viewer, "CT_VOXEL_BUDGET", SHAPE[0] * 20 * 24)
    ct, labels = synthetic_case()
    opened = Opened(browser, write_viewer(ct, labels, tmp_path / "p.html"))
    factor = opened.page.evaluate("window.kidneysegViewer.meta.ct.factor")
    assert factor == ([1, 2, 2] if budget else [1, 1, 1])
    opened.page.uncheck("#crosshair")
    opened.page.eval_on_selector(
        "#opacity", "e => { e.value = 100; e.dispatchEvent(new Event('input')) }"
    )
    z, y, x = (round(v) for v in TUMOR_CENTRE)
    opened.page.evaluate(f"window.kidneysegViewer.setCursor([{z}, {y}, {x}])")
    _, canon = canonical_case()
    planes = {"axial": canon[z], "coronal": canon[:, y, :], "sagittal": canon[:, :, x]}
    for view, expected in planes.items():
        img = opened.shot(view)
        rows, cols = np.indices(expected.shape)
        got = _classify(img[opened.voxel_pixel(view, rows, cols)])
        np.testing.assert_array_equal(got, expected, err_msg=view)
    assert (planes["axial"] == 2).any()
    opened.page.uncheck("#overlay")
    img = opened.shot("axial")
    assert _classify(img[opened.voxel_pixel("axial", y, x)][None])[0] == 0
    assert opened.errors == []
    opened.close()


def test_tumor_row_jumps_to_its_centroid_and_clicks_move_the_crosshair(
    browser: Any, synth_page: Path
) -> None:
    opened = Opened(browser, synth_page)
    opened.page.click("#tumor-0-1")
    z, y, x = (round(v) for v in TUMOR_CENTRE)
    assert (opened.slice("axial"), opened.slice("coronal"), opened.slice("sagittal")) == (z, y, x)
    assert "tumor" in opened.page.text_content("#info")
    assert TUMOR[0].start <= opened.slice("axial") < TUMOR[0].stop
    # A click on the coronal view sets z and x; the axial and sagittal views follow.
    row, col = opened.voxel_pixel("coronal", 2, 10)
    opened.page.locator("#coronal").click(position={"x": int(col), "y": int(row)})
    assert opened.cursor() == [2, y, 10]
    assert (opened.slice("axial"), opened.slice("sagittal")) == (2, 10)
    assert opened.errors == []
    opened.close()


def test_window_presets_change_the_grey_levels(browser: Any, synth_page: Path) -> None:
    opened = Opened(browser, synth_page)
    opened.page.uncheck("#overlay")
    point = opened.voxel_pixel("axial", 6, 6)  # body, 30-50 HU
    soft = opened.shot("axial")[point][0]
    opened.page.select_option("#window", "1")  # the paper's [0, 200]
    paper = opened.shot("axial")[point][0]
    assert 110 <= soft <= 135 and 35 <= paper <= 70
    opened.close()


def test_real_ct_page_shows_the_kidneys_per_side(
    browser: Any, shared_data: Path, tmp_path: Path
) -> None:
    folder = shared_data / "totalseg_example"
    seg = read_volume(folder / "example_seg_fast_force_split.nii.gz")  # 2 right, 3 left
    labels = write_volume(seg.with_array(np.isin(seg.array, (2, 3)).astype(np.uint8)),
                          tmp_path / "kidneys.nii.gz")  # fmt: skip
    page = view_files(folder / "example_ct.nii.gz", labels, tmp_path / "real.html")
    opened = Opened(browser, page)
    assert opened.errors == [] and opened.requests == [opened.url]
    cells = opened.page.locator("#volumes tr").nth(1).locator("td").all_text_contents()
    ml = seg.voxel_volume_ml
    assert cells[0] == "kidney (labels 1-3)"
    assert float(cells[1]) == pytest.approx(int((seg.array == 2).sum()) * ml, abs=0.01)
    assert float(cells[2]) == pytest.approx(int((seg.array == 3).sum()) * ml, abs=0.01)
    assert opened.page.text_content("#no-tumor")
    opened.close()


def test_report_page_shows_prediction_and_truth(
    browser: Any,
    inputs: dict[str, Path],  # noqa: F811
) -> None:
    make_report(inputs["run"], inputs["eval"], inputs["out"], max_cases=1)
    (page,) = inputs["out"].glob("view_*.html")
    opened = Opened(browser, page)
    assert opened.errors == [] and opened.requests == [opened.url]
    assert opened.page.locator("#layer-1").is_checked()
    # With only the ground truth shown, its tumor is an outline: coloured edge, grey inside.
    opened.page.click("#tumor-1-1")
    opened.page.uncheck("#layer-0")
    opened.page.uncheck("#crosshair")
    img = opened.shot("axial")
    reds = np.abs(img - COLORS[2]).max(axis=2) <= 60
    assert reds.any()
    opened.page.uncheck("#layer-1")
    assert not (np.abs(opened.shot("axial") - COLORS[2]).max(axis=2) <= 60).any()
    opened.close()
