"""A weighted sum of loss terms that remembers each term's last value for logging."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor, nn


class CompoundLoss(nn.Module):
    """``loss = sum_t weight_t * term_t(logits, target)`` for any modules ``term_t``.

    After each call ``last_values[name]`` holds every term's detached, unweighted value, so a
    model can log ``train/loss/<name>``. :meth:`set_step` is passed on to the terms that have
    one (a K schedule).

    Args:
        terms: name -> loss module called as ``term(logits, target)`` (names become logging
            keys: use ``[a-z0-9_]``).
        weights: name -> weight; missing names (or ``None``) weigh 1.

    Raises:
        ValueError: no terms, a weight for an unknown term, or a negative, NaN or infinite
            weight.
        TypeError: a term that is not an ``nn.Module``, or a weight that is not a number.
    """

    def __init__(
        self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
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
        self.last_values: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        values = {name: term(logits, target) for name, term in self.terms.items()}
        self.last_values = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())

    def set_step(self, step: int) -> None:
        """Pass the optimisation step to every term that has a schedule."""
        for term in self.terms.values():
            if hasattr(term, "set_step"):
                term.set_step(step)

    def extra_repr(self) -> str:
        return f"weights={self.weights!r}"
