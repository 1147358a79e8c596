"""The integer ranking key of the topK selections: the same order as the floats, NaN first."""

from __future__ import annotations

import pytest
import torch

from losses import TopKCrossEntropyLoss, TopKDiceLoss
from losses.topk import magnitude_key, order_key, top_k_indices

SPECIALS = [0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 1.0, -1.0, 2.0, -2.0, 3e38]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_key_sorts_like_the_floats(dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.cat(
        [
            torch.tensor(SPECIALS, dtype=torch.float64),
            torch.randn(5000, generator=gen, dtype=torch.float64)
            * 10.0 ** torch.randint(-30, 30, (5000,), generator=gen),
            torch.randint(-3, 4, (500,), generator=gen).double(),  # many exact ties
        ]
    ).to(dtype)
    key = order_key(values)
    assert key.dtype != dtype and not key.is_floating_point() and key.shape == values.shape
    by_key = values[key.argsort(stable=True)]
    by_value = values.sort(stable=True).values
    assert torch.equal(by_key, by_value)  # -0.0 == +0.0 compare equal, so ties may swap them
    # equal floats, equal keys; a strictly larger float, a strictly larger key
    i, j = torch.randint(0, len(values), (2, 20000), generator=gen)
    less, equal = values[i] < values[j], values[i] == values[j]
    assert (key[i] < key[j])[less].all()
    zero = values[i] == 0  # -0.0 and +0.0: equal floats, adjacent keys
    assert (key[i] == key[j])[equal & ~zero].all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_of_either_sign_ranks_first(dtype) -> None:
    values = torch.tensor([1.0, float("inf"), 0.0, 5.0], dtype=dtype)
    nan = torch.tensor([float("nan")], dtype=dtype)
    values = torch.cat([values, nan, -nan])  # -nan: the sign bit set, as -log_softmax makes it
    assert torch.signbit(values[-1]) and not torch.signbit(values[-2])
    assert set(top_k_indices(values, 2).tolist()) == {4, 5}
    assert set(values.topk(2).indices.tolist()) == {4, 5}  # torch.topk's rule


def test_top_k_indices_select_what_torch_topk_selects() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(8, 50176, generator=gen) * 5  # CE-like, no ties in practice
    for keep in (1, 5017, 50175):
        ours = top_k_indices(scores, keep).sort(-1).values
        ref = scores.topk(keep, dim=-1).indices.sort(-1).values
        assert torch.equal(ours, ref)
    ranked = top_k_indices(scores, 100, sorted=True)
    assert torch.equal(scores.gather(1, ranked), scores.topk(100, dim=-1).values)


def test_nan_logits_still_give_a_nan_topk_dice() -> None:
    # validate_args=False: the NaN must not be ranked away (the training guard relies on it)
    logits = torch.zeros(1, 3, 10, 10)
    logits[0, 1] = 4.0
    logits[0, :, 2, 3] = float("nan")
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    loss = TopKDiceLoss(k=5, validate_args=False)(logits, target)
    assert torch.isnan(loss)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_magnitude_key_orders_non_negative_scores(dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    scores = torch.cat(
        [
            torch.tensor([0.0, -0.0, float("inf"), 1e-45, 3e38], dtype=torch.float64),
            torch.rand(3000, generator=gen, dtype=torch.float64)
            * 10.0 ** torch.randint(-30, 30, (3000,), generator=gen),
        ]
    ).to(dtype)
    key = magnitude_key(scores)
    assert torch.equal(scores[key.argsort(stable=True)], scores.sort(stable=True).values)
    nan = torch.tensor([float("nan")], dtype=dtype)
    with_nan = torch.cat([scores, nan, -nan])
    n = len(scores)
    assert set(top_k_indices(with_nan, 2, non_negative=True).tolist()) == {n, n + 1}
    # -0.0 (the CE of a pixel with log p_y = +0.0) ranks with +0.0, at the bottom
    assert magnitude_key(torch.tensor([-0.0], dtype=dtype)).item() == 0


def test_topk_ce_selects_the_largest_ce_values() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 30, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 30, 30), generator=gen)
    loss = TopKCrossEntropyLoss(k=7, pool="batch")(logits, target)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none").reshape(-1)
    ref = ce.topk(int(ce.numel() * 7 / 100)).values.mean()
    torch.testing.assert_close(loss, ref, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(loss, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-16)
