"""Pixel-wise cross-entropy and focal losses with the package's common interface."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losses.base import PreparedInputs, SegmentationLoss, check_non_negative, masked_mean


class CrossEntropyLoss(SegmentationLoss):
    """Mean pixel-wise cross-entropy ``mean_i -w_{y_i} log p_{i, y_i}``, ``p = softmax(logits)``.

    Args:
        weight: optional per-class weights ``w`` (length C, finite and ``>= 0``); with weights
            the mean is the weighted mean ``sum_i w_{y_i} CE_i / sum_i w_{y_i}``, as in
            ``torch.nn``.
        ignore_index, validate_args: see :class:`~losses.base.SegmentationLoss`.

    Shapes:
        logits ``(B, C, *spatial)`` float, target ``(B, *spatial)`` int -> scalar.
    """

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(ignore_index=ignore_index, validate_args=validate_args)
        self.register_buffer("weight", _class_weights("weight", weight))

    uses_log_probs = True

    def compute(self, inputs: PreparedInputs) -> Tensor:
        weight = _checked_weights("weight", self.weight, inputs.num_classes)
        nll = -inputs.target_log_probs()  # shared with the other terms of a CompoundLoss
        if weight is None:
            return masked_mean(nll, inputs.valid)
        # torch's weighted mean: sum_i w_{y_i} CE_i / sum_i w_{y_i} over the valid pixels
        pixel_weight = weight.to(nll.dtype)[inputs.target]
        if inputs.valid is not None:
            if not bool(inputs.valid.any()):
                return nll.sum() * 0.0
            pixel_weight = pixel_weight * inputs.valid
        return (nll * pixel_weight).sum() / pixel_weight.sum()


class FocalLoss(SegmentationLoss):
    """Softmax multi-class focal loss: ``mean_i -alpha_{y_i} (1 - p_{i, y_i})^gamma log p_{i, y_i}``.

    ``gamma = 0`` (and no ``alpha``) is the plain cross-entropy. The mean runs over the valid
    pixels (not over classes: MONAI's ``FocalLoss(use_softmax=True)`` with ``reduction="mean"``
    averages over the class axis too, so it is this loss divided by C).

    Args:
        gamma: focusing parameter, ``>= 0``.
        alpha: optional per-class weights (length C); ``None`` weighs every class 1.
        ignore_index, validate_args: see :class:`~losses.base.SegmentationLoss`.

    The gradient is finite for every ``gamma >= 0``, also ``0 < gamma < 1`` at confident
    correct pixels (see :func:`focal_factor`).

    Raises:
        ValueError: ``gamma`` negative or not finite; ``alpha`` holding a negative or non-finite
            value; ``alpha`` of the wrong length (at call time).

    Reference: Lin et al., "Focal loss for dense object detection", ICCV 2017.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(ignore_index=ignore_index, validate_args=validate_args)
        self.gamma = check_non_negative("gamma", gamma)
        self.register_buffer("alpha", _class_weights("alpha", alpha))

    uses_log_probs = True

    def compute(self, inputs: PreparedInputs) -> Tensor:
        alpha = _checked_weights("alpha", self.alpha, inputs.num_classes)
        log_p = inputs.target_log_probs()
        loss = -log_p
        if self.gamma > 0:
            loss = loss * focal_factor(log_p, self.gamma)
        if alpha is not None:
            loss = loss * alpha.to(loss.dtype)[inputs.target]
        return masked_mean(loss, inputs.valid)

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"gamma={self.gamma}" + (f", {base}" if base else "")


def focal_factor(log_p: Tensor, gamma: float) -> Tensor:
    """The focal modulation ``(1 - p)^gamma`` from ``log p``, with a finite gradient everywhere.

    ``1 - p`` is taken as ``-expm1(log p)`` (exact for ``p`` near 1) and floored at the dtype's
    smallest normal number before the power: at a confident correct pixel ``1 - p`` rounds to
    0, where ``d/dx x^gamma = gamma x^(gamma - 1)`` is infinite for ``0 < gamma < 1`` and the
    chain rule would give ``inf * 0 = NaN`` (``gamma >= 1`` needs no floor). The floor changes
    the factor only where ``1 - p < tiny``, where the loss ``-log p ~ 1 - p`` is below ``tiny``
    too; the gradient there is 0, the limit of the true one (``(1 - p)^(1 + gamma)`` near 1).
    """
    one_minus_p = -torch.expm1(log_p)
    if gamma == 2.0:  # the usual case: one product, gradient 2 (1 - p), finite
        return one_minus_p.square()
    if gamma >= 1.0:  # gamma x^(gamma - 1) is finite at x = 0
        return one_minus_p.pow(gamma)
    return one_minus_p.clamp_min(torch.finfo(log_p.dtype).tiny).pow(gamma)


def _class_weights(name: str, values: Sequence[float] | None) -> Tensor | None:
    if values is None:
        return None
    try:
        weights = torch.as_tensor(list(values), dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Expected argument `{name}` to be a sequence of numbers, but got {values!r}"
        ) from err
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(f"Expected argument `{name}` to be a non-empty sequence of numbers")
    if not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise ValueError(
            f"Expected argument `{name}` to hold finite values >= 0, but got {list(values)}"
        )
    return weights


def _checked_weights(name: str, weights: Tensor | None, num_classes: int) -> Tensor | None:
    if weights is not None and weights.numel() != num_classes:
        raise ValueError(
            f"Expected argument `{name}` to have one value per class ({num_classes}), "
            f"but got {weights.numel()}"
        )
    return weights
