"""Dataset-level (pooled) Dice and IoU per class, for validation during training.

Convention (stated once, used for every `val/dice/*` and `val/iou/*` key):

- Counts are pooled over every pixel of every validation slice (and, under DDP, every process)
  before any ratio is taken: for class ``c``

      TP_c = #{pred == c and target == c},  FP_c = #{pred == c and target != c},
      FN_c = #{pred != c and target == c}

      Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c),   IoU_c = TP_c / (TP_c + FP_c + FN_c).

  This is the "global" (micro over pixels, per class) score, not the mean of per-slice or
  per-case scores; the per-case evaluation of the test stage lives in ``models/metrics.py``.
- A class that is neither present in the targets nor predicted anywhere (``TP + FP + FN == 0``)
  gets NaN, and NaN is excluded from the means (``nanmean``).
- The means (``val/dice/mean``, ``val/iou/mean``) are over the foreground classes
  ``1..C-1``; background (class 0) is reported per class but not averaged in.

The state is a (C, C) confusion matrix of int64 counts (rows: target, columns: prediction),
summed across processes (``dist_reduce_fx="sum"``), so memory does not grow with the number of
samples (unlike torchmetrics' ``DiceScore``, which keeps one entry per sample).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["PooledDiceIoU", "dice_iou_from_confmat"]


def dice_iou_from_confmat(confmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Dice and IoU from a confusion matrix.

    Args:
        confmat: (C, C) counts, rows = target class, columns = predicted class.

    Returns:
        ``(dice, iou)``, each float64 (C,): ``2TP/(2TP+FP+FN)`` and ``TP/(TP+FP+FN)``, NaN where
        ``TP+FP+FN == 0`` (class absent from targets and predictions).

    Raises:
        ValueError: if ``confmat`` is not square 2-D.
    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(
            f"Expected argument `confmat` to be a square (C, C) matrix, but got shape "
            f"{tuple(confmat.shape)}"
        )
    cm = confmat.to(torch.float64)
    tp = cm.diagonal()
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    union = tp + fp + fn
    nan = torch.full_like(tp, float("nan"))
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    return dice, iou


class PooledDiceIoU(Metric):
    """Pooled per-class Dice and IoU over all updates (see the module docstring).

    ``update(preds, target)``: ``preds`` is either class indices (B, *spatial) int or logits /
    probabilities (B, C, *spatial) float (argmax over dim 1); ``target`` is (B, *spatial) int in
    ``[0, C)``.

    ``compute()`` returns ``{"dice": (C,), "iou": (C,), "dice_mean": (), "iou_mean": ()}``
    (float64; means over foreground classes 1..C-1, NaN classes skipped).

    Args:
        num_classes: number of classes C, background included (>= 2).

    Raises:
        ValueError: if ``num_classes < 2``, or on shape / range mismatches in ``update``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Expected argument `num_classes` to be an int >= 2 (background included), "
                f"but got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate the confusion matrix of one batch (see class docstring for shapes)."""
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1 or preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"Expected float `preds` of shape (B, {self.num_classes}, *spatial) matching "
                    f"`target` (B, *spatial), but got {tuple(preds.shape)} and "
                    f"{tuple(target.shape)}"
                )
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(
                f"Expected `preds` and `target` to have the same shape, but got "
                f"{tuple(preds.shape)} and {tuple(target.shape)}"
            )
        target = target.long().reshape(-1)
        preds = preds.long().reshape(-1)
        c = self.num_classes
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
            raise ValueError(
                f"Expected `target` values in [0, {c}), but got range "
                f"[{int(target.min())}, {int(target.max())}]"
            )
        counts = torch.bincount(target * c + preds, minlength=c * c)
        self.confmat += counts.reshape(c, c)

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-class Dice / IoU and their foreground nan-means (see class docstring)."""
        dice, iou = dice_iou_from_confmat(self.confmat)
        return {
            "dice": dice,
            "iou": iou,
            "dice_mean": dice[1:].nanmean(),
            "iou_mean": iou[1:].nanmean(),
        }
