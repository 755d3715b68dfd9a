"""Losses of every network (2D views, VFN, 3D U-Net), in one place.

Targets are class-index tensors, either (B, *spatial) or (B, 1, *spatial); logits are
(B, K, *spatial). A single-channel output (K = 1) is read as one organ with a sigmoid;
otherwise a softmax over background + classes.

Example:
    >>> loss = DiceCELoss()
    >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_indices(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target as (B, *spatial) int64, whether given with or without a channel axis."""
    if target.ndim == logits.ndim:
        target = target[:, 0]
    return target.long()


def probabilities_and_onehot(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground probabilities and the matching one-hot target, both (B, C_fg, *spatial) float32.

    One output channel: sigmoid, foreground = any label > 0. Several: softmax, background dropped.
    """
    logits = logits.float()
    indices = class_indices(target, logits)
    if logits.shape[1] == 1:
        return torch.sigmoid(logits), (indices > 0).unsqueeze(1).float()
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(indices, logits.shape[1]).movedim(-1, 1).float()
    return probs[:, 1:], onehot[:, 1:]


class SoftDiceLoss(nn.Module):
    """1 − mean soft Dice of the foreground classes (sigmoid for one output channel, else softmax).

    Args:
        batch_dice: pool the batch into one volume per class (stable with small organs)
            instead of averaging per-sample Dice.
        smooth: added to numerator and denominator; keeps empty classes from dividing by zero.
    """

    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice, self.smooth = batch_dice, smooth
        # DDP sets a differentiable sum over ranks so the batch pools every rank's share (vfnet.training.ddp)
        self.pool = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot = probabilities_and_onehot(logits, target)
        axes = (0, *range(2, probs.ndim)) if self.batch_dice else tuple(range(2, probs.ndim))
        intersection = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        if self.pool is not None and torch.is_grad_enabled():
            intersection, denominator = self.pool(intersection), self.pool(denominator)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()


class DiceCELoss(nn.Module):
    """Cross-entropy + soft Dice for softmax outputs (the 2D and 3D U-Nets).

    With a single output channel the cross-entropy becomes binary cross-entropy, so the
    same loss also serves a one-organ sigmoid network.
    """

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = True):
        super().__init__()
        self.weight_ce, self.weight_dice = weight_ce, weight_dice
        self.dice = SoftDiceLoss(batch_dice=batch_dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        indices = class_indices(target, logits)
        if logits.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(logits.float()[:, 0], (indices > 0).float())
        else:
            ce = F.cross_entropy(logits.float(), indices)
        return self.weight_ce * ce + self.weight_dice * self.dice(logits, target)


@torch.no_grad()
def foreground_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard true positives, false positives and false negatives per foreground class, shape (3, C_fg).

    Summed over validation batches they give the pseudo-Dice 2TP / (2TP + FP + FN).
    """
    indices = class_indices(target, logits)
    if logits.shape[1] == 1:
        pred = (logits[:, 0] > 0).long()
        classes, indices = [1], (indices > 0).long()
    else:
        pred = logits.argmax(1)
        classes = range(1, logits.shape[1])
    rows = []
    for c in classes:
        p, t = pred == c, indices == c
        rows.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
    return torch.stack(rows, dim=1).double().cpu()


# the losses a plan's schedule may name ("loss")
LOSSES = {"dice_ce": DiceCELoss, "dice": SoftDiceLoss}


def make_loss(name: str) -> nn.Module:
    """The loss a plan's schedule names: ``dice_ce`` (Dice + cross-entropy) or ``dice`` (soft Dice)."""
    return LOSSES[name]()
