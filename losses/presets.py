"""The named loss presets: the poster's five rows plus the Dice variants on their own.

Each preset also exists as ``configs/loss/<name>.yaml`` for the Lightning CLI; a test checks
that the two agree. Compound presets weigh their terms 0.5/0.5 as TransUNet does.

Every Dice term of a preset uses TransUNet's reduction (``utils.DiceLoss`` of
Beckschen/TransUNet, the code behind the poster's tables): softmax, one-hot target, every class
including the background weighted ``1/C``, squared denominators, ``smooth = 1e-5``, and the
sums taken over the WHOLE batch and all pixels before the ratio (``batch=True``). The topK Dice
selects the K% hardest pixels of each image (``pool="image"``) and pools the selected pixels'
sums over the batch in the same way, so ``build_loss("ce_topk_dice", topk_dice__k=100)`` is
TransUNet's ``0.5 * CE + 0.5 * DiceLoss``. The per-image reduction (MONAI's default) stays
available: ``build_loss("ce_dice", batch=False)`` or ``dice__batch=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from losses.compound import CompoundLoss
from losses.cross_entropy import CrossEntropyLoss, FocalLoss
from losses.dice import PixelwiseModulatedDiceLoss, SoftDiceLoss
from losses.topk import TopKCrossEntropyLoss, TopKDiceLoss

#: Row titles of the poster's tables, by preset name, in the poster's order.
PAPER_LOSSES: dict[str, str] = {
    "ce": "CE",
    "ce_dice": "CE + Dice",
    "focal_dice": "Focal-CE + Dice",
    "topk_ce_dice": "topK-CE + Dice",
    "ce_topk_dice": "CE + topK-Dice",
}

#: TransUNet's Dice reduction (see the module docstring), the default of every preset's Dice.
TRANSUNET_DICE: dict[str, Any] = {
    "include_background": True,
    "smooth": 1e-5,
    "squared": True,
    "batch": True,
}

Term = tuple[Callable[..., nn.Module], dict[str, Any]]

_CE: Term = (CrossEntropyLoss, {})
_DICE: Term = (SoftDiceLoss, TRANSUNET_DICE)
_TOPK_DICE: Term = (
    TopKDiceLoss,
    {"k": 10.0, "difficulty": "ce", "pool": "image", **TRANSUNET_DICE},
)
_PM_DICE: Term = (PixelwiseModulatedDiceLoss, {"gamma": 1.0, **TRANSUNET_DICE})

#: Single-loss presets: name -> (loss class, default arguments).
_SINGLE: dict[str, Term] = {
    "ce": _CE,
    "dice": _DICE,
    "topk_dice": _TOPK_DICE,
    "pm_dice": _PM_DICE,
}

#: Compound presets: name -> ((term name, (loss class, default arguments)), ...).
_PAIRS: dict[str, tuple[tuple[str, Term], ...]] = {
    "ce_dice": (("ce", _CE), ("dice", _DICE)),
    "focal_dice": (("focal", (FocalLoss, {"gamma": 2.0})), ("dice", _DICE)),
    "topk_ce_dice": (
        ("topk_ce", (TopKCrossEntropyLoss, {"k": 10.0, "pool": "image"})),
        ("dice", _DICE),
    ),
    "ce_topk_dice": (("ce", _CE), ("topk_dice", _TOPK_DICE)),
    "ce_pm_dice": (("ce", _CE), ("pm_dice", _PM_DICE)),
}

PRESETS: tuple[str, ...] = (*PAPER_LOSSES, "dice", "topk_dice", "pm_dice", "ce_pm_dice")


def build_loss(name: str, **overrides: Any) -> nn.Module:
    """Build a preset loss by name.

    ``overrides`` go to the constructor of a single loss (``build_loss("topk_dice", k=5)``);
    for a compound preset they go to every term that accepts them (``ignore_index``), or to
    one term when prefixed by its name (``build_loss("ce_topk_dice", topk_dice__k=5)``), and
    ``weights={"ce": 1.0, ...}`` replaces the 0.5/0.5 weights.

    Raises:
        ValueError: an unknown preset name or an override that no term accepts.
    """
    if name in _SINGLE:
        cls, defaults = _SINGLE[name]
        return cls(**{**defaults, **overrides})
    if name not in _PAIRS:
        raise ValueError(f"Expected argument `name` to be one of {PRESETS}, but got {name!r}")
    weights = overrides.pop("weights", None)
    terms = {}
    for term_name, (cls, defaults) in _PAIRS[name]:
        kwargs = dict(defaults)
        for key, value in overrides.items():
            prefix, sep, arg = key.partition("__")
            if sep and prefix == term_name:
                kwargs[arg] = value
            elif not sep and _accepts(cls, key):
                kwargs[key] = value
        terms[term_name] = cls(**kwargs)
    used = {k for k in overrides if "__" in k and k.split("__")[0] in terms}
    used |= {
        k for k in overrides if "__" not in k and any(_accepts(c, k) for _, (c, _d) in _PAIRS[name])
    }
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"Overrides {unused} are not accepted by any term of preset {name!r}")
    if weights is None:
        weights = {term_name: 0.5 for term_name in terms}
    return CompoundLoss(terms, weights)


def _accepts(cls: Callable[..., nn.Module], arg: str) -> bool:
    import inspect

    return arg in inspect.signature(cls).parameters
