"""Benchmark `kidneyseg.preprocessing.preprocess` against plain gzip decompression.

Reading the ``.nii.gz`` files (gzip) should dominate preprocessing; this prints both speeds on
the same files so "near gzip speed" can be judged:

* ``gzip``: ``gzip.open(f).read()`` of every image and label file, one process;
* ``preprocess``: the full run (read, check, reorient, histograms, write) with ``--workers``;
* a per-stage breakdown of one case (read image, read labels, the rest).

Speeds: cases/s, compressed input MB/s (file sizes) and raw voxel MB/s (decompressed bytes).

Example:
    python benchmarks/preprocess.py --cases 8 --shape 96 256 256 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1e6
# KiTS files store the axial axis first, pointing inferior (axcodes I, P, L).
KITS_DIRECTION = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0))


def write_synthetic(root: Path, cases: int, shape: tuple[int, int, int], dtype: str) -> None:
    """Simple CT-like cases: air, a noisy soft-tissue body, two kidneys with a tumor.

    The noise keeps the gzip ratio close to that of real CT (noise does not compress).
    """
    from kidneyseg.io import write_volume
    from kidneyseg.types import Volume

    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    zc, yc, xc = (s / 2 for s in shape)
    body = ((y - yc) / (0.4 * shape[1])) ** 2 + ((x - xc) / (0.45 * shape[2])) ** 2 < 1
    body = np.broadcast_to(body, shape)
    for i in range(cases):
        rng = np.random.default_rng(i)
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
        labels = np.zeros(shape, np.uint8)
        for side in (-1, 1):
            kidney = ((z - zc) / (0.3 * shape[0])) ** 2 + ((y - yc * 1.2) / (0.1 * shape[1])) ** 2
            kidney = kidney + ((x - xc - side * 0.2 * shape[2]) / (0.07 * shape[2])) ** 2 < 1
            labels[kidney] = 1
        tumor = ((z - zc) / (0.08 * shape[0])) ** 2 + ((y - yc * 1.2) / (0.04 * shape[1])) ** 2
        tumor = tumor + ((x - xc - 0.2 * shape[2]) / (0.04 * shape[2])) ** 2 < 1
        labels[tumor] = 2
        image[labels == 1] += 110
        image[labels == 2] += 60
        folder = root / f"case_{i:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        geometry = ((3.0, 0.78, 0.78), (0.0, 0.0, 0.0), KITS_DIRECTION)
        write_volume(Volume(image.astype(dtype), *geometry), folder / "imaging.nii.gz")
        write_volume(Volume(labels, *geometry), folder / "segmentation.nii.gz")


def make_cohort(
    root: Path, cases: int, shape: tuple[int, int, int], dtype: str, source: str
) -> str:
    try:
        from kidneyseg.data.phantoms import write_cohort
    except ImportError:
        source = "synthetic"
    if source == "synthetic":
        write_synthetic(root, cases, shape, dtype)
        return f"synthetic, KiTS orientation I,P,L, {dtype}"
    write_cohort(root, cases, seed=0, shape=shape, workers=1)
    return "kidneyseg.data.phantoms.write_cohort"


def gzip_speed(files: list[Path]) -> tuple[float, int]:
    """Seconds to decompress ``files`` with Python's gzip, and the decompressed bytes."""
    start = time.perf_counter()
    raw = 0
    for f in files:
        with gzip.open(f, "rb") as fh:
            raw += len(fh.read())
    return time.perf_counter() - start, raw


def stage_breakdown(case_dir: Path, out: Path) -> dict[str, float]:
    from kidneyseg.data.kits import find_cases
    from kidneyseg.io import read_image, read_labels
    from kidneyseg.preprocessing import process_case

    case = next(c for c in find_cases(case_dir.parent) if c.case_id == case_dir.name)
    t0 = time.perf_counter()
    image = read_image(case.image)
    t1 = time.perf_counter()
    read_labels(case.label, like=image)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    process_case(case, out)
    t3 = time.perf_counter()
    return {"read image": t1 - t0, "read labels": t2 - t1, "process_case (all)": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[96, 256, 256], metavar=("Z", "Y", "X")
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--dtype",
        default="int16",
        choices=["int16", "float32"],
        help="image dtype of synthetic cases (KiTS images vary)",
    )
    parser.add_argument(
        "--source",
        default="phantoms",
        choices=["phantoms", "synthetic"],
        help="phantoms: kidneyseg.data.phantoms.write_cohort (if present); synthetic: simple "
        "cases in the KiTS file orientation (axial axis first: a full transpose to canonical)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="existing KiTS-layout folder to use instead of generating cases",
    )
    args = parser.parse_args()

    from kidneyseg.config import Config
    from kidneyseg.data.kits import find_cases
    from kidneyseg.preprocessing import preprocess

    work = Path(tempfile.mkdtemp(prefix="kidneyseg-bench-"))
    try:
        if args.data_dir is None:
            data = work / "data"
            t = time.perf_counter()
            source = make_cohort(data, args.cases, tuple(args.shape), args.dtype, args.source)
            print(
                f"generated {args.cases} cases {args.shape} [{source}] in "
                f"{time.perf_counter() - t:.1f} s"
            )
        else:
            data = args.data_dir
        cases = find_cases(data)
        files = [f for c in cases for f in (c.image, c.label) if f is not None]
        compressed = sum(f.stat().st_size for f in files)

        gz_s, raw = gzip_speed(files)  # also warms the page cache for the run below
        summary = preprocess(data, work / "prep", Config(), workers=args.workers, progress=False)
        pp_s = summary.seconds
        n = len(cases)
        print(
            f"cases {n}, compressed {compressed / MB:.1f} MB, raw {raw / MB:.1f} MB "
            f"(ratio {raw / compressed:.2f}), cpu count {os.cpu_count()}"
        )
        print(f"{'':28s}{'s':>8s}{'cases/s':>10s}{'in MB/s':>10s}{'raw MB/s':>10s}")
        for name, s in (
            ("gzip.open().read(), 1 proc", gz_s),
            (f"preprocess, {args.workers} worker(s)", pp_s),
        ):
            print(f"{name:28s}{s:8.2f}{n / s:10.2f}{compressed / MB / s:10.1f}{raw / MB / s:10.1f}")
        print(
            f"preprocess per worker: {raw / MB / pp_s / max(1, min(args.workers, n)):.1f} raw "
            f"MB/s (gzip alone: {raw / MB / gz_s:.1f})"
        )
        stages = stage_breakdown(cases[0].image.parent, work / "one")
        print("one case: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
