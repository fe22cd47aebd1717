"""Discovery of cases in the KiTS folder layout.

``DATA_DIR/case_XXXXX/imaging.nii.gz`` with the label file ``aggregated_MAJ_seg.nii.gz``
(KiTS21) or ``segmentation.nii.gz`` (KiTS19, KiTS23). Labels 0 background, 1 kidney, 2 tumor,
3 cyst (KiTS21 scheme).

Example:
    >>> cases = find_cases("kits21/dataset")  # doctest: +SKIP
    >>> cases[0].case_id, cases[0].label.name  # doctest: +SKIP
    ('case_00000', 'aggregated_MAJ_seg.nii.gz')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kidneyseg.errors import KidneysegError

#: The imaging file of a case folder.
IMAGE_NAME = "imaging.nii.gz"
#: Label *file* names in order of preference (label ids -> names: `kidneyseg.types.LABEL_NAMES`).
LABEL_FILES = ("aggregated_MAJ_seg.nii.gz", "segmentation.nii.gz")


@dataclass(frozen=True)
class KitsCase:
    """One case folder: its id, imaging file and label file (None when absent)."""

    case_id: str
    image: Path
    label: Path | None


def label_file(case_dir: Path) -> Path | None:
    """The label file of a case folder (KiTS21 name first), or None.

    Example:
        >>> label_file(Path("kits23/dataset/case_00000")).name  # doctest: +SKIP
        'segmentation.nii.gz'
    """
    for name in LABEL_FILES:
        if (case_dir / name).is_file():
            return case_dir / name
    return None


def find_cases(data_dir: str | Path, require_labels: bool = True) -> list[KitsCase]:
    """All cases under ``data_dir`` (sorted by id).

    Accepts the folder holding ``case_*`` folders, or a KiTS repository root with a
    ``dataset/`` folder inside.

    Args:
        data_dir: the folder of ``case_*`` folders, or a KiTS repository root.
        require_labels: refuse a case with imaging but no label file.

    Returns:
        One `KitsCase` per case folder that holds ``imaging.nii.gz``.

    Raises:
        KidneysegError: the folder is missing, holds no case, or (with ``require_labels``)
            a case has imaging but no label file.

    Example:
        >>> [c.case_id for c in find_cases("data/kits23")][:2]  # doctest: +SKIP
        ['case_00000', 'case_00001']
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise KidneysegError("data folder not found", path=root)
    if not any(root.glob("case_*")) and (root / "dataset").is_dir():
        root = root / "dataset"
    cases = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("case_")):
        image = case_dir / IMAGE_NAME
        if not image.is_file():
            continue
        label = label_file(case_dir)
        if label is None and require_labels:
            raise KidneysegError(
                f"case has {IMAGE_NAME} but no label file ({' or '.join(LABEL_FILES)})",
                path=case_dir,
            )
        cases.append(KitsCase(case_dir.name, image, label))
    if not cases:
        raise KidneysegError(
            f"no KiTS cases found (expected case_*/{IMAGE_NAME}); "
            "create phantoms with `kidneyseg phantoms` or download with `kidneyseg download`",
            path=root,
        )
    return cases
