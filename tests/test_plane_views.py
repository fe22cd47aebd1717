"""Plane views of a preprocessed folder (the coronal / sagittal models' training data) and the
training of one model per plane. Tiny settings (32-px slices, plain U-Net of width 4)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.dataset import SliceDataset, phase_norm_record
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import open_prep_dir
from kidneyseg.formats.run_dir import phase_dir, trained_planes
from kidneyseg.models import read_checkpoint_meta
from kidneyseg.plane_views import plane_view, view_ready
from kidneyseg.planes import PAD_HU, PlaneGrid
from kidneyseg.training import train_phase
from test_dataset import write_prep_dir
from test_training import _constant_kidney_model, rows, tiny


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prep_dir(tmp_path_factory.mktemp("prep") / "prep", size=32)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("cases/*/image.npy")}


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_view_holds_the_cases_cut_along_the_plane(
    prep_dir: Path, tmp_path: Path, plane: str
) -> None:
    view = plane_view(prep_dir, tmp_path / plane, plane)
    source, cut = open_prep_dir(prep_dir), open_prep_dir(view)
    assert cut.split == source.split
    built = sorted(p.name for p in (view / "cases").iterdir())
    assert built == sorted(source.split.train + source.split.val)  # test cases are not cut
    for case_id in built:
        image, label, slices = (np.load(f) for f in source.case_files(case_id))
        grid = PlaneGrid(plane, image.shape, source.spacing_mm(case_id))
        v_image, v_label, v_slices = (np.load(f) for f in cut.case_files(case_id))
        assert v_image.dtype == np.int16 and v_label.dtype == np.uint8
        np.testing.assert_array_equal(v_label, grid.to_view(label, slice(None), False))
        np.testing.assert_array_equal(
            v_image, grid.to_view(image, slice(None), True, PAD_HU, np.int16)
        )
        assert v_slices.shape == (grid.view_shape[0], 3)
        assert v_slices.sum(axis=0).tolist() != [0, 0, 0]
        assert cut.spacing_mm(case_id) == pytest.approx(grid.view_spacing)
    # The plane models are normalised with the axial record.
    for phase in ("kidney", "tumor"):
        cfg = tiny().data
        assert phase_norm_record(cut, phase, cfg) == phase_norm_record(source, phase, cfg)
    # SliceDataset reads the view as it reads the axial folder: square model-size slices.
    ds = SliceDataset(cut, cut.split.train, "kidney", tiny().data)
    assert len(ds) == sum(np.load(cut.case_files(c)[0], mmap_mode="r").shape[0] for c in built[:2])
    image, target = ds[int(np.flatnonzero(ds.foreground)[0])]
    assert image.shape == target.shape == (1, 32, 32) and target.sum() > 0


def test_view_cache_is_reused_and_invalidated(prep_dir: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    shutil.copytree(prep_dir, prep)
    out = tmp_path / "view"
    plane_view(prep, out, "coronal")
    first = _mtimes(out)
    plane_view(prep, out, "coronal")
    assert _mtimes(out) == first and view_ready(prep, out, "coronal")
    # One case re-preprocessed: only that case is cut again.
    label = prep / "cases" / "case_00001" / "label.npy"
    np.save(label, np.load(label))
    os.utime(label, ns=(1, 1))
    assert not view_ready(prep, out, "coronal")
    plane_view(prep, out, "coronal")
    again = _mtimes(out)
    assert again["case_00001"] != first["case_00001"]
    assert {k: v for k, v in again.items() if k != "case_00001"} == {
        k: v for k, v in first.items() if k != "case_00001"
    }
    # Another preprocessing run (a new meta.json): everything is cut again.
    meta = json.loads((prep / "meta.json").read_text(encoding="utf-8"))
    meta["kidneyseg_version"] = "0.0.9"
    (prep / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    plane_view(prep, out, "coronal")
    assert all(_mtimes(out)[k] != again[k] for k in again)


def test_one_model_per_plane_and_resume(prep_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny("train.epochs=1", "data.planes=axial,coronal")
    result = train_phase(prep_dir, run, "kidney", cfg, progress=False)
    assert (result.plane, [r.plane for r in result.others]) == ("axial", ["coronal"])
    assert "kidney (coronal)" in result.summary()
    assert trained_planes(run, "kidney") == ("axial", "coronal")
    recorded = json.loads((phase_dir(run, "kidney", "coronal") / "config.json").read_text())
    assert recorded["plane"] == "coronal" and recorded["prep_dir"] == str(run / "planes/coronal")
    assert read_checkpoint_meta(run / "kidney_coronal" / "best.safetensors").phase == "kidney"
    # A trained plane is not trained over; --resume continues every plane and starts new ones.
    three = tiny("train.epochs=2", "data.planes=axial,coronal,sagittal")
    with pytest.raises(KidneysegError, match="kidney axial model"):
        train_phase(prep_dir, run, "kidney", three, progress=False)
    assert not phase_dir(run, "kidney", "sagittal").exists()
    train_phase(prep_dir, run, "kidney", three, resume=True, progress=False)
    assert [len(rows(run, p)) for p in ("kidney", "kidney_coronal", "kidney_sagittal")] == [2] * 3
    # Only the new planes, without --resume.
    other = tmp_path / "other"
    train_phase(prep_dir, other, "kidney", tiny("train.epochs=1"), progress=False)
    sagittal = tiny("train.epochs=1", "data.planes=sagittal")
    train_phase(prep_dir, other, "kidney", sagittal, progress=False)
    assert trained_planes(other, "kidney") == ("axial", "sagittal")


def test_plane_tumor_model_on_predicted_regions(prep_dir: Path, tmp_path: Path) -> None:
    cfg = tiny("train.epochs=1", "data.tumor_region=predicted", "data.planes=sagittal")
    everywhere = _constant_kidney_model(tmp_path / "all.safetensors", prep_dir, 10.0)
    run = tmp_path / "run"
    train_phase(prep_dir, run, "tumor", cfg, kidney_model=everywhere, progress=False)
    assert trained_planes(run, "tumor") == ("sagittal",)
    prep = open_prep_dir(prep_dir)
    canonical, resliced = run / "tumor" / "regions", run / "tumor_sagittal" / "regions"
    for case_id in prep.split.train + prep.split.val:
        region = np.load(canonical / f"{case_id}.npy")
        assert region.all()  # the phase-1 model found kidney everywhere
        grid = PlaneGrid("sagittal", region.shape, prep.spacing_mm(case_id))
        view = np.load(resliced / f"{case_id}.npy")
        np.testing.assert_array_equal(view, grid.to_view(region, slice(None), False))
        top, left = grid.padding
        assert not view[:, :, :left].any() and view[:, top:, left : left + 1].all()
    source = json.loads((resliced / "source.json").read_text(encoding="utf-8"))
    assert source["checkpoint"] == str(everywhere)


def test_plane_training_refusals(prep_dir: Path, tmp_path: Path) -> None:
    cfg = tiny("data.planes=axial,coronal", f"data.extra_cases={prep_dir}")
    with pytest.raises(KidneysegError, match="extra_cases are axial slices"):
        train_phase(prep_dir, tmp_path / "run", "kidney", cfg, progress=False)
    assert not (tmp_path / "run").exists()
