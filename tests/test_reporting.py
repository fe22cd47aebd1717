"""Tests of kidneyseg.reporting and ``kidneyseg report``: tiny run/eval folders and NIfTI cases."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.errors import KidneysegError
from kidneyseg.figures import choose_slices, draw_overlay, plot_loss_curves
from kidneyseg.io import write_volume
from kidneyseg.report_tables import PAPER_CASE_DICE, choose_cases, metric_stats, summary_rows
from kidneyseg.reporting import load_case_volumes, make_report
from kidneyseg.types import Volume, from_canonical

# File index axes: 0 -> superior, 1 -> patient right (-x), 2 -> anterior (-y): not the canonical
# (z, y, x) order, with two flipped axes, so a report that ignored orientation would misplace masks.
DIRECTION = ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0))
FILE_SPACING = (2.5, 0.8, 0.7)
SHAPE = (6, 40, 48)  # canonical (z, y, x)

CASES = ("case_00001", "case_00002", "case_00003")
TUMOR_DICE = {"case_00001": 0.42, "case_00002": 0.91, "case_00003": 0.67}
KIDNEY_DICE = {"case_00001": 0.95, "case_00002": 0.88, "case_00003": 0.93}


def _canonical_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT, ground truth and prediction (canonical z, y, x): kidneys on the patient's right."""
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 4:36, 4:44] = 0  # body
    gt = np.zeros(SHAPE, np.uint8)
    gt[1:5, 6:22, 8:20] = 1  # kidney: anterior half, patient right (small x)
    gt[2:4, 9:15, 10:16] = 2  # tumor, largest at z=3
    gt[3, 9:17, 10:16] = 2
    gt[4, 6:24, 8:20] = 1  # kidney max z=4
    ct[gt > 0] = 150
    pred = np.zeros(SHAPE, np.uint8)
    pred[1:5, 7:23, 9:21] = 1  # shifted by one voxel: away from the GT top/left edges
    pred[2:4, 10:16, 10:16] = 2
    return ct, gt, pred


def _write(arr: np.ndarray, path: Path) -> None:
    file_arr = from_canonical(arr, np.asarray(DIRECTION))
    write_volume(Volume(np.ascontiguousarray(file_arr), FILE_SPACING, (5.0, -3.0, 10.0),
                        DIRECTION), path)  # fmt: skip


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    ct, gt, pred = _canonical_case()
    gt_dir, pred_dir = tmp_path / "data", tmp_path / "pred"
    for case in CASES:
        (gt_dir / case).mkdir(parents=True)
        _write(ct, gt_dir / case / "imaging.nii.gz")
        _write(gt, gt_dir / case / "segmentation.nii.gz")
        _write(pred, pred_dir / f"{case}.nii.gz")
    run = tmp_path / "run"
    (run / "kidney").mkdir(parents=True)
    rows = ["epoch,train_loss,val_loss,lr,seconds,slices_per_s"]
    rows += [
        f"{e},{1 / (e + 1):.4f},{1.2 / (e + 1) + 0.05 * (e == 3):.4f},0.001,2.0,50"
        for e in range(5)
    ]
    (run / "kidney" / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "kidney" / "config.json").write_text(
        json.dumps({"config": {"model": {"architecture": "unet_resnet34"}, "train": {"lr": 1e-3}}})
    )
    (run / "tumor").mkdir()  # no metrics.csv: the curve is "not available"
    ev = tmp_path / "eval"
    ev.mkdir()
    lines = ["case,dice_kidney_and_mass,sd_kidney_and_mass,dice_tumor,sd_tumor,"
             "paper_slice_dice_kidney,volume_ml_extra"]  # fmt: skip
    for case in CASES:
        lines.append(f"{case},{KIDNEY_DICE[case]},0.97,{TUMOR_DICE[case]},0.8,0.9,12.5")
    (ev / "per_case.csv").write_text("\n".join(lines) + "\n")
    summary = {
        "metrics": {
            "dice_kidney_and_mass": {"mean": 0.9234, "median": 0.93, "std": 0.031, "n": 3},
            "dice_tumor": {"mean": 0.6667, "median": 0.67, "std": 0.2, "n": 3},
            "sd_tumor": {"mean": 0.7891, "median": 0.8, "std": 0.01, "n": 3},
        },
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
    }
    (ev / "summary.json").write_text(json.dumps(summary))
    return {"run": run, "eval": ev, "gt": gt_dir, "pred": pred_dir, "out": tmp_path / "report"}


def _reddish(px: np.ndarray) -> bool:
    return bool(px[0] > px[1] + 0.2 and px[0] > px[2] + 0.2)


def _greenish(px: np.ndarray) -> bool:
    return bool(px[1] > 0.6 and px[1] > px[0] + 0.3)


def test_load_case_volumes_returns_canonical_arrays(inputs: dict[str, Path]) -> None:
    ct, gt, pred = _canonical_case()
    vols = load_case_volumes("case_00001", inputs["pred"], inputs["gt"])
    np.testing.assert_array_equal(vols.gt, gt)
    np.testing.assert_array_equal(vols.pred, pred)
    np.testing.assert_array_equal(vols.ct, ct)
    assert vols.spacing == pytest.approx((2.5, 0.7, 0.8))  # canonical (z, y, x)


def test_choose_slices_largest_tumor_then_kidney() -> None:
    _, gt, pred = _canonical_case()
    assert choose_slices(gt, pred) == [(3, "largest GT tumor area"), (4, "largest GT kidney area")]
    empty = np.zeros(SHAPE, np.uint8)
    assert choose_slices(empty, pred)[0][0] in (1, 2, 3, 4)
    assert choose_slices(empty, empty) == [(3, "middle slice (GT and prediction empty)")]


def test_overlay_red_fill_on_prediction_green_edge_on_truth(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    import matplotlib.image as mpimg

    vols = load_case_volumes("case_00001", inputs["pred"], inputs["gt"])
    png = tmp_path / "overlay.png"
    panels = draw_overlay(vols, choose_slices(vols.gt, vols.pred), png, "case_00001")
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert len(panels) == 2 and 300 < img.shape[0] < 800 and 700 < img.shape[1] < 1100
    panel = panels[1]  # z=4: predicted kidney (label 1) only
    assert panel.z == 4
    # Inside the prediction (and away from the GT edge): red.
    assert _reddish(img[panel.png_pixel(15, 15)])
    # Far from any mask, inside the body: grey, neither red nor green.
    far = img[panel.png_pixel(30, 38)]
    assert not _reddish(far) and not _greenish(far) and abs(far[0] - far[2]) < 0.05
    # The GT kidney's top edge lies between rows 5 and 6 (no prediction there): green.
    r, c = panel.png_pixel(5.5, 14)
    patch = img[r - 1 : r + 2, c - 1 : c + 2]
    assert any(_greenish(px) for px in patch.reshape(-1, img.shape[2]))
    assert not _greenish(img[panel.png_pixel(15, 15)])
    # Radiological convention: prediction (patient right, anterior) in the image's left/top half.
    top, left, bottom, right = panel.box
    area = img[int(top) : int(bottom), int(left) : int(right)]
    red = (area[..., 0] > area[..., 1] + 0.2) & (area[..., 0] > area[..., 2] + 0.2)
    half_c, half_r = red.shape[1] // 2, red.shape[0] // 2
    assert red[:, :half_c].sum() > 100 and red[:, half_c:].sum() == 0
    assert red[:half_r].sum() > red[half_r:].sum()


def test_overlay_without_ct_draws_on_blank(inputs: dict[str, Path], tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    (inputs["gt"] / "case_00002" / "imaging.nii.gz").unlink()
    vols = load_case_volumes("case_00002", inputs["pred"], inputs["gt"])
    assert vols.ct is None
    panels = draw_overlay(vols, [(4, "x")], tmp_path / "o.png", "t")
    img = mpimg.imread(tmp_path / "o.png")
    assert _reddish(img[panels[0].png_pixel(15, 15)])
    blank = img[panels[0].png_pixel(30, 38)][:3]  # blank mid-grey background
    assert np.ptp(blank) < 0.02 and 0.3 < blank[0] < 0.7


def test_choose_cases_best_median_worst() -> None:
    per_case = {
        "case": list(CASES) + ["case_00004"],
        "dice_tumor": [TUMOR_DICE[c] for c in CASES] + [math.nan],
        "dice_kidney_and_mass": [KIDNEY_DICE[c] for c in CASES] + [0.5],
    }
    chosen = dict(choose_cases(per_case, 6))
    assert chosen["case_00002"] == "best tumor Dice, median kidney Dice"  # lower middle of 4
    assert chosen["case_00003"] == "median tumor Dice"
    assert chosen["case_00001"] == "worst tumor Dice, best kidney Dice"
    assert chosen["case_00004"] == "worst kidney Dice"  # NaN tumor Dice: ranked on kidney only
    assert len(choose_cases(per_case, 2)) == 2 and choose_cases(per_case, 0) == []


@pytest.mark.parametrize(
    ("loss_name", "label"), [("bce", "BCE loss"), ("bce_dice", "BCE + Dice loss")]
)
def test_plot_loss_curves_rows_or_columns_name_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss_name: str, label: str
) -> None:
    import matplotlib.image as mpimg
    from matplotlib.axes import Axes

    labels: list[str] = []
    original = Axes.set_ylabel
    monkeypatch.setattr(
        Axes, "set_ylabel", lambda ax, text, *a, **k: labels.append(text) or original(ax, text)
    )
    # Rows as training keeps them (CSV strings, a blank validation loss) and columns as the
    # report reads metrics.csv: both draw.
    rows = [{"epoch": "1", "train_loss": "0.5", "val_loss": ""}, {"epoch": 2, "train_loss": 0.4}]
    assert plot_loss_curves(rows, tmp_path / "rows.png", "t", loss_name) == tmp_path / "rows.png"
    cols = {"epoch": [1.0, 2.0], "train_loss": [0.5, 0.4], "val_loss": [0.6, math.nan]}
    plot_loss_curves(cols, tmp_path / "cols.png", "t", loss_name)
    assert labels == [label, label]
    assert mpimg.imread(tmp_path / "cols.png").shape[:2] == (400, 640)


@pytest.mark.parametrize(("metric", "star"), [("loss", (3.0, 0.3)), ("dice", (2.0, 0.8))])
def test_curves_draw_val_dice_and_star_the_checkpoint_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str, star: tuple[float, float]
) -> None:
    from matplotlib.axes import Axes

    stars: list[tuple[float, float]] = []
    labels: list[str] = []
    plot, set_ylabel = Axes.plot, Axes.set_ylabel

    def spy_plot(ax: Axes, x: object, y: object, *args: object, **kwargs: object) -> object:
        if args and args[0] == "*":
            stars.append((float(x), float(y)))  # type: ignore[arg-type]
        return plot(ax, x, y, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Axes, "plot", spy_plot)
    monkeypatch.setattr(
        Axes, "set_ylabel", lambda ax, text, *a, **k: labels.append(text) or set_ylabel(ax, text)
    )
    rows = [  # lowest validation loss in epoch 3, highest validation Dice in epoch 2
        {"epoch": "1", "train_loss": "0.6", "val_loss": "0.5", "val_dice": "0.4"},
        {"epoch": "2", "train_loss": "0.5", "val_loss": "0.4", "val_dice": "0.8"},
        {"epoch": "3", "train_loss": "0.4", "val_loss": "0.3", "val_dice": "0.7"},
    ]
    plot_loss_curves(rows, tmp_path / "curves.png", "t", "bce", checkpoint_metric=metric)
    assert stars == [star]
    assert "validation Dice" in labels
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_metric_stats_accepts_both_summary_layouts_and_falls_back_to_csv() -> None:
    entry = {"mean": 0.8, "median": 0.81, "std": 0.1, "n": 4}
    assert metric_stats({"metrics": {"dice_tumor": entry}}, {}, "dice_tumor")["mean"] == 0.8
    assert metric_stats({"dice_tumor": entry}, {}, "dice_tumor")["median"] == 0.81
    stats = metric_stats({}, {"dice_tumor": [0.2, 0.6, math.nan]}, "dice_tumor")
    # Sample standard deviation (ddof=1): sqrt(((0.2 - 0.4)^2 + (0.6 - 0.4)^2) / (2 - 1)).
    assert stats == pytest.approx({"mean": 0.4, "median": 0.4, "std": math.sqrt(0.08), "n": 2})
    assert metric_stats({}, {}, "dice_tumor") is None
    rows = summary_rows({}, {"paper_case_dice_tumor": [0.5], "dice_tumor": [0.9]})
    assert rows[1].case_mean == 0.5  # the paper's per-case column wins over the KiTS class


def test_make_report_self_contained_html_and_markdown(inputs: dict[str, Path]) -> None:
    html_path = make_report(inputs["run"], inputs["eval"], inputs["out"], max_cases=6)
    out = inputs["out"]
    assert html_path == out / "report.html"
    text = html_path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    srcs = re.findall(r"src=['\"]([^'\"]*)", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in text and "<script" not in text
    # Curves: kidney drawn, tumor noted as not available; overlays for all 3 cases.
    assert (out / "curves_kidney.png").is_file() and not (out / "curves_tumor.png").exists()
    assert "tumor" in text and "not available" in text
    assert sorted(p.name for p in out.glob("overlay_*.png")) == [f"overlay_{c}.png" for c in CASES]
    assert len(srcs) == 4
    # Table values from summary.json, per-case values, the labelled paper reference.
    for value in ("0.923 ± 0.031", "0.930", "0.667", "0.789", "0.910", "0.420"):
        assert value in text
    assert "paper (reported): kidney" in text and f"{PAPER_CASE_DICE['kidney']:.3f}" in text
    assert f"{PAPER_CASE_DICE['tumor']:.3f}" in text
    assert "per-case" in text.lower() and "per-slice" in text.lower()
    assert "volume_ml_extra" not in text  # unknown columns ignored
    md = (out / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 4 and all((out / link).is_file() for link in links)
    assert "per-case" in md.lower() and "per-slice" in md.lower() and "0.923" in md
    table1 = (out / "table1.csv").read_text(encoding="utf-8").splitlines()
    assert table1[1].startswith("kidney,0.9234,0.031,0.93,0.9,") and len(table1) == 5
    # Rerun replaces the previous report folder (no stale files, no leftover temp folders).
    (out / "stale.png").write_bytes(b"x")
    make_report(inputs["run"], inputs["eval"], out, max_cases=1)
    assert not (out / "stale.png").exists() and len(list(out.glob("overlay_*.png"))) == 1
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_missing_prediction_is_noted_not_fatal(inputs: dict[str, Path]) -> None:
    (inputs["pred"] / "case_00003.nii.gz").unlink()
    text = make_report(inputs["run"], inputs["eval"], inputs["out"]).read_text(encoding="utf-8")
    assert "Overlay for case_00003 not drawn" in text and "case_00003.nii.gz" in text
    assert len(list(inputs["out"].glob("overlay_*.png"))) == 2


@pytest.mark.parametrize("missing", ["per_case.csv", "summary.json"])
def test_cli_missing_eval_file_exits_2_and_writes_nothing(
    inputs: dict[str, Path], missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (inputs["eval"] / missing).unlink()
    code = main(["report", str(inputs["run"]), str(inputs["eval"]), str(inputs["out"])])
    assert code == 2
    err = capsys.readouterr().err
    assert missing in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not inputs["out"].exists()
    assert not [p for p in inputs["out"].parent.iterdir() if p.name.startswith(".report")]


def test_cli_writes_report(inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["report", str(inputs["run"]), str(inputs["eval"]), str(inputs["out"])]
    assert main([*args, "--max-cases", "0"]) == 0
    assert str(inputs["out"] / "report.html") in capsys.readouterr().out
    assert list(inputs["out"].glob("overlay_*.png")) == []


@pytest.mark.parametrize(
    "problem", ["no_case_column", "bad_number", "bad_json", "out_is_eval", "out_not_report"]
)
def test_bad_inputs_raise_and_leave_nothing(inputs: dict[str, Path], problem: str) -> None:
    ev, out = inputs["eval"], inputs["out"]
    if problem == "no_case_column":
        (ev / "per_case.csv").write_text("id,dice_tumor\na,0.5\n")
    elif problem == "bad_number":
        (ev / "per_case.csv").write_text("case,dice_tumor\na,zero\n")
    elif problem == "bad_json":
        (ev / "summary.json").write_text("{not json")
    elif problem == "out_is_eval":
        out = ev
    else:
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    before = sorted(p.name for p in out.parent.iterdir())
    with pytest.raises(KidneysegError) as info:
        make_report(inputs["run"], ev, out)
    expected = {"bad_json": "summary.json", "out_is_eval": "eval", "out_not_report": "report"}
    assert expected.get(problem, "per_case.csv") in str(info.value)
    assert sorted(p.name for p in out.parent.iterdir()) == before
    assert (ev / "summary.json").is_file()
    if problem == "out_not_report":
        assert (out / "precious.txt").read_text(encoding="utf-8") == "keep me"
