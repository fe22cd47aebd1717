"""Training inputs: extra cases (e.g. real slices next to phantoms) joining a phase's training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kidneyseg.errors import KidneysegError
from kidneyseg.io import write_volume
from kidneyseg.loaders import make_loaders, prepare_training
from kidneyseg.splitting import make_split
from kidneyseg.training import train_phase
from kidneyseg.types import Volume
from test_dataset import write_prep_dir
from test_training import tiny

IPL = ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (-1.0, 0.0, 0.0))


def write_slice_cases(root: Path, patients: range, slices: int = 2, clip: bool = True) -> Path:
    """One-slice KiTS-layout cases ``case_XXXXX_sYYYY`` (like kits19_slices), HU in [0, 255]."""
    rng = np.random.default_rng(1)
    for patient in patients:
        for s in range(slices):
            hu = rng.normal(40, 30, (1, 40, 40)).astype(np.float32)
            labels = np.zeros(hu.shape, np.uint8)
            labels[0, 10:20, 8:18] = 1
            labels[0, 12:15, 10:13] = 2
            hu[labels == 1] = 190
            hu[labels == 2] = 120
            hu[0, :3] = -1000  # air and bone: clipped away below
            hu[0, -2:] = 700
            if clip:
                hu = np.clip(hu, 0, 255)
            case = root / f"case_{patient:05d}_s{s:04d}"
            for name, array in (("imaging.nii.gz", hu), ("segmentation.nii.gz", labels)):
                write_volume(Volume(array, (0.7, 0.7, 2.5), direction=IPL), case / name)
    return root


@pytest.fixture(scope="module")
def main_prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prep_dir(tmp_path_factory.mktemp("prep") / "prep", size=32)


def test_slices_of_one_patient_share_a_set() -> None:
    ids = [f"case_{p:05d}_s{s:04d}" for p in range(10) for s in range(3)]
    split = make_split(ids, (0.8, 0.1, 0.1), seed=2)
    for subset in (split.train, split.val, split.test):
        others = {
            c[:10] for s in (split.train, split.val, split.test) if s is not subset for c in s
        }
        assert not {c[:10] for c in subset} & others
    assert (len(split.train), len(split.val), len(split.test)) == (24, 3, 3)


def test_extra_cases_join_training_with_their_weight(main_prep: Path, tmp_path: Path) -> None:
    extra = write_slice_cases(tmp_path / "real", range(100, 110))
    cfg = tiny(f"data.extra_cases={extra}", "data.extra_weight=0.25", "data.samples_per_epoch=400")
    setup = prepare_training(main_prep, "kidney", cfg, extra_prep_dir=tmp_path / "extra_prep")
    assert setup.sources is not None and set(setup.sources.tolist()) == {0, 1}
    assert len(setup.foreground) == len(setup.sources) == len(setup.train_set)  # type: ignore[arg-type]
    train, val = make_loaders(setup)
    drawn = np.asarray(list(iter(train.sampler)))  # type: ignore[arg-type]
    share = float((setup.sources[drawn] == 1).mean())
    assert share == pytest.approx(0.25, abs=0.01)
    image, target = setup.train_set[int(np.flatnonzero(setup.sources == 1)[0])]
    assert image.shape == target.shape == (1, 32, 32)
    # The extra cases' validation patients validate too; their test patients stay out.
    main_only = prepare_training(main_prep, "kidney", tiny())
    assert main_only.val_set is not None and setup.val_set is not None
    n_extra_val = len(setup.val_set) - len(main_only.val_set)  # type: ignore[arg-type]
    assert n_extra_val == 2  # one validation patient of ten, two slices each
    assert val is not None and len(val.dataset) == len(setup.val_set)  # type: ignore[arg-type]
    assert (tmp_path / "extra_prep" / "split.json").is_file()


def test_clipped_extra_cases_need_a_window_inside_their_range(
    main_prep: Path, tmp_path: Path
) -> None:
    extra = write_slice_cases(tmp_path / "real", range(100, 106))
    cfg = tiny(f"data.extra_cases={extra}")  # tumor phase unclipped: real slices stop at 255
    with pytest.raises(KidneysegError, match=r"data.tumor_window=0,255"):
        prepare_training(main_prep, "tumor", cfg, extra_prep_dir=tmp_path / "extra_prep")
    cfg = tiny(f"data.extra_cases={extra}", "data.tumor_window=0,255")
    setup = prepare_training(main_prep, "tumor", cfg, extra_prep_dir=tmp_path / "extra_prep")
    assert setup.sources is not None and (setup.sources == 1).any()


def test_extra_cases_may_not_share_a_patient(main_prep: Path, tmp_path: Path) -> None:
    extra = write_slice_cases(tmp_path / "real", range(0, 4))  # case_00000.. are main patients
    cfg = tiny(f"data.extra_cases={extra}")
    with pytest.raises(KidneysegError, match="shares patient case_0000"):
        prepare_training(main_prep, "kidney", cfg, extra_prep_dir=tmp_path / "extra_prep")
    with pytest.raises(KidneysegError, match="preprocess it first"):
        prepare_training(main_prep, "kidney", cfg)


def test_train_phase_with_extra_cases(main_prep: Path, tmp_path: Path) -> None:
    extra = write_slice_cases(tmp_path / "real", range(200, 206))
    run = tmp_path / "run"
    train_phase(
        main_prep,
        run,
        "kidney",
        tiny("train.epochs=1", f"data.extra_cases={extra}"),
        progress=False,
    )
    assert (run / "kidney" / "best.safetensors").is_file()
    assert (run / "kidney" / "extra_prep" / "meta.json").is_file()


def test_tumor_phase_has_its_own_foreground_share(main_prep: Path) -> None:
    from kidneyseg.loaders import foreground_fraction

    cfg = tiny("data.foreground_fraction=0.9", "data.tumor_foreground_fraction=0.2")
    assert foreground_fraction(cfg.data, "kidney") == 0.9
    assert foreground_fraction(cfg.data, "tumor") == 0.2
    assert foreground_fraction(tiny("data.foreground_fraction=0.9").data, "tumor") == 0.9
    setup = prepare_training(main_prep, "tumor", cfg)
    train, _ = make_loaders(setup)
    assert train.sampler.fraction == 0.2  # type: ignore[attr-defined]
