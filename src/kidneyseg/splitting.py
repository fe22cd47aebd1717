"""The patient-level split of a cohort into train / val / test (paper §4: 80/10/10).

Patients, not cases, are assigned to sets, so slices cut from one patient's CT (the one-slice
cases ``case_XXXXX_sYYYY`` of ``kits19_slices``) never straddle training and testing.

Example:
    >>> s = make_split([f"case_{i:05d}" for i in range(10)], (0.8, 0.1, 0.1), seed=0)
    >>> len(s.train), len(s.val), len(s.test)
    (8, 1, 1)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.formats.prep_dir import Split

# A one-slice case cut from a KiTS volume: case_XXXXX_sYYYY (see patient_id).
_SLICE_CASE = re.compile(r"(case_\d+)_s\d+")


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Set sizes (train, val, test) of ``n`` cases; the rounding rule of `make_split`.

    val and test get ``round(n * fraction)`` (halves up), train the rest. Then, so that small
    cohorts still train and validate: val gets at least 1 case when ``n >= 2`` and its fraction
    is > 0, and train keeps at least 1 case (taken from test first, then val).

    Example:
        >>> split_counts(300, (0.8, 0.1, 0.1)), split_counts(3, (0.8, 0.1, 0.1))
        ((240, 30, 30), (2, 1, 0))
    """
    _, f_val, f_test = fractions
    n_val = int(np.floor(n * f_val + 0.5))
    n_test = int(np.floor(n * f_test + 0.5))
    if n >= 2 and f_val > 0:
        n_val = max(n_val, 1)
    while n - n_val - n_test < 1 and n_val + n_test > 0:
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def patient_id(case_id: str) -> str:
    """The patient a case belongs to: a one-slice case ``case_00003_s0120`` (KiTS case 3, slice
    120, as in ``kits19_slices``) belongs to ``case_00003``; any other id is its own patient.

    Example:
        >>> patient_id("case_00003_s0120"), patient_id("case_00003")
        ('case_00003', 'case_00003')
    """
    match = _SLICE_CASE.fullmatch(case_id)
    return match.group(1) if match else case_id


def make_split(
    case_ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    """A random patient-level split, determined by the sorted case ids and ``seed`` alone.

    Patients (`patient_id`), not cases, are shuffled and counted (`split_counts`), so every case
    of a patient lands in the same set. The same ids and seed give the same split whatever the
    order the ids come in (or the number of workers that later process them).

    Example:
        >>> make_split(["case_b", "case_a"], seed=1) == make_split(["case_a", "case_b"], seed=1)
        True
    """
    ids = sorted(set(case_ids))
    if not ids:
        raise KidneysegError("cannot split an empty list of cases")
    patients: dict[str, list[str]] = {}
    for case in ids:
        patients.setdefault(patient_id(case), []).append(case)
    names = sorted(patients)
    n_train, n_val, _ = split_counts(len(names), fractions)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    groups = (shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :])
    sets = [[case for name in group for case in patients[name]] for group in groups]
    return Split(
        train=tuple(sorted(sets[0])),
        val=tuple(sorted(sets[1])),
        test=tuple(sorted(sets[2])),
        seed=int(seed),
        fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
    )
