"""Tests of `kidneyseg.utils`: the spawn-only process pool."""

from __future__ import annotations

import sys

import pytest

from kidneyseg.utils import process_pool

#: Changed in the parent by the test; a forked worker would inherit the change, a spawned one
#: imports this module afresh.
_MARK = "fresh"


def _mark() -> str:
    return _MARK


def test_process_pool_starts_fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_MARK", "parent")
    with process_pool(2) as pool:
        assert [f.result() for f in [pool.submit(_mark), pool.submit(_mark)]] == ["fresh"] * 2
        assert list(pool.map(abs, [-1, 2])) == [1, 2]


def test_process_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        process_pool(0)
