"""Shared inputs for the loss tests."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

#: The presets that come with the package (configs/loss/); a user's new config is not tested here.
PACKAGE_PRESETS = (
    "ce",
    "ce_dice",
    "focal_dice",
    "topk_ce_dice",
    "ce_topk_dice",
    "dice",
    "topk_dice",
    "pm_dice",
    "ce_pm_dice",
)


def make_inputs(batch=2, classes=4, spatial=(12, 10), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *spatial, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, classes, (batch, *spatial), generator=gen)
    return logits, target


@pytest.fixture
def inputs():
    return make_inputs()


def monai_batch_dice(logits, target):
    """MONAI's squared soft Dice with sums over the whole batch (TransUNet's reduction)."""
    return DiceLoss(
        softmax=True,
        to_onehot_y=True,
        squared_pred=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        batch=True,
    )(logits, target.unsqueeze(1))
