"""Helpers shared by the real-data benchmarks (``real_transfer.py``, ``real_slices.py``).

Where the real files of ``../shared/data`` lie (its README gives their provenance and
licences), a stage clock that prints and records each stage's wall time, and the phantom
cohort renamed so its ids never read as KiTS patients.

Scripts in ``benchmarks/`` import it as ``_common`` (Python puts the script's folder first on
``sys.path``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.io import read_image

#: ``../shared/data`` beside the checkout (the scripts' ``--shared`` chooses another).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

#: TotalSegmentator's multilabel ids in example_seg_fast_force_split.nii.gz.
TS_KIDNEY_RIGHT, TS_KIDNEY_LEFT = 2, 3


@dataclass(frozen=True)
class SharedData:
    """The real files of one ``shared/data`` folder."""

    root: Path = SHARED

    @property
    def real_slices(self) -> Path:
        """55 one-slice KiTS19 cases (32 patients), HU clipped to [0, 255], human labels."""
        return self.root / "kits19_slices"

    @property
    def ts_ct(self) -> Path:
        """TotalSegmentator's example abdomen/pelvis CT (3 mm, real HU)."""
        return self.root / "totalseg_example" / "example_ct.nii.gz"

    @property
    def ts_seg(self) -> Path:
        """TotalSegmentator's own multilabel output on `ts_ct` (a model's, not people's)."""
        return self.root / "totalseg_example" / "example_seg_fast_force_split.nii.gz"

    @property
    def ts_dicom(self) -> Path:
        """Another real CT (20 slices, upper abdomen at the liver dome, no kidneys)."""
        return self.root / "totalseg_example" / "example_ct_dicom"

    @property
    def dcmqi_ct(self) -> Path:
        """A 3-slice GE abdominal CT at the liver (no kidneys)."""
        return self.root / "dcmqi_ct3slice" / "ct-3slice"


def read_image_labels(path: Path) -> np.ndarray:
    """TotalSegmentator's multilabel map (ids beyond our 0-3, so not `read_labels`)."""
    return np.asarray(read_image(path).array)


@dataclass
class StageClock:
    """Runs stages, says when each starts and ends on stderr, and keeps their wall times.

    Example:
        >>> clock = StageClock("demo")
        >>> clock("sum", sum, [1, 2])  # doctest: +SKIP
        3
    """

    tag: str
    seconds: dict[str, float] = field(default_factory=dict)

    def say(self, msg: str) -> None:
        print(f"[{self.tag}] {msg}", file=sys.stderr, flush=True)

    def __call__(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.say(f"{name} ...")
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        self.say(f"{name}: {self.seconds[name]:.1f} s")
        return value


def name_phantoms_apart(data: Path) -> None:
    """Rename phantom cases ``case_00000...`` to ``case_phantom00000...``.

    Phantom ids would read as KiTS patients 0... and collide with the real slices' patients in
    the extra cases' leak check: name them as the synthetic cases they are.
    """
    for case in sorted(data.glob("case_[0-9]*")):
        case.rename(case.with_name(case.name.replace("case_", "case_phantom", 1)))
