"""File-name conventions of the image formats: suffixes read and written, case ids from paths.

The lowest layer of the IO stack (`kidneyseg.io` and `kidneyseg.dicom` both import it); it
imports nothing of the package, and nothing heavy.

Example:
    >>> is_image_file(Path("case_00000/imaging.nii.gz")), case_id_from_path("p/case_00007.mha")
    (True, 'case_00007')
"""

from __future__ import annotations

from pathlib import Path

#: File endings read as single image files.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: File endings `kidneyseg.io.write_volume` writes: single-file formats only, so the write can be
#: atomic (``.nhdr``/``.mhd`` put the voxels in a second file that a rename would not carry along).
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: File endings read as a single DICOM file.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: File endings of NIfTI files (a subset of `IMAGE_SUFFIXES`).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: The written ending that keeps each read format: ``.nhdr``/``.mhd`` (detached voxel data) become
#: their single-file twins ``.nrrd``/``.mha``.
SAME_FORMAT_SUFFIX = {
    ".nii.gz": ".nii.gz",
    ".nii": ".nii",
    ".nrrd": ".nrrd",
    ".nhdr": ".nrrd",
    ".mha": ".mha",
    ".mhd": ".mha",
}


def is_image_file(path: Path) -> bool:
    """True when ``path``'s name ends with a supported image-file suffix.

    Example:
        >>> is_image_file(Path("case_1/imaging.nii.gz")), is_image_file(Path("notes.txt"))
        (True, False)
    """
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def image_suffix(path: str | Path) -> str | None:
    """The image-file ending of ``path`` in lower case (`IMAGE_SUFFIXES`), or None.

    Example:
        >>> image_suffix("a/CT.NII.GZ"), image_suffix("scans/IM0001")
        ('.nii.gz', None)
    """
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def case_id_from_path(path: str | Path) -> str:
    """A case name from a path: the file name without its image suffix, or the folder name.

    Example:
        >>> case_id_from_path("preds/case_00007.nii.gz")
        'case_00007'
    """
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
