"""The named loss presets: the poster's five rows plus the Dice variants on their own.

Each preset also exists as ``configs/loss/<name>.yaml`` for the Lightning CLI; a test checks
that the two agree. Compound presets weigh their terms 0.5/0.5 as TransUNet does.
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

_SINGLE: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "dice": SoftDiceLoss,
    "topk_dice": TopKDiceLoss,
    "pm_dice": PixelwiseModulatedDiceLoss,
}

#: Compound presets: name -> ((term name, loss class), (term name, loss class)).
_PAIRS: dict[str, tuple[tuple[str, Callable[..., nn.Module]], ...]] = {
    "ce_dice": (("ce", CrossEntropyLoss), ("dice", SoftDiceLoss)),
    "focal_dice": (("focal", FocalLoss), ("dice", SoftDiceLoss)),
    "topk_ce_dice": (("topk_ce", TopKCrossEntropyLoss), ("dice", SoftDiceLoss)),
    "ce_topk_dice": (("ce", CrossEntropyLoss), ("topk_dice", TopKDiceLoss)),
    "ce_pm_dice": (("ce", CrossEntropyLoss), ("pm_dice", PixelwiseModulatedDiceLoss)),
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
        return _SINGLE[name](**overrides)
    if name not in _PAIRS:
        raise ValueError(f"Expected argument `name` to be one of {PRESETS}, but got {name!r}")
    weights = overrides.pop("weights", None)
    terms = {}
    for term_name, cls in _PAIRS[name]:
        kwargs = {}
        for key, value in overrides.items():
            prefix, sep, arg = key.partition("__")
            if sep and prefix == term_name:
                kwargs[arg] = value
            elif not sep and _accepts(cls, key):
                kwargs[key] = value
        terms[term_name] = cls(**kwargs)
    used = {k for k in overrides if "__" in k and k.split("__")[0] in terms}
    used |= {k for k in overrides if "__" not in k and any(_accepts(c, k) for _, c in _PAIRS[name])}
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"Overrides {unused} are not accepted by any term of preset {name!r}")
    if weights is None:
        weights = {term_name: 0.5 for term_name in terms}
    return CompoundLoss(terms, weights)


def _accepts(cls: Callable[..., nn.Module], arg: str) -> bool:
    import inspect

    return arg in inspect.signature(cls).parameters
