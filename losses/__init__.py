"""Segmentation losses: topK Dice (the poster's proposal) and every baseline of the paper.

Pure torch. Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits
``(B, C, *spatial)`` and integer targets ``(B, *spatial)``; it returns a scalar computed in
float32 even under autocast. The maths lives in :mod:`losses.functional`; the named presets
are the files ``configs/loss/*.yaml`` (:func:`build_loss`).
"""

from losses.compound import CompoundLoss
from losses.cross_entropy import CrossEntropyLoss, FocalLoss
from losses.dice import PixelwiseModulatedDiceLoss, SoftDiceLoss
from losses.functional import soft_dice_score
from losses.presets import PAPER_LOSSES, PRESETS, build_loss
from losses.topk import TopKCrossEntropyLoss, TopKDiceLoss

__all__ = [
    "PAPER_LOSSES",
    "PRESETS",
    "CompoundLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "PixelwiseModulatedDiceLoss",
    "SoftDiceLoss",
    "TopKCrossEntropyLoss",
    "TopKDiceLoss",
    "build_loss",
    "soft_dice_score",
]
