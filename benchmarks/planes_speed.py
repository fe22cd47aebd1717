"""Prediction time of the multi-planar cascade against the axial one, on the same CT and run.

The CT is a phantom of ``--shape`` (canonical z x y x x voxels). Models: ``--model RUN_DIR``
(trained with ``data.planes``; then each mode's Dice against the phantom's labels is printed
too) or random-weight ResNet34 U-Nets at ``--image-size`` in all three planes (random weights
find "kidney" anywhere, so phase 2 runs on more slices than a trained model would: an upper
bound of the cost). Both modes run the naive path (whole slices); ``axial`` is
``inference.planes=axial`` on the same folder.

Prints, per mode, the cascade's time and the model passes per plane, and (``--json``) one JSON
object last with ``ct_shape``, ``spacing``, ``image_size``, ``threads``, ``axial_s``,
``planes_s``, ``ratio`` and the passes.

Example:
    python benchmarks/planes_speed.py --json --shape 100x256x256 --image-size 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kidneyseg.config import resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.formats.run_dir import best_checkpoint
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image
from kidneyseg.metrics import dice
from kidneyseg.models import build_model, save_checkpoint
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.planes import PLANES

NORMS = {
    "kidney": NormalizationRecord("kidney", (0.0, 200.0), 60.0, 70.0),
    "tumor": NormalizationRecord("tumor", None, 120.0, 60.0),
}


def make_run(root: Path, image_size: int) -> Path:
    """RUN_DIR with random-weight ResNet34 U-Nets for both phases in every plane."""
    overrides = [f"data.image_size={image_size}", "model.encoder_weights=none"]
    cfg = resolve_config(overrides=[*overrides, "data.planes=axial,coronal,sagittal"])
    for seed, (phase, plane) in enumerate((p, q) for p in NORMS for q in PLANES):
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        save_checkpoint(best_checkpoint(root, phase, plane), model, cfg, phase, NORMS[phase])
    return root


def time_mode(predictor: Predictor, ct: np.ndarray, spacing: Any) -> dict[str, Any]:
    passes: dict[str, int] = {}
    hooks = []
    for phase, runners in predictor.planes.items():
        for plane, runner in runners.items():
            key = f"{phase}/{plane}"
            passes[key] = 0

            def count(_m: Any, a: Any, key: str = key) -> None:
                passes[key] += len(a[0])

            hooks.append(runner.model.register_forward_pre_hook(count))
    cyst = np.zeros(ct.shape, bool) if predictor.predicts_cysts else None  # kits models
    start = time.perf_counter()
    kidney, tumor, _ = predictor.segment_canonical(ct, spacing, None, None, None, cyst)
    seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    labels = np.where(tumor & kidney, 2, kidney.astype(np.uint8))
    if cyst is not None:
        labels[cyst & kidney] = 3
    return {"seconds": seconds, "passes": passes, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100x256x256", help="canonical z x y x x voxels")
    parser.add_argument("--model", type=Path, default=None, help="RUN_DIR trained with planes")
    parser.add_argument("--image-size", type=int, default=128, help="random models' input size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        case = write_cohort(tmp / "ct", cases=1, seed=args.seed, shape=shape, workers=1)[0]
        volume = read_image(case.image)
        ct, spacing = volume.to_canonical(), volume.canonical_spacing
        gt = read_image(case.label).to_canonical()
        run = args.model or make_run(tmp / "run", args.image_size)
        results = {}
        for mode in ("axial", "all"):
            predictor = Predictor(
                run, device=args.device, progress=False, overrides=[f"inference.planes={mode}"]
            )
            if args.threads:
                torch.set_num_threads(args.threads)
            predictor.phases["kidney"].segment(np.full((1, 64, 64), 40, np.int16), np.arange(1))
            res = time_mode(predictor, ct, spacing)
            if args.model:
                res["dice"] = {
                    "kidney": round(dice(res["labels"] > 0, gt > 0), 4),
                    "tumor": round(dice(res["labels"] == 2, gt == 2), 4),
                }
            results[mode] = res
            print(
                f"{mode:5s}: cascade {res['seconds']:.1f} s; model passes {res['passes']}"
                + (f"; Dice vs phantom labels {res['dice']}" if "dice" in res else "")
            )
    summary = {
        "ct_shape": list(shape),
        "spacing": [round(s, 3) for s in spacing],
        "image_size": predictor.phases["kidney"].image_size,
        "device": str(predictor.device),
        "threads": torch.get_num_threads(),
        "model": str(args.model) if args.model else "random ResNet34 U-Nets",
        "axial_s": round(results["axial"]["seconds"], 2),
        "planes_s": round(results["all"]["seconds"], 2),
        "ratio": round(results["all"]["seconds"] / results["axial"]["seconds"], 2),
        "passes": {m: r["passes"] for m, r in results.items()},
        "dice": {m: r.get("dice") for m, r in results.items()} if args.model else None,
    }
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
