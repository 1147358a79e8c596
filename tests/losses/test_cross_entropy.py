"""CrossEntropyLoss and FocalLoss against torch, MONAI and hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss
from monai.losses import FocalLoss as MonaiFocalLoss
from torch.nn import functional as F

from losses import CrossEntropyLoss, FocalLoss, build_loss
from tests.losses.conftest import make_inputs, monai_batch_dice


def test_cross_entropy_matches_torch(inputs):
    logits, target = inputs
    assert torch.allclose(CrossEntropyLoss()(logits, target), F.cross_entropy(logits, target))
    weight = [0.1, 1.0, 2.0, 0.5]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weight))
    assert torch.allclose(CrossEntropyLoss(weight=weight)(logits, target), expected)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_monai_times_classes(gamma, inputs):
    logits, target = inputs
    # MONAI averages over the class axis too (non-target entries are 0): ours = MONAI * C
    theirs = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma)(
        logits, target.unsqueeze(1)
    )
    assert torch.allclose(
        FocalLoss(gamma=gamma)(logits, target), theirs * logits.shape[1], atol=1e-6
    )


def test_focal_gamma_zero_is_cross_entropy(inputs):
    logits, target = inputs
    assert torch.allclose(FocalLoss(gamma=0)(logits, target), F.cross_entropy(logits, target))


def test_focal_hand_computed_with_alpha():
    logits = torch.tensor([[[math.log(3.0)], [0.0]]])  # p = (0.75, 0.25) at the single pixel
    target = torch.tensor([[1]])
    # -alpha_1 (1 - 0.25)^2 log 0.25
    expected = -0.4 * 0.75**2 * math.log(0.25)
    assert FocalLoss(gamma=2, alpha=[0.6, 0.4])(logits, target).item() == pytest.approx(expected)


def test_ce_dice_matches_monai_dice_ce(inputs):
    logits, target = inputs
    theirs = DiceCELoss(
        softmax=True,
        to_onehot_y=True,
        squared_pred=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=0.5,
        lambda_ce=0.5,
        batch=True,  # the presets' Dice is TransUNet's: sums over the whole batch
    )
    assert torch.allclose(
        build_loss("ce_dice")(logits, target), theirs(logits, target.unsqueeze(1)), atol=1e-5
    )


def test_focal_dice_matches_monai_terms(inputs):
    # MONAI's DiceFocalLoss uses the sigmoid focal loss, so compose its softmax terms instead
    logits, target = inputs
    t = target.unsqueeze(1)
    focal = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)(logits, t)
    dice = monai_batch_dice(logits, target)
    expected = 0.5 * focal * logits.shape[1] + 0.5 * dice
    assert torch.allclose(build_loss("focal_dice")(logits, target), expected, atol=1e-5)


def test_bad_class_weights():
    logits, target = make_inputs(classes=4)
    with pytest.raises(ValueError, match=r"`alpha` to have one value per class \(4\), but got 2"):
        FocalLoss(alpha=[1.0, 2.0])(logits, target)
    with pytest.raises(ValueError, match="`weight` to hold finite values >= 0"):
        CrossEntropyLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="`gamma` to be >= 0"):
        FocalLoss(gamma=-0.5)
