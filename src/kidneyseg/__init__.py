"""kidneyseg: kidney and kidney-tumor segmentation in abdominal CT.

The two-phase 2D U-Net/ResNet34 cascade (kidney region, then tumor on the CT
masked by the kidney region), trained on KiTS21.

Example:
    >>> from kidneyseg.io import read_volume  # doctest: +SKIP
    >>> vol = read_volume("case_00000/imaging.nii.gz")  # doctest: +SKIP
"""

__version__ = "0.1.0"
