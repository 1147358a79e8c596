"""Naive reference implementations written from the formulas, for the tests only.

They loop and sort in the most literal way, share no code with ``losses/`` and serve where no
public implementation exists (topK Dice, PM Dice).
"""

from __future__ import annotations

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
        keep = max(1, int(t.numel() * k / 100))
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


def transunet_dice_loss(logits, target, smooth=1e-5):
    """TransUNet's ``utils.DiceLoss(n_classes)(logits, target, softmax=True)``, re-derived.

    Softmax over classes, one-hot target; for each class c (background included) the sums run
    over the WHOLE batch and every pixel: ``1 - (2 sum p_c y_c + s) / (sum p_c^2 + sum y_c^2 + s)``;
    the loss is the sum of these over classes times ``1/C``.
    """
    classes = logits.shape[1]
    p = logits.double().softmax(1)
    y = one_hot(target, classes)
    total = 0.0
    for c in range(classes):
        pc, yc = p[:, c], y[:, c]
        intersect = (pc * yc).sum()
        dice = (2 * intersect + smooth) / ((pc * pc).sum() + (yc * yc).sum() + smooth)
        total = total + (1 - dice) * 1.0
    return total / classes


def topk_dice_batch_reference(logits, target, k, smooth=1e-5, ignore_index=None):
    """topK Dice with the poster's per-image selection and TransUNet's batch-pooled sums.

    For each image the ``max(1, floor(k N_b / 100))`` valid pixels of highest CE are selected
    (``N_b`` the image's valid pixels); the per-class sums of all selected pixels of the batch
    enter one Dice ratio per class; the loss is ``1 - mean_c``.
    """
    batch, classes = logits.shape[:2]
    ys, ps = [], []
    for b in range(batch):
        x = logits[b].double().reshape(classes, -1)
        t = target[b].reshape(-1)
        if ignore_index is not None:
            keep_px = t != ignore_index
            x, t = x[:, keep_px], t[keep_px]
        if t.numel() == 0:
            continue
        ce = F.cross_entropy(x.T, t, reduction="none")
        keep = max(1, int(t.numel() * k / 100))
        order = torch.argsort(ce, descending=True)[:keep]
        ps.append(x.softmax(0)[:, order])
        ys.append(F.one_hot(t[order], classes).T.double())
    return 1 - dice_from_sums(torch.cat(ys, 1), torch.cat(ps, 1), smooth).mean()
