"""The functional core against one-hot formulas, MONAI and literal loops."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from losses.functional import (
    class_sums,
    dice_loss_from_scores,
    num_selected,
    power_sum,
    soft_dice_score,
    top_k_mask,
    weighted_mean,
)
from tests.losses.reference import one_hot


def random_probs(batch=3, classes=4, pixels=29, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, pixels, generator=gen, dtype=torch.float64)
    target = torch.randint(0, classes, (batch, pixels), generator=gen)
    return logits.softmax(1), target, gen


def test_class_sums_are_the_one_hot_sums():
    _, target, gen = random_probs()
    values = torch.rand(target.shape, generator=gen, dtype=torch.float64)
    y = one_hot(target, 4)
    assert torch.equal(class_sums(target, 4), y.sum(-1).float())
    torch.testing.assert_close(class_sums(target, 4, values), (y * values.unsqueeze(1)).sum(-1))


@pytest.mark.parametrize("weight_kind", ["none", "pixel", "pixel_and_class"])
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("batch", [True, False])
def test_soft_dice_score_is_the_one_hot_formula(weight_kind, squared, batch):
    probs, target, gen = random_probs()
    y = one_hot(target, 4)
    w = {
        "none": torch.ones_like(probs),
        "pixel": torch.rand(target.shape, generator=gen, dtype=torch.float64).unsqueeze(1),
        "pixel_and_class": torch.rand(probs.shape, generator=gen, dtype=torch.float64),
    }[weight_kind]
    weight = {"none": None, "pixel": w[:, 0], "pixel_and_class": w}[weight_kind]
    sums = [(w * y * probs).sum(-1), (w * y).sum(-1), (w * probs ** (2 if squared else 1)).sum(-1)]
    if batch:
        sums = [s.sum(0, keepdim=True) for s in sums]
    expected = (2 * sums[0] + 1e-5) / (sums[1] + sums[2] + 1e-5)
    ours = soft_dice_score(probs, target, weight, squared=squared, batch=batch)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("batch", [True, False])
def test_dice_loss_from_scores_equals_monai(batch):
    probs, target, _ = random_probs()
    expected = DiceLoss(
        to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch
    )(probs, target.unsqueeze(1))
    ours = dice_loss_from_scores(soft_dice_score(probs, target, batch=batch))
    torch.testing.assert_close(ours, expected.double(), rtol=1e-6, atol=1e-7)


def test_dice_loss_counts_only_the_given_images():
    scores = torch.tensor([[0.5, 0.7], [0.1, 0.3]])
    counted = torch.tensor([True, False])
    assert dice_loss_from_scores(scores, counted=counted).item() == pytest.approx(0.4)
    assert dice_loss_from_scores(scores, include_background=False).item() == pytest.approx(0.5)
    none = dice_loss_from_scores(scores.requires_grad_(), counted=torch.tensor([False, False]))
    none.backward()
    assert none.item() == 0 and (scores.grad == 0).all()


@pytest.mark.parametrize(("k", "n"), [(10, 100), (32.3, 1000), (64.1, 1000), (0.1, 50)])
def test_num_selected_is_nnunets_expression(k, n):
    assert num_selected(k, n) == max(1, int(n * k / 100))


def test_top_k_mask_keeps_each_rows_share_of_its_valid_pixels():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    valid = torch.rand(3, 40, generator=gen) > 0.3
    valid[2] = True
    mask = top_k_mask(scores, 25, valid)
    for row in range(3):
        kept = scores[row][valid[row]]
        threshold = kept.sort(descending=True).values[num_selected(25, len(kept)) - 1]
        expected = (scores[row] >= threshold) & valid[row]
        assert torch.equal(mask[row].bool(), expected)
    assert top_k_mask(scores, 100, valid) is None and top_k_mask(scores, 100) is None
    assert top_k_mask(scores, 10).sum(1).tolist() == [4, 4, 4]


def test_weighted_mean():
    values = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    assert weighted_mean(values, None).item() == pytest.approx(7 / 3)
    assert weighted_mean(values, torch.tensor([1.0, 0.0, 3.0])).item() == pytest.approx(13 / 4)
    zero = weighted_mean(values, torch.zeros(3))
    zero.backward()
    assert zero.item() == 0 and (values.grad == 0).all()


@pytest.mark.parametrize("weight_shape", [None, (3, 1, 29), (3, 4, 29)])
def test_power_sum_value_and_gradient_are_those_of_the_plain_square_sum(weight_shape):
    probs, _, gen = random_probs()
    weight = None if weight_shape is None else torch.rand(weight_shape, generator=gen).double()
    x = probs.clone().requires_grad_(True)
    r = probs.clone().requires_grad_(True)
    upstream = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    ours = power_sum(x, weight, squared=True)
    plain = (r * r * (1 if weight is None else weight)).sum(-1)
    torch.testing.assert_close(ours, plain, rtol=1e-15, atol=0)
    (ours * upstream).sum().backward()
    (plain * upstream).sum().backward()
    torch.testing.assert_close(x.grad, r.grad, rtol=1e-15, atol=0)
