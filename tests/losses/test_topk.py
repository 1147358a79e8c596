"""TopKDiceLoss and TopKCrossEntropyLoss: naive references, nnU-Net's TopK, identities."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from losses import SoftDiceLoss, TopKCrossEntropyLoss, TopKDiceLoss
from losses.functional import num_selected
from tests.losses.conftest import make_inputs
from tests.losses.reference import nnunet_topk_ce, topk_dice_reference


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(10, 100, 10), (10, 30, 3), (10, 5, 1), (0.1, 50, 1), (100, 7, 7), (33.3, 10, 3)],
)
def test_number_selected(k, n, expected):
    assert num_selected(k, n) == expected


@pytest.mark.parametrize("k", [1, 10, 25, 50, 99])
@pytest.mark.parametrize("spatial", [(12, 10), (4, 6, 5)])
def test_topk_dice_matches_naive_reference(k, spatial):
    logits, target = make_inputs(batch=3, classes=4, spatial=spatial, dtype=torch.float64)
    expected = topk_dice_reference(logits, target, k)
    assert torch.allclose(TopKDiceLoss(k=k)(logits, target), expected, atol=1e-10)


@pytest.mark.parametrize("pool", ["image", "batch", "class"])
def test_k100_is_soft_dice_exactly(pool, inputs):
    logits, target = inputs
    assert torch.equal(
        TopKDiceLoss(k=100, pool=pool)(logits, target), SoftDiceLoss()(logits, target)
    )


def test_abs_error_ranks_like_ce():
    logits, target = make_inputs(dtype=torch.float64)
    a = TopKDiceLoss(k=20, difficulty="ce")(logits, target)
    b = TopKDiceLoss(k=20, difficulty="abs_error")(logits, target)
    assert torch.allclose(a, b)


def test_hand_computed_topk_dice():
    # 1 image, 2 classes, 4 pixels; k=50 keeps the 2 pixels of highest CE
    logits = torch.tensor([[[4.0, 0.0, 0.0, -3.0], [0.0, 0.0, 2.0, 0.0]]])
    target = torch.tensor([[0, 0, 0, 1]])
    # CE: pixel0 small, pixel1 log2, pixel2 large (class 1 predicted), pixel3 small -> keep 1, 2
    p = logits[0].softmax(0)[:, [1, 2]]
    y = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    dice = (2 * (y * p).sum(1) + 1e-5) / ((y * y).sum(1) + (p * p).sum(1) + 1e-5)
    assert TopKDiceLoss(k=50)(logits, target).item() == pytest.approx(1 - dice.mean().item())


def test_batch_pool_ranks_over_the_batch():
    # image 0 is all easy, image 1 all hard: the batch pool selects only from image 1
    target = torch.zeros(2, 10, dtype=torch.long)
    logits = torch.zeros(2, 2, 10)
    logits[0, 0] = 5.0  # easy
    logits[1, 1] = 5.0  # hard (predicts class 1, truth 0)
    mask = TopKDiceLoss(k=50, pool="batch").hard_pixel_mask(logits, target)
    assert mask[1].all() and not mask[0].any()
    mask = TopKDiceLoss(k=50, pool="image").hard_pixel_mask(logits, target)
    assert mask.sum(1).tolist() == [5, 5]


def test_class_pool_selects_per_class():
    logits, target = make_inputs(batch=1, classes=3, spatial=(20,), dtype=torch.float64)
    loss = TopKDiceLoss(k=10, pool="class")(logits, target)
    # reference: per class c the 2 pixels of largest |y_c - p_c|
    p = logits[0].softmax(0)
    y = F.one_hot(target[0], 3).T.double()
    dices = []
    for c in range(3):
        idx = torch.argsort((y[c] - p[c]).abs(), descending=True)[:2]
        yc, pc = y[c, idx], p[c, idx]
        dices.append((2 * (yc * pc).sum() + 1e-5) / ((yc * yc).sum() + (pc * pc).sum() + 1e-5))
    assert torch.allclose(loss, 1 - torch.stack(dices).mean())


def test_selection_carries_no_gradient_and_unselected_pixels_get_none():
    logits, target = make_inputs(batch=1, classes=3, spatial=(40,))
    logits.requires_grad_(True)
    loss_fn = TopKDiceLoss(k=10)
    loss_fn(logits, target).backward()
    selected = loss_fn.hard_pixel_mask(logits, target)
    assert selected.sum() == 4
    assert (logits.grad[0][:, ~selected[0]] == 0).all()
    assert (logits.grad[0][:, selected[0]] != 0).any()


def test_k_schedule_lowers_k_linearly():
    loss_fn = TopKDiceLoss(k=10, k_start=100, k_schedule_steps=90)
    assert loss_fn.current_k == 100
    loss_fn.set_step(45)
    assert loss_fn.current_k == pytest.approx(55)
    loss_fn.set_step(1000)
    assert loss_fn.current_k == 10
    logits, target = make_inputs(dtype=torch.float64)
    loss_fn.set_step(0)
    assert torch.equal(loss_fn(logits, target), SoftDiceLoss()(logits, target))
    loss_fn.set_step(90)
    assert torch.allclose(loss_fn(logits, target), topk_dice_reference(logits, target, 10))


@pytest.mark.parametrize("k", [1, 10, 30])
def test_topk_ce_batch_pool_equals_nnunet_topk(k):
    logits, target = make_inputs(batch=3, classes=4, dtype=torch.float64)
    expected = nnunet_topk_ce(logits, target, k)
    assert torch.allclose(TopKCrossEntropyLoss(k=k, pool="batch")(logits, target), expected)


def test_topk_ce_image_pool_averages_per_image_means():
    logits, target = make_inputs(batch=2, classes=3, dtype=torch.float64)
    per_image = [nnunet_topk_ce(logits[b : b + 1], target[b : b + 1], 10) for b in range(2)]
    assert torch.allclose(TopKCrossEntropyLoss(k=10)(logits, target), torch.stack(per_image).mean())


def test_topk_ce_k100_is_cross_entropy():
    logits, target = make_inputs()
    assert torch.allclose(
        TopKCrossEntropyLoss(k=100)(logits, target), F.cross_entropy(logits, target)
    )


@pytest.mark.parametrize("cls", [TopKDiceLoss, TopKCrossEntropyLoss])
@pytest.mark.parametrize("k", [0, -5, 100.5, 1000])
def test_k_out_of_range(cls, k):
    with pytest.raises(
        ValueError, match=rf"Expected argument `k` to be in \(0, 100\], but got {k}"
    ):
        cls(k=k)


def test_bad_options():
    with pytest.raises(ValueError, match="`difficulty` to be one of"):
        TopKDiceLoss(difficulty="entropy")
    with pytest.raises(ValueError, match="`pool` to be one of"):
        TopKDiceLoss(pool="volume")
    with pytest.raises(ValueError, match="`pool` to be one of"):
        TopKCrossEntropyLoss(pool="class")
    with pytest.raises(ValueError, match="`k_start` to be in"):
        TopKDiceLoss(k_start=0)
    with pytest.raises(ValueError, match="`k_schedule_steps` to be >= 0"):
        TopKDiceLoss(k_schedule_steps=-1)


def test_nan_logits_still_give_a_nan_topk_dice():
    # validate_args=False: the NaN pixel must not be ranked away (the training guard relies on it)
    logits = torch.zeros(1, 3, 10, 10)
    logits[0, 1] = 4.0
    logits[0, :, 2, 3] = float("nan")
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    assert torch.isnan(TopKDiceLoss(k=5, validate_args=False)(logits, target))


def test_topk_ce_value_and_gradient_are_those_of_the_largest_ce_values():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 30, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 30, 30), generator=gen)
    loss = TopKCrossEntropyLoss(k=7, pool="batch")(logits, target)
    ce = F.cross_entropy(logits, target, reduction="none").reshape(-1)
    ref = ce.sort(descending=True).values[: int(ce.numel() * 7 / 100)].mean()
    torch.testing.assert_close(loss, ref, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(loss, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-16)
