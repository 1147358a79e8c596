"""Naive reference implementations written from the formulas, for the tests only.

They loop and sort in the most literal way, share no code with ``losses/`` and serve where no
public implementation exists (topK Dice, PM Dice).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def one_hot(target: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, *S) -> (B, C, *S) float64."""
    return F.one_hot(target, classes).movedim(-1, 1).double()


def dice_from_sums(y, p, smooth=1e-5):
    """Per class soft Dice over the given pixels: y, p (C, M)."""
    return (2 * (y * p).sum(-1) + smooth) / ((y * y).sum(-1) + (p * p).sum(-1) + smooth)


def topk_dice_reference(logits, target, k, smooth=1e-5):
    """1 - mean over images and classes of the Dice of the K% highest-CE pixels of each image."""
    batch, classes = logits.shape[:2]
    scores = []
    for b in range(batch):
        x = logits[b].double().reshape(classes, -1)
        t = target[b].reshape(-1)
        ce = F.cross_entropy(x.T, t, reduction="none")
        keep = max(1, math.floor(k * t.numel() / 100 + 1e-9))
        order = torch.argsort(ce, descending=True)[:keep]
        p = x.softmax(0)[:, order]
        y = F.one_hot(t[order], classes).T.double()
        scores.append(dice_from_sums(y, p, smooth))
    return 1 - torch.stack(scores).mean()


def nnunet_topk_ce(logits, target, k):
    """nnU-Net v2 TopKLoss(k): unreduced CE over the whole batch, int(N*k/100) largest, mean."""
    ce = F.cross_entropy(logits.double(), target, reduction="none").reshape(-1)
    keep = int(ce.numel() * k / 100)
    return ce.sort(descending=True).values[:keep].mean()


def pm_dice_reference(logits, target, gamma, smooth=1e-5):
    """1 - mean_{b,c} (2 sum m y p + s) / (sum m y^2 + sum m p^2 + s), m = |y - p|^gamma."""
    classes = logits.shape[1]
    p = logits.double().softmax(1).flatten(2)
    y = one_hot(target, classes).flatten(2)
    m = (y - p).abs() ** gamma
    dice = (2 * (m * y * p).sum(-1) + smooth) / ((m * y * y).sum(-1) + (m * p * p).sum(-1) + smooth)
    return 1 - dice.mean()
