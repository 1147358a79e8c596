"""Properties every loss and preset must have: interface, bad input, gradients, precision,
ignore_index, 3D inputs; ``build_loss`` builds what the Lightning CLI builds from the config."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

import losses
from losses import CompoundLoss, build_loss
from losses.presets import CONFIG_DIR
from tests.losses.conftest import PACKAGE_PRESETS, make_inputs

SINGLE_LOSSES = {
    "CrossEntropyLoss": lambda **kw: losses.CrossEntropyLoss(**kw),
    "FocalLoss": lambda **kw: losses.FocalLoss(**kw),
    "SoftDiceLoss": lambda **kw: losses.SoftDiceLoss(**kw),
    "TopKDiceLoss": lambda **kw: losses.TopKDiceLoss(k=20, **kw),
    "TopKDiceLoss-batch": lambda **kw: losses.TopKDiceLoss(k=20, pool="batch", **kw),
    "TopKDiceLoss-class": lambda **kw: losses.TopKDiceLoss(k=20, pool="class", **kw),
    "TopKCrossEntropyLoss": lambda **kw: losses.TopKCrossEntropyLoss(k=20, **kw),
    "TopKCrossEntropyLoss-batch": lambda **kw: losses.TopKCrossEntropyLoss(
        k=20, pool="batch", **kw
    ),
    "PixelwiseModulatedDiceLoss": lambda **kw: losses.PixelwiseModulatedDiceLoss(gamma=2, **kw),
}
FACTORIES = {
    **SINGLE_LOSSES,
    **{
        f"preset:{name}": (lambda n: lambda **kw: build_loss(n, **kw))(name)
        for name in PACKAGE_PRESETS
    },
}


@pytest.fixture(params=sorted(FACTORIES))
def factory(request):
    return FACTORIES[request.param]


def test_public_names_importable():
    for name in [
        "SoftDiceLoss",
        "TopKDiceLoss",
        "TopKCrossEntropyLoss",
        "FocalLoss",
        "CrossEntropyLoss",
        "PixelwiseModulatedDiceLoss",
        "CompoundLoss",
        "build_loss",
    ]:
        assert hasattr(losses, name)


def test_scalar_2d_and_3d(factory):
    for spatial in [(8, 8), (4, 5, 6)]:
        logits, target = make_inputs(spatial=spatial)
        value = factory()(logits, target)
        assert value.shape == () and torch.isfinite(value)


# PM Dice's factor is stop-gradient, which finite differences cannot respect: its gradient is
# checked against an independent formula in test_pm_dice_gradient_treats_factor_as_constant.
GRADCHECKED = sorted(
    name for name in FACTORIES if "Modulated" not in name and "pm_dice" not in name
)


@pytest.mark.parametrize("name", GRADCHECKED)
def test_gradcheck_float64(name):
    logits, target = make_inputs(batch=2, classes=3, spatial=(5, 4), dtype=torch.float64)
    logits.requires_grad_(True)
    loss_fn = FACTORIES[name]()
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits,), eps=1e-6, atol=1e-5)


def test_weighted_dice_score_gradcheck():
    # the mechanism under PM Dice and topK Dice: the Dice with a fixed pixel(-and-class) weight
    logits, target = make_inputs(batch=2, classes=3, spatial=(7,), dtype=torch.float64)
    logits.requires_grad_(True)
    weight = torch.rand(2, 3, 7, dtype=torch.float64)
    for w in (weight, weight[:, 0], None):
        assert torch.autograd.gradcheck(
            lambda x, w=w: losses.soft_dice_score(x.softmax(1), target, w), (logits,)
        )


def test_pm_dice_gradient_treats_factor_as_constant():
    logits, target = make_inputs(batch=2, classes=3, spatial=(6, 5), dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    losses.PixelwiseModulatedDiceLoss(gamma=2)(x, target).backward()
    # independent reference: the formula with m computed from a detached p
    y = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double().flatten(2)
    r = logits.clone().requires_grad_(True)
    p = r.softmax(1).flatten(2)
    m = (y - p.detach()).abs() ** 2
    dice = (2 * (m * y * p).sum(-1) + 1e-5) / ((m * y).sum(-1) + (m * p * p).sum(-1) + 1e-5)
    (1 - dice.mean()).backward()
    assert torch.allclose(x.grad, r.grad)


def test_bf16_autocast_computes_in_float32(factory):
    logits, target = make_inputs(spatial=(16, 16))
    loss_fn = factory()
    reference = loss_fn(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = logits.to(torch.bfloat16)
        value = loss_fn(low, target)
    assert value.dtype == torch.float32
    # the only difference is the rounding of the logits to bf16
    assert torch.allclose(value, loss_fn(low.float(), target))
    assert torch.allclose(value, reference, atol=0.05)


def test_ignore_index_equals_loss_on_remaining_pixels(factory):
    # every image has the same number of ignored pixels, so the remaining pixels form a
    # (B, C, M) tensor on which the loss without ignore_index must give the same value
    logits, target = make_inputs(batch=2, classes=4, spatial=(10, 10), dtype=torch.float64)
    ignored = torch.zeros(2, 100, dtype=torch.bool)
    ignored[0, :30] = True
    ignored[1, 50:80] = True
    ignored = ignored.reshape(2, 10, 10)
    masked_target = target.masked_fill(ignored, 255)
    kept_logits = logits.permute(0, 2, 3, 1)[~ignored].reshape(2, 70, 4).permute(0, 2, 1)
    kept_target = target[~ignored].reshape(2, 70)
    expected = factory()(kept_logits, kept_target)
    assert torch.allclose(factory(ignore_index=255)(logits, masked_target), expected)


def test_ignored_pixels_get_no_gradient(factory):
    logits, target = make_inputs(dtype=torch.float64)
    target[:, :3] = -1
    logits.requires_grad_(True)
    factory(ignore_index=-1)(logits, target).backward()
    assert (logits.grad[:, :, :3] == 0).all()


def test_absent_class_finite(factory):
    logits, _ = make_inputs(classes=5)
    target = torch.randint(0, 2, (logits.shape[0], *logits.shape[2:]))  # classes 2..4 absent
    logits.requires_grad_(True)
    value = factory()(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_shape_mismatch_names_both_shapes(factory):
    logits, target = make_inputs(batch=2, classes=4, spatial=(8, 8))
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\).*\(2, 8, 7\)"):
        factory()(logits, target[:, :, :7])


def test_target_out_of_range_names_value(factory):
    logits, target = make_inputs(classes=4)
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match="found value 7"):
        factory()(logits, target)
    target[0, 0, 0] = -3
    with pytest.raises(ValueError, match="found value -3"):
        factory(ignore_index=255)(logits, target)


def test_integer_logits_rejected(factory):
    _, target = make_inputs()
    with pytest.raises(TypeError, match="floating point"):
        factory()(torch.zeros(2, 4, 12, 10, dtype=torch.long), target)


def test_float_target_rejected(factory):
    logits, target = make_inputs()
    with pytest.raises(TypeError, match="integer tensor"):
        factory()(logits, target.float())


def test_forward_does_not_change_state(factory):
    logits, target = make_inputs()
    loss_fn = factory()
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    loss_fn(logits, target)
    after = loss_fn.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compound_keeps_unweighted_term_values():
    logits, target = make_inputs()
    loss_fn = build_loss("ce_topk_dice")
    total = loss_fn(logits, target)
    ce = losses.CrossEntropyLoss()(logits, target)
    topk = losses.TopKDiceLoss(k=10, batch=True)(logits, target)
    assert set(loss_fn.last_values) == {"ce", "topk_dice"}
    assert torch.allclose(loss_fn.last_values["ce"], ce)
    assert torch.allclose(loss_fn.last_values["topk_dice"], topk)
    assert torch.allclose(total, 0.5 * ce + 0.5 * topk)


def test_compound_accepts_foreign_modules_and_passes_steps():
    logits, target = make_inputs()
    loss_fn = CompoundLoss(
        {
            "torch_ce": torch.nn.CrossEntropyLoss(),
            "topk": losses.TopKDiceLoss(k=10, k_schedule_steps=10),
        },
        weights={"torch_ce": 2.0},
    )
    loss_fn.set_step(5)
    assert loss_fn.terms["topk"].current_k == pytest.approx(55)
    value = loss_fn(logits, target)
    expected = 2 * torch.nn.functional.cross_entropy(logits, target) + losses.TopKDiceLoss(k=55)(
        logits, target
    )
    assert torch.allclose(value, expected)


def test_compound_bad_arguments():
    with pytest.raises(ValueError, match="at least one loss"):
        CompoundLoss({})
    with pytest.raises(ValueError, match=r"term names \['ce'\], but got \['dice'\]"):
        CompoundLoss({"ce": losses.CrossEntropyLoss()}, weights={"dice": 1.0})
    with pytest.raises(TypeError, match="term 'ce' of `terms` to be an nn.Module"):
        CompoundLoss({"ce": "cross_entropy"})


def test_build_loss_overrides():
    loss_fn = build_loss("ce_topk_dice", topk_dice__k=5, ignore_index=255)
    assert loss_fn.terms["topk_dice"].k == 5
    assert loss_fn.terms["ce"].ignore_index == 255 == loss_fn.terms["topk_dice"].ignore_index
    assert build_loss("topk_dice", k=3).k == 3
    with pytest.raises(ValueError, match="one of"):
        build_loss("topk")
    with pytest.raises(ValueError, match="not accepted"):
        build_loss("ce_dice", k=5)


@pytest.mark.parametrize("name", PACKAGE_PRESETS)
def test_build_loss_equals_what_the_cli_parser_builds(name):
    path = CONFIG_DIR / f"{name}.yaml"
    assert path.is_file(), f"missing {path}"
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_argument("--name", type=str)
    parser.add_argument("--model.loss", type=torch.nn.Module)
    config = parser.parse_args(["--config", str(path)])
    from_config = parser.instantiate(config).model.loss
    from_preset = build_loss(name)
    assert repr(from_config) == repr(from_preset)
    logits, target = make_inputs()
    assert torch.equal(from_config(logits, target), from_preset(logits, target))
