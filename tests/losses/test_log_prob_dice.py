"""The closed-form Dice of log-probabilities (the topK Dice's selected pixels) against autograd
through the plain formula, gradcheck, and MONAI."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.losses import DiceLoss

from losses.dice import dice_loss_from_scores, log_prob_dice_loss, soft_dice_score

OPTIONS = list(itertools.product([True, False], [True, False], [True, False]))


def inputs(seed: int = 0, shape=(3, 4, 37)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    target = torch.randint(
        0, shape[1] - 1, (shape[0], shape[2]), generator=gen
    )  # last class absent
    return logits.log_softmax(1).detach().requires_grad_(True), target


@pytest.mark.parametrize(("squared", "batch", "include_background"), OPTIONS)
def test_value_and_gradient_equal_autograd_of_the_formula(squared, batch, include_background):
    log_probs, target = inputs()
    ours = log_prob_dice_loss(
        log_probs, target, smooth=1e-5, squared=squared, batch=batch,
        include_background=include_background,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(ours, log_probs)
    x = log_probs.detach().requires_grad_(True)
    scores = soft_dice_score(x.exp(), target, smooth=1e-5, squared=squared, batch=batch)
    ref = dice_loss_from_scores(scores, include_background)
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("squared", "batch", "include_background"), OPTIONS)
def test_gradcheck(squared, batch, include_background):
    log_probs, target = inputs(1, (2, 3, 11))
    torch.autograd.gradcheck(
        lambda x: log_prob_dice_loss(
            x,
            target,
            smooth=1e-3,
            squared=squared,
            batch=batch,
            include_background=include_background,
        ),  # fmt: skip
        (log_probs,),
    )


@pytest.mark.parametrize("batch", [True, False])
def test_equals_monai_dice_of_the_softmax(batch):
    log_probs, target = inputs(2)
    ours = log_prob_dice_loss(log_probs, target, smooth=1e-5, squared=True, batch=batch)
    monai = DiceLoss(
        to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch
    )(log_probs.exp(), target.unsqueeze(1))
    torch.testing.assert_close(ours, monai, rtol=1e-6, atol=1e-7)  # MONAI: float32 one-hot path


def test_no_grad_path_gives_the_same_value():
    log_probs, target = inputs(3)
    with torch.no_grad():
        plain = log_prob_dice_loss(log_probs, target, batch=True)
    torch.testing.assert_close(plain, log_prob_dice_loss(log_probs, target, batch=True).detach())
