"""Loss edge cases (issue 9, section 3): focal gradients, nnU-Net's TopK, all-ignored images,
non-finite and empty inputs, NaN arguments. References are hand computations or nnU-Net's
formula re-derived in ``tests/losses/reference.py``."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from losses import (
    CompoundLoss,
    CrossEntropyLoss,
    FocalLoss,
    PixelwiseModulatedDiceLoss,
    SoftDiceLoss,
    TopKCrossEntropyLoss,
    TopKDiceLoss,
    build_loss,
)
from losses.functional import num_selected
from tests.losses.conftest import PACKAGE_PRESETS, make_inputs
from tests.losses.reference import nnunet_topk_ce

# ----------------------------------------------------------------------------- focal gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 0.99, 1.0, 1.5, 2.0, 5.0])
def test_focal_gradient_finite_at_confident_pixels(gamma, dtype):
    # logits [40, 0, 0], target 0: p_0 rounds to 1; d/dp (1-p)^gamma is infinite for gamma < 1
    logits = torch.tensor([[[40.0], [0.0], [0.0]]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[0]])
    loss = FocalLoss(gamma=gamma)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().max() < 1e-12  # the true gradient: about 2 e^-40 (1-p)^gamma


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
def test_focal_gradient_matches_formula_for_small_gamma(gamma):
    # mixed confident and uncertain pixels, fp64: autograd vs the hand-derived gradient
    logits = torch.tensor(
        [[[40.0, 1.0, -2.0, 0.3], [0.0, 0.5, 3.0, 0.2], [0.0, -1.0, 0.0, 0.1]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    target = torch.tensor([[0, 1, 0, 2]])
    FocalLoss(gamma=gamma)(logits, target).backward()
    # loss_i = -(1-p)^g log p with p = p_{i,y}; dloss/dp = g (1-p)^(g-1) log p - (1-p)^g / p
    # dp/dz_c = p (onehot_c - p_c) (softmax Jacobian), mean over the 4 pixels
    probs = logits.detach().softmax(1)[0]
    expected = torch.zeros_like(probs)
    for i, y in enumerate(target[0].tolist()):
        p = probs[y, i]
        q = 1 - p
        dldp = (gamma * q ** (gamma - 1) * torch.log(p) if q > 0 else 0.0) - q**gamma / p
        onehot = F.one_hot(torch.tensor(y), 3).double()
        expected[:, i] = dldp * p * (onehot - probs[:, i]) / 4
    assert torch.isfinite(logits.grad).all()
    assert torch.allclose(logits.grad[0], expected, atol=1e-12)


# ----------------------------------------------------------------------------- topK CE = nnU-Net


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(10, 100, 10), (10, 30, 3), (10, 5, 1), (0.1, 50, 1), (100, 7, 7), (33.3, 10, 3)]
    + [(32.3, 1000, 322), (64.1, 1000, 640)],  # int(N*k/100) as nnU-Net, float error included
)
def test_number_selected_is_nnunet_count(k, n, expected):
    assert num_selected(k, n) == expected == max(1, int(n * k / 100))


@pytest.mark.parametrize(("k", "spatial"), [(10, (10, 10)), (32.3, (25, 40)), (64.1, (10, 100))])
def test_topk_ce_batch_pool_equals_nnunet_with_float_rounding(k, spatial):
    logits, target = make_inputs(batch=1, classes=3, spatial=spatial, dtype=torch.float64)
    expected = nnunet_topk_ce(logits, target, k)
    assert torch.allclose(TopKCrossEntropyLoss(k=k, pool="batch")(logits, target), expected)


def test_topk_ce_docstring_states_the_ignore_index_difference():
    doc = TopKCrossEntropyLoss.__doc__
    assert "nnU-Net" in doc and "ignore_index" in doc and "k=10, N=30" not in num_selected.__doc__


# ----------------------------------------------------------------------------- all-ignored image

ALL_IGNORED_CASES = {
    "SoftDiceLoss": lambda: SoftDiceLoss(ignore_index=255),
    "PixelwiseModulatedDiceLoss": lambda: PixelwiseModulatedDiceLoss(gamma=1, ignore_index=255),
    "TopKDiceLoss-image": lambda: TopKDiceLoss(k=20, ignore_index=255),
    "TopKDiceLoss-class": lambda: TopKDiceLoss(k=20, pool="class", ignore_index=255),
    "TopKCrossEntropyLoss-image": lambda: TopKCrossEntropyLoss(k=20, ignore_index=255),
    "CrossEntropyLoss": lambda: CrossEntropyLoss(ignore_index=255),
    "FocalLoss": lambda: FocalLoss(ignore_index=255),
    **{
        f"preset:{name}": (lambda n: lambda: build_loss(n, ignore_index=255))(name)
        for name in PACKAGE_PRESETS
    },
    **{
        f"preset-per-image:{name}": (
            lambda n: lambda: build_loss(n, ignore_index=255, batch=False)
        )(name)
        for name in ("dice", "ce_dice", "ce_topk_dice", "pm_dice")
    },
}


@pytest.mark.parametrize("name", sorted(ALL_IGNORED_CASES))
def test_all_ignored_image_does_not_count(name):
    logits, target = make_inputs(batch=2, classes=4, spatial=(10, 10), dtype=torch.float64)
    alone = ALL_IGNORED_CASES[name]()(logits[:1], target[:1])
    padded_target = target.clone()
    padded_target[1] = 255  # image 1 is entirely ignore_index
    x = logits.clone().requires_grad_(True)
    value = ALL_IGNORED_CASES[name]()(x, padded_target)
    assert torch.allclose(value, alone)
    value.backward()
    assert (x.grad[1] == 0).all()


@pytest.mark.parametrize("name", sorted(ALL_IGNORED_CASES))
def test_every_pixel_ignored_gives_zero_loss(name):
    logits, target = make_inputs(batch=2, classes=4, spatial=(6, 6), dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    value = ALL_IGNORED_CASES[name]()(x, torch.full_like(target, 255))
    value.backward()
    assert torch.isfinite(value) and value.item() == pytest.approx(0.0, abs=1e-9)
    assert (x.grad == 0).all()


# ----------------------------------------------------------------------------- bad inputs

FACTORIES = {
    "CrossEntropyLoss": CrossEntropyLoss,
    "FocalLoss": FocalLoss,
    "SoftDiceLoss": SoftDiceLoss,
    "TopKDiceLoss": TopKDiceLoss,
    "TopKCrossEntropyLoss": TopKCrossEntropyLoss,
    "PixelwiseModulatedDiceLoss": PixelwiseModulatedDiceLoss,
    **{f"preset:{p}": (lambda n: lambda **kw: build_loss(n, **kw))(p) for p in PACKAGE_PRESETS},
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_non_finite_logits_raise_naming_logits(name, bad):
    logits, target = make_inputs(classes=4)
    logits[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="`logits` to be finite"):
        FACTORIES[name]()(logits, target)
    # validate_args=False skips the check (one pass over the logits saved)
    FACTORIES[name](validate_args=False)(logits, target)


def test_huge_finite_logits_are_accepted():
    # their sum overflows float32, the element-wise test must still accept them
    logits = torch.full((2, 3, 4, 4), 3e38)
    logits[:, 1:] = -3e38
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    assert torch.isfinite(CrossEntropyLoss()(logits, target))


@pytest.mark.parametrize(
    "shapes", [((0, 4, 8, 8), (0, 8, 8)), ((2, 4, 0, 8), (2, 0, 8)), ((2, 0, 8, 8), (2, 8, 8))]
)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_empty_batch_raises_naming_logits_and_target(name, shapes):
    logits = torch.zeros(shapes[0])
    target = torch.zeros(shapes[1], dtype=torch.long)
    with pytest.raises(ValueError, match=r"non-empty `logits` and `target`"):
        FACTORIES[name]()(logits, target)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_arguments_rejected(bad):
    for cls in (SoftDiceLoss, TopKDiceLoss, PixelwiseModulatedDiceLoss):
        with pytest.raises(ValueError, match=rf"`smooth` to be >= 0 and finite, but got {bad}"):
            cls(smooth=bad)
    with pytest.raises(ValueError, match=rf"`gamma` to be >= 0 and finite, but got {bad}"):
        FocalLoss(gamma=bad)
    with pytest.raises(ValueError, match=rf"`gamma` to be >= 0 and finite, but got {bad}"):
        PixelwiseModulatedDiceLoss(gamma=bad)
    with pytest.raises(ValueError, match=rf"`gamma` to be >= 0 and finite, but got {bad}"):
        PixelwiseModulatedDiceLoss(gamma=[1.0, bad])
    with pytest.raises(ValueError, match=r"`weights` to be finite and >= 0, but got \{'ce': "):
        CompoundLoss({"ce": CrossEntropyLoss(), "dice": SoftDiceLoss()}, {"ce": bad})
    with pytest.raises(ValueError, match="`weights` to be finite and >= 0"):
        build_loss("ce_dice", weights={"ce": 0.5, "dice": bad})
    with pytest.raises(ValueError, match="`weight` to hold finite values >= 0"):
        CrossEntropyLoss(weight=[1.0, bad, 1.0])
    with pytest.raises(ValueError, match="`alpha` to hold finite values >= 0"):
        FocalLoss(alpha=[1.0, bad])
    with pytest.raises(ValueError, match=r"`k` to be in \(0, 100\], but got nan"):
        TopKDiceLoss(k=math.nan)


def test_non_number_weights_rejected():
    with pytest.raises(TypeError, match="`weights` values to be numbers"):
        CompoundLoss({"ce": CrossEntropyLoss()}, {"ce": "0.5"})
    with pytest.raises(TypeError, match="`weight` to be a sequence of numbers"):
        CrossEntropyLoss(weight=["a", "b"])
