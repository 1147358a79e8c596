"""SoftDiceLoss and PixelwiseModulatedDiceLoss against MONAI, hand computation and identities."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from losses import PixelwiseModulatedDiceLoss, SoftDiceLoss
from tests.losses.conftest import make_inputs
from tests.losses.reference import pm_dice_reference


def monai_dice(**kwargs):
    return DiceLoss(
        softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5, **kwargs
    )


@pytest.mark.parametrize(
    ("spatial", "ours", "theirs"),
    [
        ((12, 10), {}, {}),
        ((6, 8, 5), {}, {}),
        ((12, 10), {"include_background": False}, {"include_background": False}),
        ((12, 10), {"batch": True}, {"batch": True}),
        (
            (6, 8, 5),
            {"batch": True, "include_background": False},
            {"batch": True, "include_background": False},
        ),
    ],
)
def test_soft_dice_matches_monai(spatial, ours, theirs):
    logits, target = make_inputs(batch=3, classes=5, spatial=spatial)
    expected = monai_dice(**theirs)(logits, target.unsqueeze(1))
    assert torch.allclose(SoftDiceLoss(**ours)(logits, target), expected, atol=1e-5)


def test_soft_dice_not_squared_matches_monai():
    logits, target = make_inputs()
    expected = DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=1e-5, smooth_dr=1e-5)(
        logits, target.unsqueeze(1)
    )
    assert torch.allclose(SoftDiceLoss(squared=False)(logits, target), expected, atol=1e-5)


def test_soft_dice_hand_computed():
    # one image, 2 classes, 2 pixels; logits chosen so that p = (0.5, 0.5) and (~1, ~0)
    logits = torch.tensor([[[0.0, 50.0], [0.0, 0.0]]])  # (B=1, C=2, N=2)
    target = torch.tensor([[0, 1]])
    # class 0: y=(1,0), p=(0.5,1) -> 2*0.5 / (1 + 1.25) ; class 1: y=(0,1), p=(0.5,0) -> 0 / (1+0.25)
    d0 = (2 * 0.5 + 1e-5) / (1 + 1.25 + 1e-5)
    d1 = (0 + 1e-5) / (1 + 0.25 + 1e-5)
    expected = 1 - (d0 + d1) / 2
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_absent_class_gives_finite_loss_and_gradient():
    logits, _ = make_inputs(classes=4)
    target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long)  # only class 0
    logits.requires_grad_(True)
    loss = SoftDiceLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # predicting an absent class is penalised: its gradient pushes those logits down
    assert (logits.grad[:, 1:] > 0).all()


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_pm_dice_matches_formula(gamma):
    logits, target = make_inputs(dtype=torch.float64)
    expected = pm_dice_reference(logits, target, gamma)
    assert torch.allclose(PixelwiseModulatedDiceLoss(gamma=gamma)(logits, target), expected)


def test_pm_dice_per_class_gamma_matches_formula():
    logits, target = make_inputs(classes=3, dtype=torch.float64)
    gammas = [0.0, 1.0, 2.0]
    ours = PixelwiseModulatedDiceLoss(gamma=gammas)(logits, target)
    # per-class gamma: the reference for each class, then the mean over classes
    per_class = []
    for c, g in enumerate(gammas):
        full = 1 - pm_dice_reference(logits, target, g)  # mean over (b, c) of the dice
        p = logits.softmax(1).flatten(2)
        y = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double().flatten(2)
        m = (y - p).abs() ** g
        dice = (2 * (m * y * p).sum(-1) + 1e-5) / ((m * y).sum(-1) + (m * p * p).sum(-1) + 1e-5)
        per_class.append(dice[:, c])
        del full
    expected = 1 - torch.stack(per_class, 1).mean()
    assert torch.allclose(ours, expected)


def test_pm_dice_gamma_zero_is_soft_dice_exactly():
    logits, target = make_inputs()
    assert torch.equal(
        PixelwiseModulatedDiceLoss(gamma=0)(logits, target), SoftDiceLoss()(logits, target)
    )


def test_pm_dice_focuses_on_hard_pixels():
    # a confident correct prediction contributes little once modulated
    logits, target = make_inputs()
    easy = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).float() * 20
    assert PixelwiseModulatedDiceLoss(gamma=2)(easy, target) < SoftDiceLoss()(logits, target)


def test_pm_dice_rejects_wrong_number_of_gammas():
    logits, target = make_inputs(classes=4)
    with pytest.raises(ValueError, match="one `gamma` per class"):
        PixelwiseModulatedDiceLoss(gamma=[1.0, 2.0])(logits, target)
    with pytest.raises(ValueError, match="`gamma` to be >= 0"):
        PixelwiseModulatedDiceLoss(gamma=-1)
