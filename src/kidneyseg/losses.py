"""Training losses of one phase (paper §4.2: binary cross-entropy on logits).

Example:
    >>> type(build_loss("bce")).__name__, type(build_loss("bce_dice")).__name__
    ('BCEWithLogitsLoss', 'BceDiceLoss')
"""

from __future__ import annotations

import torch
from torch import nn


class BceDiceLoss(nn.Module):
    """BCE with logits plus soft Dice over the whole batch (nnU-Net's "batch Dice").

    Not the paper's loss (that is plain BCE, the default): an option for short runs, where
    plain BCE on rare tumor pixels can settle on predicting background everywhere.

    Example:
        >>> loss = BceDiceLoss()(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
        >>> round(float(loss), 4)
        1.0197
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits)
        dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        return bce + 1 - dice


def build_loss(name: str) -> nn.Module:
    """The loss module of a ``train.loss`` value: ``bce`` (the paper's) or ``bce_dice``."""
    return BceDiceLoss() if name == "bce_dice" else nn.BCEWithLogitsLoss()
