"""Segmentation losses: topK Dice (the poster's proposal) and every baseline of the paper.

Torch, no Lightning, data or logging; on the CPU the topK ranking runs in a small C kernel
built on first use (:mod:`losses.native`, with ``torch.topk`` as the fallback). Every loss is called as ``loss(logits, target)``
with logits ``(B, C, *spatial)`` and integer targets ``(B, *spatial)``, returns a scalar and
computes in float32 even under autocast.
"""

from losses.base import SegmentationLoss
from losses.compound import CompoundLoss
from losses.cross_entropy import CrossEntropyLoss, FocalLoss
from losses.dice import PixelwiseModulatedDiceLoss, SoftDiceLoss, soft_dice_score
from losses.presets import PAPER_LOSSES, PRESETS, build_loss
from losses.topk import TopKCrossEntropyLoss, TopKDiceLoss

__all__ = [
    "PAPER_LOSSES",
    "PRESETS",
    "CompoundLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "PixelwiseModulatedDiceLoss",
    "SegmentationLoss",
    "SoftDiceLoss",
    "TopKCrossEntropyLoss",
    "TopKDiceLoss",
    "build_loss",
    "soft_dice_score",
]
