"""In-plane resizing of axial slices to and from the model size, shared by training and inference.

Training resizes every canonical axial slice ``(y, x)`` to ``image_size x image_size``
(paper: native 512x512); inference does the same to the CT and resizes the logits back to the
slice's own size, so both sides see exactly the same transform.

Example:
    >>> import torch
    >>> x = torch.zeros(2, 1, 40, 60)
    >>> to_model_size(x, 32).shape, from_model_size(to_model_size(x, 32), (40, 60)).shape
    (torch.Size([2, 1, 32, 32]), torch.Size([2, 1, 40, 60]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_model_size(x: torch.Tensor, size: int, is_label: bool = False) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` slices to ``size x size`` (bilinear; nearest for labels)."""
    if x.shape[-2:] == (size, size):
        return x
    if is_label:
        return F.interpolate(x.float(), size=(size, size), mode="nearest").to(x.dtype)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def from_model_size(logits: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize model outputs ``(N, C, s, s)`` back to a slice's ``(H, W)`` (bilinear)."""
    if tuple(logits.shape[-2:]) == tuple(shape):
        return logits
    return F.interpolate(logits, size=tuple(shape), mode="bilinear", align_corners=False)
