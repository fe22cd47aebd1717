"""``benchmarks/real_slices.py --quick``: it runs, and its JSON has the documented structure."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling _common
    spec = importlib.util.spec_from_file_location("real_slices", BENCHMARKS / "real_slices.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "real_slices", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _unit(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def test_quick_run_writes_a_table_and_a_well_formed_json(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    bench = _load(monkeypatch)
    out = tmp_path / "rs"
    report = bench.main(["--out", str(out), "--quick", "--shared", str(shared_data)])
    written = json.loads((out / "real_slices.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(report))
    assert written["quick"] is True
    assert {"machine", "budget", "data", "rows", "seconds", "total_s", "cpu_s"} <= set(written)

    data = written["data"]
    test_cases = data["test_cases"]
    assert test_cases and data["positives"]["test"]["slices"] == len(test_cases)
    held_out = data["held_out_negatives"]
    assert held_out["totalseg_example_ct"]["slices"] > 0
    assert held_out["dcmqi_ct3slice"]["slices"] == 3

    rows = written["rows"]
    assert [r["key"] for r in rows] == ["baseline", *bench.QUICK_ROWS]
    for row in rows:
        for region in ("kidney", "tumor"):
            entry = row[region]
            assert entry["n_slices"] == len(entry["per_slice"]) > 0
            assert _unit(entry["mean"])
            assert all(_unit(v) for v in entry["per_slice"].values())
            lo, hi = entry["ci95"]
            assert 0.0 <= lo <= hi <= 1.0
        assert set(row["kidney"]["per_slice"]) == set(test_cases)  # every test slice has kidney
        for group in ("real", "phantom"):
            fp = row["false_positives"][group]
            assert fp["slices"] > 0 and _unit(fp["fraction_with_kidney"])
            assert fp["mean_ml"] >= 0 and fp["mean_pixels"] >= 0
    base, window_row, scaled = rows
    assert "delta_vs_baseline" not in base["kidney"]
    assert window_row["phase2_from"] == "baseline"  # a window changes phase 1 only
    assert window_row["tumor"]["per_slice"] == base["tumor"]["per_slice"]
    assert scaled["phase2_from"] == "own" and "delta_ci95" in scaled["tumor"]
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(rows) + 1  # header rule + one line per row
