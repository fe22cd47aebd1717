"""End-to-end prediction time on a whole CT: the fast cascade against the naive one, same run.

The CT is a phantom of ``--shape`` (canonical z x y x x voxels) with the demo's anatomy, written
as ``.nii.gz``; each mode is timed from reading the file to writing the label map:

* ``naive``: phase 1 on every whole axial slice, phase 2 on every slice with kidney (the paper's
  cascade as written);
* ``fast``: a coarse pass finds the kidneys, both phases run only around them
  (`kidneyseg.localization`, ``inference.mode = "fast"``): on whole slices over the kidneys'
  axial range (``inference.fast_crop = "axial"``, the default) or on in-plane boxes too
  (``--set inference.fast_crop=box``).

Models: ``--model RUN_DIR`` (trained, with or without cysts (``--preset fast,kits``); then the
Dice between the two label maps is reported), or
random-weight ResNet34 U-Nets at ``--image-size`` (the paper's 512 px by default). Random
weights find "kidney" anywhere, so they time the naive path honestly but say nothing about the
fast path's gain: give trained models for that. With ``--naive-slices N`` the naive path runs
on N slices through the kidneys only and its time is extrapolated linearly to the whole CT
(printed as such).

``--backend torch|onnx|auto`` (``inference.backend``) picks what runs the networks; with
``onnx`` a model not yet exported is exported first (``best.onnx`` beside its checkpoints;
not timed).

Prints per-stage times, slices/s, peak RSS, and as its last line (``--json``) one JSON object
with ``ct_shape``, ``image_size``, ``device``, ``threads``, ``backend``, ``precision``,
``naive_s``, ``fast_s``, ``ratio``, ``peak_rss_mib`` and, with ``--model``, ``dice_fast_vs_naive``.

Example:
    python benchmarks/predict_speed.py --json --model demo_out/run --shape 300x512x512
    python benchmarks/predict_speed.py --json --model demo_out/run --backend onnx
    python benchmarks/predict_speed.py --json --shape 300x512x512 --naive-slices 40
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kidneyseg.config import resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.inference import Predictor
from kidneyseg.io import read_image, write_volume
from kidneyseg.metrics import dice
from kidneyseg.models import build_model, save_checkpoint
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.postprocessing import postprocess

NORMS = {
    "kidney": NormalizationRecord("kidney", (0.0, 200.0), 60.0, 70.0),
    "tumor": NormalizationRecord("tumor", None, 120.0, 60.0),
}


def make_run(root: Path, image_size: int) -> Path:
    """RUN_DIR with random-weight ResNet34 U-Nets for both phases."""
    cfg = resolve_config(overrides=[f"data.image_size={image_size}", "model.encoder_weights=none"])
    for seed, phase in enumerate(("kidney", "tumor")):
        torch.manual_seed(seed)
        save_checkpoint(
            root / phase / "best.safetensors", build_model(cfg.model), cfg, phase, NORMS[phase]
        )
    return root


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(
    predictor: Predictor, ct_path: Path, out: Path, zs: slice | None = None
) -> dict[str, Any]:
    """Read, cascade, postprocess, write (as `Predictor.predict_file` does), timing each stage."""
    counts = {"kidney": 0, "tumor": 0}
    hooks = [
        runner.model.register_forward_pre_hook(
            lambda _m, a, name=name: counts.update({name: counts[name] + len(a[0])})
        )
        for name, runner in predictor.phases.items()
    ]
    cuda = predictor.device.type == "cuda"
    t: dict[str, float] = {}
    start = time.perf_counter()
    volume = read_image(ct_path)
    t["read_s"] = time.perf_counter() - start
    ct = volume.to_canonical()
    if zs is not None:
        ct = ct[zs]
    spacing = volume.canonical_spacing
    t0 = time.perf_counter()
    # A phase 2 trained with tumor and cyst (--preset fast,kits) fills a cyst mask too.
    cyst = np.zeros(ct.shape, bool) if predictor.predicts_cysts else None
    kidney, tumor, region = predictor.segment_canonical(ct, spacing, cyst=cyst)
    if cuda:
        torch.cuda.synchronize()
    t["cascade_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = postprocess(
        kidney, tumor, spacing, predictor.config.postprocess, region=region, cyst=cyst
    )
    t["postprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if zs is None:
        write_volume(volume.from_canonical(labels), out)
    t["write_s"] = time.perf_counter() - t0
    t["total_s"] = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    return {"times": t, "slices": counts, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="300x512x512", help="canonical z x y x x voxels")
    parser.add_argument("--model", type=Path, default=None, help="trained RUN_DIR")
    parser.add_argument("--image-size", type=int, default=512, help="random models' input size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--naive-slices", type=int, default=0, help="extrapolate naive from N")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed")
    parser.add_argument(
        "--ct", type=Path, default=None, help="time this CT file instead of a phantom"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default=None,
        help="inference.backend for both modes (default: the model's, auto)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="inference.*/postprocess.* override for both modes, e.g. inference.crop_margin_mm=60",
    )
    args = parser.parse_args()
    shape: tuple[int, ...] = tuple(int(v) for v in args.shape.lower().split("x"))
    if len(shape) != 3:
        raise SystemExit("--shape needs three numbers, e.g. 300x512x512")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        args.overrides.append(f"inference.backend={args.backend}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        if args.ct is not None:
            image, label = args.ct, None
            shape = read_image(image).to_canonical().shape
            print(f"CT {image}: canonical {shape}")
        else:
            case = write_cohort(tmp / "ct", cases=1, seed=args.seed, shape=shape, workers=1)[0]
            image, label = case.image, case.label
            print(f"phantom {shape} written in {time.perf_counter() - t0:.1f} s: {image}")
        run = args.model or make_run(tmp / "run", args.image_size)
        results: dict[str, dict[str, Any]] = {}
        for mode in ("fast", "naive"):
            predictor = Predictor(
                run,
                device=args.device,
                batch_size=args.batch_size,
                progress=False,
                overrides=[*args.overrides, f"inference.mode={mode}"],
            )
            if args.threads:
                torch.set_num_threads(args.threads)
            warm = np.full((1, *shape[1:]), 40, np.int16)
            predictor.phases["kidney"].segment(warm, np.arange(1), spacing_z=1.0)  # warm-up
            zs = None
            if mode == "naive" and args.naive_slices:
                if label is None:
                    raise SystemExit("--naive-slices needs a phantom (it centres on its kidneys)")
                gt = read_image(label).to_canonical()
                mid = int(np.flatnonzero(gt.any(axis=(1, 2))).mean())
                zs = slice(max(0, mid - args.naive_slices // 2), mid + args.naive_slices // 2)
            res = run_mode(predictor, image, tmp / f"{mode}.nii.gz", zs)
            if zs is None and label is not None:  # the phantom's labels: which mode is closer?
                gt = read_image(label).to_canonical()
                res["dice_vs_reference"] = {
                    "kidney": round(dice(res["labels"] > 0, gt > 0), 4),
                    "tumor": round(dice(res["labels"] == 2, gt == 2), 4),
                }
            if zs is not None:  # linear in slices: scale the slice-bound stages up
                n = zs.stop - zs.start
                for key in ("cascade_s", "postprocess_s"):
                    res["times"][key] *= shape[0] / n
                res["times"]["total_s"] = sum(v for k, v in res["times"].items() if k != "total_s")
                res["extrapolated_from_slices"] = n
            res["peak_rss_mib"] = round(peak_rss_mib(), 1)
            results[mode] = res
            device, image_size = predictor.device, predictor.phases["kidney"].image_size
            t = res["times"]
            slices = res["slices"]["kidney"] + res["slices"]["tumor"]
            note = f" (extrapolated from {res['extrapolated_from_slices']} slices)" if zs else ""
            print(
                f"{mode:5s}: total {t['total_s']:.2f} s{note} = read {t['read_s']:.2f} + cascade "
                f"{t['cascade_s']:.2f} + postprocess {t['postprocess_s']:.2f} + write "
                f"{t['write_s']:.2f}; model passes: phase 1 {res['slices']['kidney']}, phase 2 "
                f"{res['slices']['tumor']} slices ({slices / max(t['cascade_s'], 1e-9):.1f}/s); "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB"
            )
    fast, naive = results["fast"], results["naive"]
    summary: dict[str, Any] = {
        "ct_shape": list(shape),
        "image_size": image_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "backend": predictor.backend,
        "precision": predictor.phases["kidney"].precision,
        "fast_crop": predictor.config.inference.fast_crop,
        "ct": str(args.ct) if args.ct else "phantom",
        "model": str(args.model) if args.model else f"random ResNet34 U-Net {args.image_size} px",
        "naive_s": round(naive["times"]["total_s"], 2),
        "fast_s": round(fast["times"]["total_s"], 2),
        "ratio": round(naive["times"]["total_s"] / fast["times"]["total_s"], 2),
        "naive_extrapolated_from_slices": naive.get("extrapolated_from_slices"),
        "stages_fast": {k: round(v, 2) for k, v in fast["times"].items()},
        "stages_naive": {k: round(v, 2) for k, v in naive["times"].items()},
        "peak_rss_mib": fast["peak_rss_mib"],
    }
    if "dice_vs_reference" in fast:
        summary["dice_vs_reference"] = {m: results[m].get("dice_vs_reference") for m in results}
    if args.model and "extrapolated_from_slices" not in naive:
        a, b = fast["labels"], naive["labels"]
        summary["dice_fast_vs_naive"] = {
            "kidney": round(dice(a > 0, b > 0), 4),
            "tumor": round(dice(a == 2, b == 2), 4),
        }
    print(
        f"fast / naive ({summary['backend']}): {summary['fast_s']} s / {summary['naive_s']} s = "
        f"x{summary['ratio']}"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
