"""DICOM Segmentation objects of a prediction (highdicom), for PACS, 3D Slicer and OHIF.

`write_dicom_seg` writes one binary Segmentation (SOP class 1.2.840.10008.5.1.4.1.1.66.4) that
references the source CT series and each of its frames (slices):

* segments, coded in SNOMED CT: 1 "Kidney" (category Anatomical Structure 91723000, type
  Kidney 64033007), 2 "Kidney tumor" (Morphologically Abnormal Structure 49755003, Neoplasm
  108369006, anatomic region Kidney), 3 "Kidney cyst" (49755003, Cyst 367643001, region Kidney)
  when the model predicts cysts (``data.tumor_classes = "tumor,cyst"``, even if this case has
  none) or the label map holds one. Neoplasm and Cyst are both in DICOM CID 7159 "Lesion
  Segmentation Type" (a morphologic abnormality, located by the anatomic region), rather than
  the disorder "Cyst of kidney" (36171008), which is a finding, not a segmentable structure.
  Segment k holds the voxels of label k, so segments and label ids agree (segment 1 is kidney
  tissue alone, as label 1);
* algorithm identification: type AUTOMATIC, name ``kidneyseg``, family Artificial
  Intelligence, version ``<package version> model <model id>``, parameters: model id, device,
  precision; the model id also in DeviceSerialNumber and the package version in
  SoftwareVersions;
* one frame per source slice that holds the segment (empty frames omitted), in the source's
  geometry: frame k of the label volume (`kidneyseg.dicom.read_dicom_series` indexes it
  column, row, slice) is the pixel array of the k-th slice of `kidneyseg.dicom.series_files`.

Real series have quirks: JPEG 2000 pixel data (only the headers are read here), and UIDs
blanked by an anonymiser (Study, Series, SOP Instance, Frame of Reference). Blank UIDs are
replaced by valid UIDs derived from the file contents (the same series always gets the same
ones) and a warning says so: the SEG is then valid but a PACS holding the original series
cannot match it.

Example:
    >>> write_dicom_seg(labels, "dicom/ct/", "out/ct.seg.dcm", provenance)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.dicom import series_files
from kidneyseg.errors import KidneysegError
from kidneyseg.types import CYST, KIDNEY, TUMOR, Volume
from kidneyseg.utils import atomic_path, package_version

#: (label id, segment label, category, property type, anatomic region or None), as SNOMED CT
#: code value and meaning.
SEGMENTS = (
    (KIDNEY, "Kidney", ("91723000", "Anatomical Structure"), ("64033007", "Kidney"), None),
    (
        TUMOR,
        "Kidney tumor",
        ("49755003", "Morphologically Abnormal Structure"),
        ("108369006", "Neoplasm"),
        ("64033007", "Kidney"),
    ),
    (
        CYST,
        "Kidney cyst",
        ("49755003", "Morphologically Abnormal Structure"),
        ("367643001", "Cyst"),
        ("64033007", "Kidney"),
    ),
)
#: Recommended display colours (RGB) per label id, as the preview and viewer draw them.
COLORS = {KIDNEY: (255, 176, 0), TUMOR: (230, 25, 25), CYST: (40, 140, 255)}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


class BlankUIDWarning(UserWarning):
    """The source series had blank UIDs; the SEG references generated ones."""


def _source_datasets(files: list[Path]) -> list[Any]:
    """The source headers (no pixel data), blank UIDs replaced by derived valid ones."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet).strip():
            del ds.SpecificCharacterSet  # blank = the default repertoire (highdicom refuses '')
        if not str(ds.get("SOPClassUID", "")).strip():
            ds.SOPClassUID = CT_IMAGE_STORAGE  # blanked too; the series was read as CT
    blank = sorted({t for ds in datasets for t in _UID_TAGS if not str(ds.get(t, "")).strip()})
    if blank:
        # Derived from the headers, so one series always gets the same UIDs.
        seed = hashlib.sha256(b"".join(f.read_bytes()[:4096] for f in files[:3])).hexdigest()
        shared = {t: generate_uid(entropy_srcs=[seed, t]) for t in blank if t != "SOPInstanceUID"}
        for i, ds in enumerate(datasets):
            for tag in blank:
                if tag == "SOPInstanceUID":
                    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, tag, str(i)])
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                else:
                    setattr(ds, tag, shared[tag])
        warnings.warn(
            f"{files[0].parent}: the source series has blank {', '.join(blank)}; the DICOM SEG "
            "references generated UIDs, which a PACS holding the original series cannot match",
            BlankUIDWarning,
            stacklevel=3,
        )
    return datasets


def _descriptions(present: list[int], prov: Mapping[str, str]) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.coding import Code

    algorithm = hd.AlgorithmIdentificationSequence(
        name="kidneyseg",
        family=Code("123110", "DCM", "Artificial Intelligence"),
        version=f"{prov.get('kidneyseg_version', package_version())} model "
        f"{prov.get('model_id', 'unknown')}",
        parameters={
            k: str(prov[k]) for k in ("model_id", "device", "precision", "backend") if k in prov
        },
    )
    out = []
    for number, (label, name, category, kind, region) in enumerate(
        (s for s in SEGMENTS if s[0] in present), start=1
    ):
        lab = hd.color.CIELabColor(*_cielab(COLORS[label]))
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=Code(*category[:1], "SCT", category[1]),
                segmented_property_type=Code(*kind[:1], "SCT", kind[1]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=None if region is None else [Code(region[0], "SCT", region[1])],
                display_color=lab,
            )
        )
    return out


def _cielab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (0-255) to CIELab (D65), for the recommended display colour."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    v = xyz @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(v > 216 / 24389, np.cbrt(v), (24389 / 27 * v + 16) / 116)
    return (
        float(np.clip(116 * f[1] - 16, 0, 100)),
        float(np.clip(500 * (f[0] - f[1]), -128, 127)),
        float(np.clip(200 * (f[1] - f[2]), -128, 127)),
    )


def write_dicom_seg(
    labels: Volume,
    source: str | Path,
    path: str | Path,
    prov: Mapping[str, str],
    series: str | None = None,
    cysts: bool = False,
) -> Path:
    """Write the DICOM SEG of ``labels`` (predicted on the DICOM series ``source``) atomically.

    Args:
        labels: the label map in the series' geometry (as `read_dicom_series` returned it).
        source: the DICOM series folder (or single file) the CT was read from.
        path: the SEG file to write (``<name>.seg.dcm``).
        prov: the provenance (`kidneyseg.formats.pred_dir.provenance`).
        series: the series' UID or number when the folder holds several.
        cysts: the model predicts cysts: a "Kidney cyst" segment even when ``labels`` holds
            none (a cyst in ``labels`` always gets one).

    Raises:
        KidneysegError: the label map does not match the series (frames, size).
    """
    files = series_files(source, series)
    datasets = _source_datasets(files)
    arr = np.asarray(labels.array, dtype=np.uint8)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if arr.shape != (cols, rows, len(datasets)):
        raise KidneysegError(
            f"label map shape {arr.shape} does not match the series ({cols} columns, {rows} "
            f"rows, {len(datasets)} slices)",
            path=source,
        )
    present = [k for k in (KIDNEY, TUMOR, CYST) if k != CYST or cysts or bool((arr == CYST).any())]
    frames = np.transpose(arr, (2, 1, 0))  # (slice, row, column), one frame per source file
    masks = np.stack([frames == k for k in present], axis=-1)
    with warnings.catch_warnings():
        # pydicom's note on one-component person names of anonymised sources: not ours to fix.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = _segmentation(datasets, masks, present, prov)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def _segmentation(
    datasets: list[Any], masks: np.ndarray, present: list[int], prov: Mapping[str, str]
) -> Any:
    import highdicom as hd
    from pydicom.uid import generate_uid

    version = prov.get("kidneyseg_version", package_version())
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(present, prov),
        series_instance_uid=generate_uid(),
        series_number=int(datasets[0].get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="kidneyseg",
        manufacturer_model_name="kidneyseg two-phase 2D U-Net",
        software_versions=version,
        device_serial_number=str(prov.get("model_id", "unknown")),
        series_description="kidneyseg kidney and tumor segmentation"
        if CYST not in present
        else "kidneyseg kidney, tumor and cyst segmentation",
        content_label="KIDNEYSEG",
        content_description=f"kidneyseg {version}, model {prov.get('model_id', 'unknown')}",
        omit_empty_frames=True,
    )
