"""CompoundLoss shares the log-softmax, softmax and per-pixel CE between its terms (issue 12):
the shared computation equals the terms called one by one (``share=False``) to float
precision, in value, logged term values and gradient, for every preset, with ``ignore_index``,
3D inputs, the K schedule and both Dice reductions; and it really computes them once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import losses
from losses import CompoundLoss, build_loss
from tests.losses.conftest import make_inputs

COMPOUND = ["ce_dice", "focal_dice", "topk_ce_dice", "ce_topk_dice", "ce_pm_dice"]
VARIANTS = {
    "default": {},
    "ignore_index": {"ignore_index": 255},
    "per_image": {"batch": False},
    "per_image+ignore": {"batch": False, "ignore_index": 255},
}


def unshared(loss: CompoundLoss) -> CompoundLoss:
    return CompoundLoss(dict(loss.terms), loss.weights, share=False)


def value_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = loss_fn(x, target)
    value.backward()
    return value.detach(), x.grad, {k: v.clone() for k, v in loss_fn.last_values.items()}


def assert_same(loss_fn, logits, target, atol):
    value, grad, terms = value_and_grad(loss_fn, logits, target)
    ref_value, ref_grad, ref_terms = value_and_grad(unshared(loss_fn), logits, target)
    assert torch.allclose(value, ref_value, atol=atol, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=atol, rtol=0)
    assert terms.keys() == ref_terms.keys()
    for name in terms:
        assert torch.allclose(terms[name], ref_terms[name], atol=atol, rtol=0), name


def inputs_for(spatial, dtype, ignore):
    logits, target = make_inputs(batch=3, classes=5, spatial=spatial, dtype=dtype)
    if ignore:
        target.view(3, -1)[0, :7] = 255
        target[2] = 255  # one image entirely ignored
    return logits, target


@pytest.mark.parametrize("spatial", [(12, 10), (4, 6, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", COMPOUND)
def test_shared_equals_unshared_float64(name, variant, spatial):
    kwargs = VARIANTS[variant]
    logits, target = inputs_for(spatial, torch.float64, "ignore_index" in kwargs)
    loss_fn = build_loss(name, **kwargs)
    assert_same(loss_fn, logits, target, atol=1e-12)


@pytest.mark.parametrize("name", COMPOUND)
def test_shared_equals_unshared_float32_bench_like(name):
    logits, target = make_inputs(batch=2, classes=9, spatial=(64, 48))
    assert_same(build_loss(name), logits, target, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topk_dice__k_schedule_steps": 10, "topk_dice__k_start": 100.0},
        {"topk_dice__pool": "batch"},
        {"topk_dice__pool": "class"},
        {"topk_dice__difficulty": "abs_error"},
        {"topk_dice__k": 100},
    ],
)
def test_shared_topk_dice_options_and_schedule(kwargs):
    logits, target = make_inputs(batch=3, classes=4, spatial=(10, 9), dtype=torch.float64)
    loss_fn = build_loss("ce_topk_dice", **kwargs)
    for step in (0, 3, 7, 10, 50):
        loss_fn.set_step(step)
        assert_same(loss_fn, logits, target, atol=1e-12)


def test_term_order_and_mixed_ignore_index():
    logits, target = make_inputs(batch=2, classes=4, spatial=(9, 9), dtype=torch.float64)
    target[0, 0] = 255
    loss_fn = CompoundLoss(
        {
            "topk_dice": losses.TopKDiceLoss(k=20, batch=True, ignore_index=255),
            "ce": losses.CrossEntropyLoss(ignore_index=255, weight=[0.2, 1.0, 2.0, 0.5]),
            "focal": losses.FocalLoss(gamma=0.5, ignore_index=255),
            "topk_ce": losses.TopKCrossEntropyLoss(k=30, pool="batch", ignore_index=255),
            "pm": losses.PixelwiseModulatedDiceLoss(gamma=[0.0, 1.0, 2.0, 0.5], ignore_index=255),
            "dice_unchecked": losses.SoftDiceLoss(ignore_index=255, validate_args=False),
        },
        weights={"ce": 0.3, "pm": 2.0},
    )
    assert_same(loss_fn, logits, target, atol=1e-12)


class SquaredError(nn.Module):
    """A user's own loss: mean squared error between softmax and one-hot."""

    def forward(self, logits, target):
        onehot = nn.functional.one_hot(target, logits.shape[1]).movedim(-1, 1)
        return ((logits.softmax(1) - onehot) ** 2).mean()


def test_foreign_term_composes_and_is_logged():
    logits, target = make_inputs(dtype=torch.float64)
    loss_fn = CompoundLoss(
        {
            "ce": losses.CrossEntropyLoss(),
            "mine": SquaredError(),
            "topk_dice": losses.TopKDiceLoss(),
        }
    )
    value, _, terms = value_and_grad(loss_fn, logits, target)
    assert set(terms) == {"ce", "mine", "topk_dice"}
    assert torch.allclose(terms["mine"], SquaredError()(logits, target))
    assert torch.allclose(value, sum(terms.values()))
    assert_same(loss_fn, logits, target, atol=1e-12)


def count_ops(loss_fn, logits, target, names):
    x = logits.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss_fn(x, target).backward()
    counts = dict.fromkeys(names, 0)
    for event in prof.events():
        if event.name in counts:
            counts[event.name] += 1
    return counts


@pytest.mark.parametrize(  # fmt: skip
    ("name", "shared", "alone"),
    [
        # (preset, {op: count shared}, {op: count term by term})
        # the Dice's square sum rides in the node that gathers the CE's targets (no node of
        # its own, so no second full-size gradient to add before the log-softmax backward)
        (
            "ce_dice",
            {"aten::_log_softmax": 1, "aten::_softmax": 0, "_ExpSquareSum": 0},
            {"aten::_softmax": 1},
        ),
        (
            "focal_dice",
            {"aten::_log_softmax": 1, "aten::_softmax": 0, "_ExpSquareSum": 0},
            {"aten::_softmax": 1},
        ),
        (
            "topk_ce_dice",
            {"aten::_log_softmax": 1, "aten::_softmax": 0, "_ExpSquareSum": 0},
            {"aten::_softmax": 1},
        ),
        ("ce_topk_dice", {"aten::_log_softmax": 1, "aten::_softmax": 0}, {"aten::_log_softmax": 2}),
    ],
)
def test_common_work_is_done_once(name, shared, alone):
    logits, target = make_inputs(batch=2, classes=4, spatial=(16, 16))
    loss_fn = build_loss(name)
    ops = sorted({*shared, *alone, "aten::_log_softmax_backward_data"})
    counts = count_ops(loss_fn, logits, target, ops)
    assert {op: counts[op] for op in shared} == shared
    assert counts["aten::_log_softmax_backward_data"] == 1  # one backward through the softmax
    counts = count_ops(unshared(loss_fn), logits, target, ops)
    assert {op: counts[op] for op in alone} == alone


def test_shared_building_blocks_gradcheck():
    # the two custom backward passes: one scatter for all gathers, 2 w p g for the square sums
    from losses.base import PreparedInputs
    from losses.dice import exp_square_sum, power_sum

    logits, target = make_inputs(batch=2, classes=3, spatial=(7,), dtype=torch.float64)
    weight = torch.rand(2, 1, 7, dtype=torch.float64)
    for w in (None, weight, weight.expand(2, 3, 7)):
        assert torch.autograd.gradcheck(
            lambda p, w=w: power_sum(p, w, True), (logits.softmax(1).requires_grad_(True),)
        )
        log_probs = logits.log_softmax(1).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, w=w: exp_square_sum(x, w), (log_probs,))
        expected = power_sum(log_probs.detach().exp(), w, True)
        assert torch.allclose(exp_square_sum(log_probs.detach(), w), expected)
    indices = torch.tensor([[0, 3], [6, 1]])

    def gathered(x):
        inputs = PreparedInputs(x, target, None, share_log_probs=True)
        inputs.plan_pixels("a", indices)
        inputs.plan_pixels("b", indices[:, :1])
        return (
            inputs.target_log_probs(),
            inputs.selected_log_probs("a", indices),
            inputs.selected_log_probs("b", indices[:, :1]),
        )

    assert torch.autograd.gradcheck(gathered, (logits.clone().requires_grad_(True),))

    valid = torch.tensor([[True] * 7, [True, False, True, True, False, True, True]])
    for mask in (None, valid):

        def with_square_sum(x, mask=mask):
            inputs = PreparedInputs(x, target, mask, share_log_probs=True)
            inputs.plan_pixels("a", indices)
            inputs.plan_square_sum()
            return (
                inputs.target_log_probs(),
                inputs.planned_square_sum(),
                inputs.selected_log_probs("a", indices),
            )

        assert torch.autograd.gradcheck(with_square_sum, (logits.clone().requires_grad_(True),))
        x = logits.clone().requires_grad_(True)
        square_sum = with_square_sum(x)[1]
        w = None if mask is None else mask.to(x.dtype).unsqueeze(1)
        torch.testing.assert_close(square_sum, exp_square_sum(x.log_softmax(1), w))
