"""Weighted sums of loss terms that remember each term's last value for logging."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from losses.base import PreparedInputs, SegmentationLoss


class CompoundLoss(nn.Module):
    """``loss = sum_t weight_t * term_t(logits, target)``.

    After each call ``last_values[name]`` holds the detached, unweighted value of every term,
    so a model can log ``train/loss/<name>``. Terms that are this package's losses
    (:class:`~losses.base.SegmentationLoss`) with the same ``ignore_index`` and
    ``validate_args`` share one :class:`~losses.base.PreparedInputs` per call: one check and
    flattening of the inputs, one log-softmax (when any of them is of the CE family), its
    ``exp`` as the softmax, one per-pixel CE that the topK losses also rank by, and one backward
    pass through all of it. The result equals the sum of the terms called one by one to float
    precision (``share=False`` does exactly that). Any other ``nn.Module`` taking
    ``(logits, target)`` composes too and is simply called.

    Args:
        terms: name -> loss module (names become logging keys: use ``[a-z0-9_]``).
        weights: name -> weight; ``None`` gives every term weight 1. Missing names weigh 1.
        share: share the common computations between the terms (default); ``False`` calls
            every term on its own (for checks and benchmarks).

    Raises:
        ValueError: no terms, a weight for an unknown term, or a negative, NaN or infinite
            weight.
        TypeError: a term that is not an ``nn.Module``, or a weight that is not a number.
    """

    def __init__(
        self,
        terms: Mapping[str, nn.Module],
        weights: Mapping[str, float] | None = None,
        share: bool = True,
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("Expected argument `terms` to hold at least one loss")
        for name, term in terms.items():
            if not isinstance(term, nn.Module):
                raise TypeError(
                    f"Expected term {name!r} of `terms` to be an nn.Module, "
                    f"but got {type(term).__name__}"
                )
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(
                f"Expected `weights` keys among the term names {sorted(terms)}, but got {unknown}"
            )
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float):
                raise TypeError(
                    f"Expected `weights` values to be numbers, but got {w!r} for term {name!r}"
                )
        bad = {name: w for name, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"Expected `weights` to be finite and >= 0, but got {bad}")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}
        self.share = bool(share)
        self.last_values: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        # 1. one prepared input per (ignore_index, validate_args) of this package's terms
        prepared: dict[tuple[int | None, bool], PreparedInputs] = {}
        shared: dict[str, PreparedInputs] = {}
        if self.share:
            for name, term in self.terms.items():
                if isinstance(term, SegmentationLoss):
                    key = (term.ignore_index, term.validate_args)
                    if key not in prepared:
                        prepared[key] = term.prepare(logits, target)
                    shared[name] = prepared[key]
                    prepared[key].share_log_probs |= term.uses_log_probs
        values: dict[str, Tensor] = {}
        device_type = logits.device.type
        # 2. every term announces its needs (e.g. a pixel selection), 3. every term computes
        with torch.autocast(device_type=device_type, enabled=False):
            for name, inputs in shared.items():
                self.terms[name].plan(inputs)
        for name, term in self.terms.items():
            if name in shared:
                with torch.autocast(device_type=device_type, enabled=False):
                    values[name] = term.compute(shared[name])
            else:  # a foreign module runs as it would on its own
                values[name] = term(logits, target)
        total = sum(self.weights[name] * value for name, value in values.items())
        self.last_values = {name: value.detach() for name, value in values.items()}
        return total

    def set_step(self, step: int) -> None:
        """Pass the optimisation step to every term that has a schedule."""
        for term in self.terms.values():
            if hasattr(term, "set_step"):
                term.set_step(step)

    def extra_repr(self) -> str:
        return "weights=" + repr(self.weights) + ("" if self.share else ", share=False")
