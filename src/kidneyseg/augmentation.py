"""Batched training augmentation (paper §4.1: rotation, flip, random crop, Gaussian noise).

Runs on whatever device the batch is on (the GPU when training there), after the batch has been
transferred, so data-loader workers only copy and normalise slices. One ``affine_grid`` /
``grid_sample`` per batch composes rotation, flip and crop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kidneyseg.config import DataConfig


class BatchAugment(nn.Module):
    """Batched augmentation of ``(image, target)`` pairs on whatever device they are on.

    Per slice: rotation by U(-rotation_degrees, +rotation_degrees), left-right flip with
    ``flip_probability`` (kidneys are bilateral, so a mirrored slice is anatomically plausible),
    a random crop covering U(crop_scale) of the area resized back to the full size, composed
    into one affine map and applied with a single ``grid_sample``; then Gaussian noise of
    ``noise_std`` (z-score units) on the image. All image channels (the 2.5D context slices,
    ``(N, k, H, W)``) share their slice's grid, and the target is resampled with it too
    (bilinear, then 0.5) so it stays aligned; the image borders extend the edge values. The
    noise is drawn independently per pixel, so per channel too.

    Example:
        >>> aug = BatchAugment(DataConfig(rotation_degrees=0, flip_probability=1.0,
        ...                             crop_scale=(1.0, 1.0), noise_std=0.0))
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> bool((aug(x, (x > 7).float())[0] - x.flip(-1)).abs().max() < 1e-4)
        True
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.rotation = math.radians(cfg.rotation_degrees)
        self.flip_probability = cfg.flip_probability
        self.crop_scale = cfg.crop_scale
        self.noise_std = cfg.noise_std

    def forward(
        self, image: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, device = image.shape[0], image.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)

        angle = uniform(-self.rotation, self.rotation)
        flip = torch.where(uniform(0, 1) < self.flip_probability, -1.0, 1.0)
        side = uniform(*self.crop_scale).sqrt()
        # Crop centre, so that the (unrotated) crop stays inside the slice.
        cx, cy = uniform(-1, 1) * (1 - side), uniform(-1, 1) * (1 - side)
        cos, sin = angle.cos() * side, angle.sin() * side
        # Output (x, y) -> input: centre + side * R(angle) @ diag(flip, 1) @ (x, y).
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, cx], 1), torch.stack([sin * flip, cos, cy], 1)], 1
        )
        grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
        image = F.grid_sample(
            image, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        target = F.grid_sample(
            target.to(image.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        target = (target > 0.5).to(image.dtype)
        if self.noise_std > 0:
            noise = torch.randn(image.shape, device=device, generator=generator, dtype=image.dtype)
            image = image + self.noise_std * noise
        return image, target
