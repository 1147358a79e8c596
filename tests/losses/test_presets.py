"""The poster's presets use TransUNet's Dice (sums over the whole batch, background included).

References: TransUNet's ``utils.DiceLoss`` re-derived in ``tests/losses/reference.py`` and
MONAI's ``DiceLoss(batch=True)``; neither shares code with ``losses/``.
"""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss
from monai.losses import FocalLoss as MonaiFocalLoss
from torch.nn import functional as F

from losses import SoftDiceLoss, TopKCrossEntropyLoss, TopKDiceLoss, build_loss
from tests.losses.conftest import make_inputs, monai_batch_dice
from tests.losses.reference import (
    nnunet_topk_ce,
    topk_dice_batch_reference,
    topk_dice_reference,
    transunet_dice_loss,
)

SHAPES = [(4, 9, (16, 12)), (3, 4, (5, 6, 4)), (1, 3, (8, 8))]


@pytest.mark.parametrize(("batch", "classes", "spatial"), SHAPES)
def test_transunet_reference_agrees_with_monai_batch_dice(batch, classes, spatial):
    # two independent derivations of TransUNet's DiceLoss
    logits, target = make_inputs(batch=batch, classes=classes, spatial=spatial, dtype=torch.float64)
    assert torch.allclose(transunet_dice_loss(logits, target), monai_batch_dice(logits, target))


@pytest.mark.parametrize(("batch", "classes", "spatial"), SHAPES)
def test_ce_dice_is_transunet_loss(batch, classes, spatial):
    logits, target = make_inputs(batch=batch, classes=classes, spatial=spatial)
    ce = F.cross_entropy(logits.double(), target)
    expected = 0.5 * ce + 0.5 * transunet_dice_loss(logits, target)
    loss_fn = build_loss("ce_dice")
    assert torch.allclose(loss_fn(logits, target).double(), expected, atol=1e-6, rtol=0)
    assert torch.allclose(
        loss_fn.last_values["dice"].double(), monai_batch_dice(logits, target).double(), atol=1e-6
    )


@pytest.mark.parametrize("preset", ["ce_dice", "focal_dice", "topk_ce_dice"])
def test_dice_term_of_every_poster_preset_is_transunet_dice(preset):
    logits, target = make_inputs(batch=4, classes=5, spatial=(12, 10), dtype=torch.float64)
    loss_fn = build_loss(preset)
    total = loss_fn(logits, target)
    dice = transunet_dice_loss(logits, target)
    assert torch.allclose(loss_fn.last_values["dice"], dice)
    other = {
        "ce_dice": F.cross_entropy(logits, target),
        # MONAI's softmax focal loss averages over the class axis too: times C is ours
        "focal_dice": MonaiFocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)(
            logits, target.unsqueeze(1)
        )
        * 5,
        "topk_ce_dice": torch.stack(
            [nnunet_topk_ce(logits[b : b + 1], target[b : b + 1], 10) for b in range(4)]
        ).mean(),
    }[preset]
    assert torch.allclose(total, 0.5 * other + 0.5 * dice)


@pytest.mark.parametrize(("batch", "classes", "spatial"), SHAPES)
def test_ce_topk_dice_k100_is_transunet_ce_plus_dice(batch, classes, spatial):
    logits, target = make_inputs(batch=batch, classes=classes, spatial=spatial, dtype=torch.float64)
    expected = 0.5 * F.cross_entropy(logits, target) + 0.5 * transunet_dice_loss(logits, target)
    value = build_loss("ce_topk_dice", topk_dice__k=100)(logits, target)
    assert torch.allclose(value, expected)


@pytest.mark.parametrize("k", [1, 10, 37.5])
@pytest.mark.parametrize(("batch", "classes", "spatial"), SHAPES)
def test_ce_topk_dice_selects_per_image_and_pools_over_the_batch(k, batch, classes, spatial):
    logits, target = make_inputs(batch=batch, classes=classes, spatial=spatial, dtype=torch.float64)
    loss_fn = build_loss("ce_topk_dice", topk_dice__k=k)
    total = loss_fn(logits, target)
    expected_topk = topk_dice_batch_reference(logits, target, k)
    assert torch.allclose(loss_fn.last_values["topk_dice"], expected_topk)
    assert torch.allclose(total, 0.5 * F.cross_entropy(logits, target) + 0.5 * expected_topk)
    # the selection is per image: each image keeps its own K% of pixels
    mask = loss_fn.terms["topk_dice"].hard_pixel_mask(logits, target)
    n = target[0].numel()
    assert mask.reshape(batch, -1).sum(1).tolist() == [max(1, int(k * n / 100 + 1e-9))] * batch


def test_per_image_reduction_stays_available():
    logits, target = make_inputs(batch=3, classes=4, dtype=torch.float64)
    per_image = DiceLoss(
        softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5
    )(logits, target.unsqueeze(1))
    loss_fn = build_loss("ce_dice", dice__batch=False)
    loss_fn(logits, target)
    assert torch.allclose(loss_fn.last_values["dice"], per_image)
    assert torch.allclose(build_loss("dice", batch=False)(logits, target), per_image)
    topk = build_loss("ce_topk_dice", batch=False)
    topk(logits, target)
    assert torch.allclose(topk.last_values["topk_dice"], topk_dice_reference(logits, target, 10))
    # and the two reductions differ on a batch whose images differ
    assert not torch.allclose(per_image, transunet_dice_loss(logits, target))


def test_preset_terms_have_transunet_settings():
    for preset, term in [
        ("ce_dice", "dice"),
        ("focal_dice", "dice"),
        ("topk_ce_dice", "dice"),
        ("ce_topk_dice", "topk_dice"),
    ]:
        dice = build_loss(preset).terms[term]
        assert isinstance(dice, SoftDiceLoss | TopKDiceLoss)
        assert (dice.batch, dice.include_background, dice.squared, dice.smooth) == (
            True,
            True,
            True,
            1e-5,
        )
    topk_dice = build_loss("ce_topk_dice").terms["topk_dice"]
    assert (topk_dice.k, topk_dice.pool, topk_dice.difficulty) == (10.0, "image", "ce")
    topk_ce = build_loss("topk_ce_dice").terms["topk_ce"]
    assert isinstance(topk_ce, TopKCrossEntropyLoss) and topk_ce.k == 10.0


def test_ce_topk_dice_with_ignore_index_matches_reference():
    logits, target = make_inputs(batch=3, classes=4, spatial=(10, 10), dtype=torch.float64)
    target[0, :3] = 255
    target[2] = 255  # an image with no valid pixel adds nothing to the pooled sums
    loss_fn = build_loss("ce_topk_dice", ignore_index=255)
    loss_fn(logits, target)
    expected = topk_dice_batch_reference(logits, target, 10, ignore_index=255)
    assert torch.allclose(loss_fn.last_values["topk_dice"], expected)
    dice_fn = build_loss("ce_dice", ignore_index=255)
    dice_fn(logits, target)
    expected = topk_dice_batch_reference(logits, target, 100, ignore_index=255)
    assert torch.allclose(dice_fn.last_values["dice"], expected)
