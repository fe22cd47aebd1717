"""Time `Predictor.predict_volume` on a synthetic CT with random-weight ResNet34 U-Nets.

Writes throw-away checkpoints (encoder_weights none, seeded) for each ``--image-size`` to a
temporary folder, builds a synthetic abdomen (air, body, two kidneys) of ``--shape`` canonical
``z x y x x`` voxels, runs one warm-up slice batch, then times whole volumes. Random weights
decide which slices phase 2 sees, so the count of slices each phase ran is printed too.

Example:
    python benchmarks/predict_speed.py --shape 100x512x512 --image-size 512 128 --device cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kidneyseg.config import resolve_config
from kidneyseg.inference import Predictor
from kidneyseg.models import build_model, save_checkpoint
from kidneyseg.normalization import NormalizationRecord
from kidneyseg.types import Volume

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


def synthetic_hu(shape: tuple[int, int, int]) -> np.ndarray:
    """Canonical (z, y, x) HU: air, a body, two kidneys in the middle half of the slices."""
    z, y, x = shape
    rng = np.random.default_rng(0)
    hu = np.full(shape, -1000, np.int16)
    hu[:, y // 8 : -y // 8, x // 10 : -x // 10] = 40
    hu += rng.integers(-15, 15, shape, dtype=np.int16)
    hu[z // 4 : 3 * z // 4, y // 3 : y // 2, x // 5 : 2 * x // 5] = 160
    hu[z // 4 : 3 * z // 4, y // 3 : y // 2, 3 * x // 5 : 4 * x // 5] = 160
    return hu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100x512x512", help="canonical z x y x x voxels")
    parser.add_argument("--image-size", type=int, nargs="+", default=[512, 128])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    assert len(shape) == 3, "--shape needs three numbers, e.g. 100x512x512"
    # Identity direction (LPS): the file's index order is (x, y, z), as DICOM stores it.
    hu = synthetic_hu(shape)  # type: ignore[arg-type]
    ct = Volume(np.ascontiguousarray(hu.transpose(2, 1, 0)), (0.8, 0.8, 3.0), case_id="ct")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shape (z,y,x) {shape}")
    for size in args.image_size:
        with tempfile.TemporaryDirectory() as tmp:
            predictor = Predictor(
                make_run(Path(tmp), size),
                device=args.device,
                batch_size=args.batch_size,
                progress=False,
            )
            counts = {"kidney": 0, "tumor": 0}
            for name, phase in predictor.phases.items():
                phase.model.register_forward_pre_hook(
                    lambda _m, a, name=name, counts=counts: counts.update(
                        {name: counts[name] + len(a[0])}
                    )
                )
            warm = Volume(ct.array[:, :, : min(2, shape[0])].copy(), ct.spacing)
            predictor.predict_volume(warm)
            times = []
            for _ in range(args.repeats):
                counts.update(kidney=0, tumor=0)
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                predictor.predict_volume(ct)
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            best = min(times)
            slices = counts["kidney"] + counts["tumor"]
            print(
                f"image_size {size:4d} on {predictor.device}: {best:7.2f} s per volume, "
                f"{slices / best:7.1f} slices/s (phase 1 {counts['kidney']} slices, "
                f"phase 2 {counts['tumor']} slices, batch {predictor.batch_size})"
            )


if __name__ == "__main__":
    main()
