"""Training losses of one phase (paper §4.2: binary cross-entropy on logits).

Targets have one channel per network output (phase 2 of the ``kits`` preset: tumor, cyst); each
channel is its own binary problem (independent sigmoids), so BCE works per element.

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
    plain BCE on rare tumor pixels can settle on predicting background everywhere. With several
    outputs (``data.tumor_classes = "tumor,cyst"``) the Dice is taken per output channel and
    averaged, so a rare class weighs as much as a common one; BCE is the mean over all of them.

    Example:
        >>> loss = BceDiceLoss()(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
        >>> round(float(loss), 4)
        1.0197
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits)
        if logits.shape[1] == 1:  # one output: the sums exactly as before per-channel Dice
            dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
            return bce + 1 - dice
        dims = (0, *range(2, logits.ndim))  # everything but the channel
        per_channel = (2 * (prob * target).sum(dims) + 1) / (prob.sum(dims) + target.sum(dims) + 1)
        return bce + 1 - per_channel.mean()


def build_loss(name: str) -> nn.Module:
    """The loss module of a ``train.loss`` value: ``bce`` (the paper's) or ``bce_dice``."""
    return BceDiceLoss() if name == "bce_dice" else nn.BCEWithLogitsLoss()
