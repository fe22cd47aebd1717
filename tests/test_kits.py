"""KiTS layout discovery (`kidneyseg.data.kits`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidneyseg.data.kits import LABEL_FILES, find_cases, label_file
from kidneyseg.errors import KidneysegError


def _case(root: Path, name: str, *files: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_bytes(b"")
    return folder


def test_finds_cases_sorted_and_prefers_the_kits21_label(tmp_path: Path) -> None:
    _case(tmp_path, "case_00002", "imaging.nii.gz", "segmentation.nii.gz")
    both = _case(
        tmp_path, "case_00000", "imaging.nii.gz", "segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz"
    )
    _case(tmp_path, "case_00001", "segmentation.nii.gz")  # no imaging yet: not a case
    _case(tmp_path, "case_00003", "imaging.nii.gz.part", "segmentation.nii.gz")  # a download
    _case(tmp_path, "notes", "imaging.nii.gz", "segmentation.nii.gz")  # not case_*
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_00000", "case_00002"]
    assert cases[0].label == both / "aggregated_MAJ_seg.nii.gz" == label_file(both)
    assert cases[1].label is not None and cases[1].label.name == "segmentation.nii.gz"
    assert cases[0].image == both / "imaging.nii.gz"
    assert LABEL_FILES == ("aggregated_MAJ_seg.nii.gz", "segmentation.nii.gz")  # preference


def test_repository_root_with_dataset_folder(tmp_path: Path) -> None:
    _case(tmp_path / "dataset", "case_00007", "imaging.nii.gz", "segmentation.nii.gz")
    assert [c.case_id for c in find_cases(tmp_path)] == ["case_00007"]


def test_missing_label(tmp_path: Path) -> None:
    _case(tmp_path, "case_00000", "imaging.nii.gz")
    with pytest.raises(
        KidneysegError, match="case_00000: case has imaging.nii.gz but no label"
    ) as err:
        find_cases(tmp_path)
    assert all(name in str(err.value) for name in LABEL_FILES)
    (case,) = find_cases(tmp_path, require_labels=False)
    assert case.label is None


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="no KiTS cases found"):
        find_cases(tmp_path)
    with pytest.raises(KidneysegError, match="data folder not found"):
        find_cases(tmp_path / "nope")
