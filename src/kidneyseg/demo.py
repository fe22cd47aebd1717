"""The one-command demo: the whole pipeline on the synthetic phantom cohort.

phantoms -> preprocess -> train kidney -> train tumor -> predict the test split -> evaluate ->
report, with the ``fast`` preset so it runs on two CPU cores in minutes. Every stage writes
the folder the next one reads (docs/formats.md), so any stage can be rerun by hand:

```
OUT_DIR/phantoms/  KiTS-layout cases          (kidneyseg phantoms)
OUT_DIR/prep/      preprocessed cases + split (kidneyseg preprocess)
OUT_DIR/run/       model folder               (kidneyseg train, both phases)
OUT_DIR/pred/      <case>.nii.gz label maps   (kidneyseg predict)
OUT_DIR/eval/      per_case.csv, summary.json (kidneyseg evaluate)
OUT_DIR/report/    report.html, report.md     (kidneyseg report)
```

Example:
    >>> result = run_demo("demo_out")  # doctest: +SKIP
    >>> result.summary["metrics"]["paper_case_dice_kidney"]["mean"]  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kidneyseg.config import Config, resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.errors import KidneysegError
from kidneyseg.evaluation import evaluate
from kidneyseg.formats import run_dir as rd
from kidneyseg.formats.prep_dir import SPLIT_FILE, read_split
from kidneyseg.inference import Predictor
from kidneyseg.preprocessing import preprocess
from kidneyseg.reporting import make_report
from kidneyseg.training import train_phase
from kidneyseg.utils import check_writable_dir


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and what it measured."""

    out_dir: Path
    summary: dict[str, Any]
    report: Path
    seconds: dict[str, float]


def _say(msg: str) -> None:
    print(f"[kidneyseg demo] {msg}", file=sys.stderr, flush=True)


def run_demo(
    out_dir: str | Path = "demo_out",
    cases: int = 60,
    seed: int = 0,
    cfg: Config | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the whole pipeline on phantoms; stages whose output exists are reused (resume).

    Args:
        out_dir: folder for all stage outputs.
        cases: phantom cases to generate (split 80/10/10 by patient).
        seed: seed of the phantom cohort.
        cfg: configuration (default: the ``fast`` preset).
        progress: show progress bars.
    """
    cfg = cfg or resolve_config("fast")
    out = check_writable_dir(out_dir)
    seconds: dict[str, float] = {}

    def stage(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        _say(f"{name} ...")
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 1)
        _say(f"{name} done in {seconds[name]:.1f} s")
        return value

    data, prep, run = out / "phantoms", out / "prep", out / "run"
    pred, ev, report_dir = out / "pred", out / "eval", out / "report"
    stage("phantoms", write_cohort, data, cases=cases, seed=seed, workers=2)
    stage("preprocess", preprocess, data, prep, cfg, progress=progress)
    for phase in ("kidney", "tumor"):
        if rd.phase_trained(run, phase):
            _say(f"train {phase}: found {rd.best_checkpoint(run, phase)}, reusing it")
            continue
        stage(f"train {phase}", train_phase, prep, run, phase, cfg, progress=progress)

    test_cases = list(read_split(prep / SPLIT_FILE).test)
    predictor = Predictor(run, device="auto", progress=False)
    report = stage("predict", predictor.predict_paths, data, pred, cases=test_cases)
    if not report.ok:
        raise KidneysegError(f"prediction failed for {len(report.failed)} test case(s)", path=pred)
    summary = stage("evaluate", evaluate, pred, data, ev, cases=test_cases)
    html = stage("report", make_report, run, ev, report_dir)
    return DemoResult(out, summary, Path(html), seconds)
