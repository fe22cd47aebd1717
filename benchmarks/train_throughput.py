"""Training throughput: the real data pipeline + training step vs the bare model.

Generates phantom cases and preprocesses them (`kidneyseg.data.phantoms`, `preprocess`) in a
temporary directory, then measures on one device, in one run:

1. ``loader``: the real DataLoader alone (memory-mapped reads, normalisation, resizing);
2. ``pipeline``: the real training step fed by that DataLoader: host->device copy, batched
   augmentation (`kidneyseg.augmentation.BatchAugment`), forward, BCE loss, backward, Adam step;
3. ``model``: the same step on random tensors already on the device (the upper bound).

``pipeline / model`` close to 1 means data loading is not the bottleneck.

Usage:
    python benchmarks/train_throughput.py --device cpu --image-size 128 --batch-size 8
    python benchmarks/train_throughput.py --device cuda --image-size 512 --batch-size 128 \\
        --precision bf16-mixed --channels-last --workers 8
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from kidneyseg.config import resolve_config
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.loaders import make_loaders, prepare_training
from kidneyseg.preprocessing import preprocess
from kidneyseg.training import SegmentationTask


def write_phantom_prep(root: Path, cases: int, depth: int, size: int, seed: int = 0) -> Path:
    """A PREP_DIR made the real way: phantom cases ``(depth, size, size)``, then `preprocess`."""
    write_cohort(root / "data", cases=cases, seed=seed, shape=(depth, size, size), progress=False)
    preprocess(root / "data", root / "prep", resolve_config(), workers=1, progress=False)
    return root / "prep"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _forever(loader: torch.utils.data.DataLoader) -> Iterator:  # type: ignore[type-arg]
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        yield from loader
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up)")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--architecture", default="unet_resnet34")
    parser.add_argument(
        "--source-size",
        type=int,
        default=0,
        help="in-plane size of the stored slices (default: --image-size)",
    )
    parser.add_argument("--phase", default="kidney", choices=("kidney", "tumor"))
    args = parser.parse_args()

    device = torch.device(args.device)
    warmup = 3
    cfg = resolve_config(
        overrides=[
            f"data.image_size={args.image_size}",
            f"train.batch_size={args.batch_size}",
            f"data.num_workers={args.workers}",
            f"model.architecture={args.architecture}",
            "model.encoder_weights=none",
            f"train.compile={args.compile}",
            f"train.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"train.precision={args.precision}",
            f"data.samples_per_epoch={args.batch_size * (args.steps + warmup)}",
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source_size or args.image_size
        prep = write_phantom_prep(Path(tmp), cases=6, depth=48, size=source)
        setup = prepare_training(prep, args.phase, cfg)
        loader, _ = make_loaders(setup)
        task = SegmentationTask(cfg, args.phase, channels_last=args.channels_last).to(device)
        task.train()
        optimizer = task.configure_optimizers()
        generator = torch.Generator(device=device).manual_seed(0)

        def step(image: torch.Tensor, target: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, args.precision):
                loss = task.loss_fn(task.model(image).float(), target)
            loss.backward()
            optimizer.step()

        def augment(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            image, target = (t.to(device, non_blocking=True) for t in batch)
            image, target = task.augment(image, target, generator)  # type: ignore[misc]
            if args.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            return image, target

        # 1. Loader alone.
        it = _forever(loader)
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            next(it)
        loader_rate = args.steps * args.batch_size / (time.perf_counter() - t0)

        # 2. Real pipeline: loader -> device -> augmentation -> training step.
        for _ in range(warmup):
            step(*augment(next(it)))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(*augment(next(it)))
        _sync(device)
        pipeline_rate = args.steps * args.batch_size / (time.perf_counter() - t0)

        # 3. Bare model on random tensors already on the device.
        shape = (args.batch_size, 1, args.image_size, args.image_size)
        image = torch.randn(shape, device=device)
        if args.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        target = (torch.rand(shape, device=device) > 0.9).float()
        for _ in range(warmup):
            step(image, target)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(image, target)
        _sync(device)
        model_rate = args.steps * args.batch_size / (time.perf_counter() - t0)

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
        f", {torch.get_num_threads()} threads), {args.architecture} {args.image_size}px "
        f"batch {args.batch_size}, {args.precision}, channels_last={args.channels_last}, "
        f"compile={args.compile}, workers={args.workers}, source {source}px"
    )
    print(f"loader only          : {loader_rate:9.1f} slices/s")
    print(
        f"real pipeline + step : {pipeline_rate:9.1f} slices/s "
        f"({args.batch_size / pipeline_rate:.3f} s/step)"
    )
    print(
        f"bare model step      : {model_rate:9.1f} slices/s "
        f"({args.batch_size / model_rate:.3f} s/step)"
    )
    print(f"pipeline / model     : {pipeline_rate / model_rate:9.2f}")


if __name__ == "__main__":
    main()
