"""What `predict` spends in file IO: reading the CT, writing (and verifying) the label map.

On a phantom case (``--case DIR`` with ``imaging.nii.gz`` + ``segmentation.nii.gz``, or one
written here at ``--shape``), best of ``--reps``:

* ``read_volume`` of the CT and of the label map with each inflater `kidneyseg.compressed`
  can use (zlib's; ISA-L's where ``isal`` is installed, the ``fast`` extra);
* ``write_volume`` of the label map as `Predictor.predict_file` hands it over (a C-ordered
  canonical array mapped back to the file), for the phantom's own layout (axial last) and for
  KiTS's (axial first, axcodes I,P,L);
* SimpleITK's ``WriteImage`` of the label map at its default and at ``compressionLevel=1``, per
  format: seconds and bytes (NIfTI ignores the level).

Example:
    python benchmarks/io_speed.py --shape 300x512x512 --reps 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kidneyseg import compressed
from kidneyseg.data.phantoms import write_cohort
from kidneyseg.io import read_image, read_labels, read_volume, write_volume
from kidneyseg.sitk import to_sitk
from kidneyseg.types import Volume


def best(reps: int, fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Fastest of ``reps`` calls of ``fn(*args, **kwargs)``, in seconds."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def axial_first(volume: Volume, array: np.ndarray) -> Volume:
    """``array`` (canonical) as a KiTS file holds it: axial first, axcodes I,P,L."""
    sz, sy, sx = volume.canonical_spacing
    direction = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0))
    return Volume(np.ascontiguousarray(array[::-1]), (sz, sy, sx), (0.0, 0.0, 0.0), direction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", type=Path, help="folder with imaging/segmentation.nii.gz")
    parser.add_argument("--shape", default="300x512x512", help="phantom shape (z x y x x)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    inflaters = {"zlib": zlib}
    if compressed.INFLATE is not zlib:
        inflaters[compressed.INFLATE.__name__] = compressed.INFLATE
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        case = args.case
        if case is None:
            shape = tuple(int(v) for v in args.shape.lower().split("x"))
            case = write_cohort(tmp / "ct", cases=1, shape=shape, progress=False)[0].image.parent
        ct_path, seg_path = case / "imaging.nii.gz", case / "segmentation.nii.gz"
        ct, seg = read_image(ct_path), read_labels(seg_path)
        kits_ct = write_volume(axial_first(ct, ct.to_canonical()), tmp / "kits_ct.nii.gz")
        print(f"CT {ct.shape} {ct.array.dtype}: {ct_path.stat().st_size / 1e6:.1f} MB")
        for name, module in inflaters.items():
            compressed.INFLATE = module
            for what, path in (("CT", ct_path), ("labels", seg_path)):
                seconds = best(args.reps, read_volume, path)
                print(f"read_volume {what:6s} {name:15s} {seconds:.3f} s")
        labels = np.ascontiguousarray(seg.to_canonical())  # what the cascade hands over
        for layout, image in (("axial last", ct_path), ("axial first (KiTS)", kits_ct)):
            target = read_image(image).from_canonical(labels)
            out = tmp / "labels.nii.gz"
            for name, module in inflaters.items():
                compressed.INFLATE = module
                seconds = best(args.reps, write_volume, target, out)
                print(f"write_volume labels, {layout:18s} read-back {name:15s} {seconds:.3f} s")
        image = to_sitk(seg)
        for suffix in ("nii.gz", "mha", "nrrd"):
            for level in (-1, 1):
                out = tmp / f"level.{suffix}"
                seconds = best(args.reps, sitk.WriteImage, image, str(out), True, level)
                print(
                    f"WriteImage labels .{suffix:6s} level {level:2d}: {seconds:.3f} s, "
                    f"{out.stat().st_size / 1e6:.3f} MB"
                )


if __name__ == "__main__":
    main()
