"""Reading a CT series from a DICOM folder (classic one-slice-per-file series).

How the series is chosen (`read_dicom_series`):

1. Every file under the folder (subfolders included, hidden files and NIfTI/NRRD/MetaImage files
   skipped) whose header GDCM can read is a DICOM file; the rest are ignored.
2. Files are grouped into series by SeriesInstanceUID. Some anonymisers blank the UID to an
   empty string (the TotalSegmentator example series does); such files are grouped by their
   folder, FrameOfReferenceUID, SeriesNumber and SeriesDescription instead.
3. Image series are those whose files carry ImagePositionPatient and ImageOrientationPatient
   (segmentations, structured reports etc. do not). With ``series=UID`` that series is read.
   Otherwise, if exactly one image series has Modality CT, it is read; if there is no CT series
   but exactly one image series, that one is read.
4. Several candidates: a `KidneysegError` lists them (UID, description, number of files,
   folder) and says how to choose: pass that series' own folder, or its UID
   (``series=...`` in Python, ``--series`` on the command line).

Slices are ordered by their position along the slice normal (the cross product of the row and
column directions), never by file name or InstanceNumber, and the spacing between slices comes
from those positions (the SliceThickness tag can differ from it). Pixel values are returned as
real HU (RescaleSlope/RescaleIntercept applied), unclipped. A one-slice series is a 3D volume
with one slice, its slice spacing taken from SpacingBetweenSlices or SliceThickness.

Example:
    >>> ct = read_dicom_series(Path("example_ct_dicom"))  # doctest: +SKIP
    >>> ct.shape, ct.spacing, ct.axcodes  # doctest: +SKIP
    ((512, 512, 20), (0.9765625, 0.9765625, 2.0), ('L', 'P', 'S'))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kidneyseg.errors import KidneysegError
from kidneyseg.filetypes import IMAGE_SUFFIXES, case_id_from_path
from kidneyseg.sitk import from_sitk, quiet_sitk, sitk_error_detail
from kidneyseg.types import Volume

_TAGS = {
    "series_uid": "0020|000e",
    "modality": "0008|0060",
    "description": "0008|103e",
    "series_number": "0020|0011",
    "instance": "0020|0013",
    "frame_of_reference": "0020|0052",
    "position": "0020|0032",
    "orientation": "0020|0037",
    "thickness": "0018|0050",
    "between_slices": "0018|0088",
    "rows": "0028|0010",
    "columns": "0028|0011",
}
#: Relative tolerance on the gaps between slices before a series counts as unevenly spaced.
_GAP_TOLERANCE = 0.1


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder.

    Attributes:
        uid: SeriesInstanceUID ('' when blanked).
        modality: Modality tag, e.g. 'CT'.
        description: SeriesDescription.
        files: the series' files (unsorted).
        is_image: whether every file has a position and orientation (a slice of a volume).
        number: SeriesNumber ('' when absent).
    """

    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]
    is_image: bool
    number: str = ""

    def describe(self, root: Path) -> str:
        """One-line summary for error messages: UID, description, count and folder."""
        folders = {f.parent for f in self.files}
        where = (
            str(next(iter(folders)).relative_to(root)) if len(folders) == 1 else "several folders"
        )
        uid = self.uid or "<blank UID>"
        return (
            f"{uid} ({self.modality or '?'}, '{self.description}', {len(self.files)} files, "
            f"folder '{where}')"
        )


def _read_header(path: Path) -> dict[str, str] | None:
    """The tags of ``_TAGS`` from one file, or None when it is not a readable DICOM file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return {
        name: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
        for name, tag in _TAGS.items()
    }


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split("\\") if v.strip()]
    except ValueError:
        return []


def _scan(folder: Path, recursive: bool = True) -> tuple[dict[Path, dict[str, str]], int]:
    """Headers of the DICOM files under ``folder`` (``recursive=False``: only those directly in
    it), and how many files were looked at."""
    files = sorted(
        p
        for p in (folder.rglob("*") if recursive else folder.iterdir())
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not p.name.lower().endswith(IMAGE_SUFFIXES)
        and p.name.upper() != "DICOMDIR"
    )
    headers = {}
    with quiet_sitk():
        for f in files:
            header = _read_header(f)
            if header is not None:
                headers[f] = header
            elif _has_dicom_magic(f):
                # A DICOM file GDCM cannot parse (cut short, damaged) is not "some other file":
                # skipping it would give a series with a slice missing.
                raise KidneysegError(
                    "DICOM file cannot be read (cut short or damaged); replace or remove it",
                    path=f,
                )
    return headers, len(files)


def _has_dicom_magic(path: Path) -> bool:
    """Whether a file starts like a DICOM Part 10 file ("DICM" after the 128-byte preamble)."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


#: Modalities read as CT. A missing Modality tag (some anonymisers drop it) is left to the
#: value check (`kidneyseg.io.check_hounsfield`).
CT_MODALITIES = ("CT",)


def check_ct_modality(modality: str | None, path: str | Path) -> None:
    """Refuse a DICOM object whose Modality says it is not CT (MR, SEG, RTSTRUCT, PT, ...).

    Example:
        >>> check_ct_modality("MR", "series/")
        Traceback (most recent call last):
        ...
        kidneyseg.errors.KidneysegError: series/: not CT: the DICOM Modality is MR ...
    """
    if modality and modality.strip().upper() not in CT_MODALITIES:
        raise KidneysegError(
            f"not CT: the DICOM Modality is {modality.strip()} (this tool segments CT); "
            "give a CT series",
            path=path,
        )


def find_dicom_series(folder: str | Path, recursive: bool = True) -> list[DicomSeries]:
    """All series under ``folder`` (subfolders too unless ``recursive=False``), grouped as the
    module doc says. A file that starts like DICOM but cannot be read is a `KidneysegError`.

    Example:
        >>> [s.uid for s in find_dicom_series("dcmqi_ct3slice")]  # doctest: +SKIP
        ['1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1', '1.2.276.0.7230...']
    """
    headers, _ = _scan(Path(folder), recursive)
    return _group(headers)


def _group(headers: dict[Path, dict[str, str]]) -> list[DicomSeries]:
    groups: dict[tuple[str, ...], list[Path]] = {}
    for path, h in headers.items():
        if h["series_uid"]:
            key: tuple[str, ...] = (h["series_uid"],)
        else:
            key = (
                "",
                str(path.parent),
                h["frame_of_reference"],
                h["series_number"],
                h["description"],
            )
        groups.setdefault(key, []).append(path)
    out = []
    for key, paths in sorted(groups.items(), key=lambda item: (item[0], str(item[1][0]))):
        first = headers[paths[0]]
        is_image = all(
            len(_floats(headers[p]["position"])) == 3
            and len(_floats(headers[p]["orientation"])) == 6
            for p in paths
        )
        tags = (first["modality"], first["description"])
        out.append(DicomSeries(key[0], *tags, tuple(paths), is_image, first["series_number"]))
    return out


def candidate_series(series: list[DicomSeries]) -> list[DicomSeries]:
    """The series `read_dicom_series` chooses among without ``series=``: the CT image series,
    or every image series when none is CT (rule 3 of the module doc)."""
    images = [s for s in series if s.is_image]
    return [s for s in images if s.modality.upper() == "CT"] or images


def _choose(series: list[DicomSeries], folder: Path, uid: str | None, n_files: int) -> DicomSeries:
    if not series:
        what = "is empty" if n_files == 0 else f"holds no DICOM files ({n_files} other files)"
        raise KidneysegError(
            f"folder {what}; pass a DICOM series folder or an image file", path=folder
        )
    listing = "; ".join(f"[{i}] {s.describe(folder)}" for i, s in enumerate(series, 1))
    if uid is not None:
        chosen = [s for s in series if s.uid == uid]
        if not chosen and uid.strip().isdigit() and 1 <= int(uid) <= len(series):
            chosen = [series[int(uid) - 1]]  # by number: how a blank-UID series is chosen
        if not chosen:
            raise KidneysegError(
                f"no series with UID {uid}; found: {listing} (choose by UID or by number)",
                path=folder,
            )
        if not chosen[0].is_image:
            raise KidneysegError(
                f"series {uid} is not an image series (no slice positions)", path=folder
            )
        return chosen[0]
    candidates = candidate_series(series)
    if not candidates:
        raise KidneysegError(
            f"no DICOM image series with slice positions found; found: {listing}", path=folder
        )
    if len(candidates) > 1:
        raise KidneysegError(
            f"folder holds {len(candidates)} image series: "
            + "; ".join(f"[{series.index(s) + 1}] {s.describe(folder)}" for s in candidates)
            + ". Choose one: pass that series' own folder, its UID or its number [N] "
            "(--series UID or --series N)",
            path=folder,
        )
    return candidates[0]


def _slice_geometry(
    files: tuple[Path, ...], headers: dict[Path, dict[str, str]], folder: Path
) -> tuple[list[Path], np.ndarray, np.ndarray, float]:
    """Files sorted along the slice normal, direction matrix, first position, slice spacing."""
    orientations = np.array([_floats(headers[f]["orientation"]) for f in files])
    if not np.allclose(orientations, orientations[0], atol=1e-4):
        raise KidneysegError(
            "series mixes slice orientations (ImageOrientationPatient differs between files)",
            path=folder,
        )
    sizes = {(headers[f]["rows"], headers[f]["columns"]) for f in files}
    if len(sizes) > 1:
        raise KidneysegError(f"series mixes image sizes (rows, columns): {sorted(sizes)}", folder)
    row, col = orientations[0][:3], orientations[0][3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = np.array([_floats(headers[f]["position"]) for f in files])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    sorted_files = [files[i] for i in order]
    if len(files) > 1:
        gaps = np.diff(along)
        if gaps.min() < 1e-3:
            raise KidneysegError(
                f"two slices lie at the same position ({along[int(np.argmin(gaps))]:.2f} mm along "
                "the slice normal); the folder may hold several acquisitions of one series",
                path=folder,
            )
        spacing = float(np.median(gaps))
        if np.abs(gaps - spacing).max() > _GAP_TOLERANCE * spacing + 1e-3:
            raise KidneysegError(
                f"slices are unevenly spaced ({gaps.min():.3f} to {gaps.max():.3f} mm apart); "
                "a slice may be missing",
                path=folder,
            )
        _check_instance_numbers(sorted_files, headers, folder)
        # Mean gap over the whole stack, robust to rounding of individual positions.
        spacing = float((along[-1] - along[0]) / (len(files) - 1))
    else:
        h = headers[files[0]]
        values = _floats(h["between_slices"]) or _floats(h["thickness"]) or [1.0]
        spacing = abs(values[0]) or 1.0
    direction = np.stack([row, col, normal], axis=1)
    return sorted_files, direction, positions[order[0]], spacing


def _check_instance_numbers(
    files: list[Path], headers: dict[Path, dict[str, str]], folder: Path
) -> None:
    """Refuse a gap in InstanceNumber along the sorted slices: a slice is missing.

    Positions alone miss a slice removed from a stack whose remaining positions still look
    regular (e.g. the last one, or one whose neighbours' positions were rewritten). Checked
    only when every file has an InstanceNumber and they are all different.
    """
    try:
        numbers = [int(float(headers[f]["instance"])) for f in files]
    except ValueError:
        return
    if len(set(numbers)) != len(numbers):
        return
    steps = np.diff(numbers)
    if np.all(steps == 1) or np.all(steps == -1):
        return
    step = 1 if np.count_nonzero(steps == 1) >= np.count_nonzero(steps == -1) else -1
    i = int(np.argmax(steps != step))
    raise KidneysegError(
        f"slice numbers (InstanceNumber) jump from {numbers[i]} ({files[i].name}) to "
        f"{numbers[i + 1]} ({files[i + 1].name}): a slice may be missing",
        path=folder,
    )


def read_dicom_series(folder: str | Path, series: str | None = None) -> Volume:
    """Read the CT series in ``folder`` (or a single DICOM file) into a `Volume`.

    See the module doc for how the series is chosen, ordered and spaced.

    Args:
        folder: a folder holding the series (searched recursively), or one DICOM file.
        series: SeriesInstanceUID to read when the folder holds several series.

    Returns:
        Volume indexed (column, row, slice) in LPS: axial axis 2 for an axial series, HU values.

    Raises:
        KidneysegError: empty folder, no DICOM image series, several series (listed), mixed or
            unevenly spaced slices, unreadable pixel data.

    Example:
        >>> ct = read_dicom_series(Path("dcmqi_ct3slice/ct-3slice"))  # doctest: +SKIP
        >>> ct.shape, ct.spacing[2]  # doctest: +SKIP
        ((512, 512, 3), 1.0)
    """
    import SimpleITK as sitk

    root = Path(folder)
    if not root.exists():
        raise KidneysegError("no such file or folder", path=root)
    if root.is_file():
        return _read_dicom_file(root)
    headers, n_files = _scan(root)
    chosen = _choose(_group(headers), root, series, n_files)
    files, direction, origin, slice_spacing = _slice_geometry(chosen.files, headers, root)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    try:
        with quiet_sitk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise KidneysegError(
            f"cannot read the series' pixel data: {sitk_error_detail(exc)}", path=root
        ) from exc
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    try:
        volume = from_sitk(image, root.name)
    except ValueError as exc:
        raise KidneysegError(str(exc), path=root) from exc
    if volume.shape[2] != len(files):
        raise KidneysegError(
            f"expected {len(files)} slices, GDCM read {volume.shape[2]} (multi-frame files "
            "inside a series are not supported)",
            path=root,
        )
    # Geometry from the headers, not from ITK's reader: the slice spacing must come from the
    # positions (ITK falls back to SliceThickness for one slice and on some tag layouts).
    return Volume(
        array=volume.array,
        spacing=(volume.spacing[0], volume.spacing[1], slice_spacing),
        origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=tuple(tuple(float(v) for v in r) for r in direction),
        case_id=root.name,
        metadata={
            "series_uid": chosen.uid,
            "modality": chosen.modality,
            "series_description": chosen.description,
            "files": str(len(files)),
            "slice_thickness_tag_mm": headers[files[0]]["thickness"],
        },
    )


def series_files(folder: str | Path, series: str | None = None) -> list[Path]:
    """The files of the series `read_dicom_series` reads, in the order of its slices.

    What a DICOM Segmentation references (`kidneyseg.dicom_seg`). A single DICOM file is
    returned as is.

    Example:
        >>> [p.name for p in series_files("dcmqi_ct3slice/ct-3slice")]  # doctest: +SKIP
        ['01.dcm', '02.dcm', '03.dcm']
    """
    root = Path(folder)
    if root.is_file():
        return [root]
    headers, n_files = _scan(root)
    chosen = _choose(_group(headers), root, series, n_files)
    files, _, _, _ = _slice_geometry(chosen.files, headers, root)
    return files


def _read_dicom_file(path: Path) -> Volume:
    """One DICOM file: a single slice (3D, one slice) or a multi-frame object."""
    import SimpleITK as sitk

    header = _read_header(path)
    if header is None:
        raise KidneysegError("not a readable DICOM file", path=path)
    try:
        with quiet_sitk():
            image = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
    except RuntimeError as exc:
        raise KidneysegError(f"cannot read DICOM file: {sitk_error_detail(exc)}", path) from exc
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    try:
        volume = from_sitk(image, case_id_from_path(path))
    except ValueError as exc:
        raise KidneysegError(str(exc), path=path) from exc
    spacing = volume.spacing
    if volume.shape[2] == 1:
        values = _floats(header["between_slices"]) or _floats(header["thickness"])
        if values and values[0] > 0:
            spacing = (spacing[0], spacing[1], values[0])
    meta = {k: header[k] for k in ("series_uid", "modality", "description")}
    return replace(volume, spacing=spacing, metadata={**meta, "files": "1"})
