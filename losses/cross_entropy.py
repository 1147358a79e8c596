"""Pixel-wise cross-entropy and softmax focal loss.

``CE_i = -log p_{i, y_i}`` with ``p = softmax(logits)`` over the class axis; both losses average
over the pixels that are not ``ignore_index``. Shapes: logits ``(B, C, *spatial)`` float,
target ``(B, *spatial)`` int -> scalar, computed in float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from losses.functional import weighted_mean
from losses.inputs import (
    check_class_weights,
    check_ignore_index,
    check_non_negative,
    check_num_weights,
    flatten_inputs,
)


class CrossEntropyLoss(nn.Module):
    """Mean pixel-wise cross-entropy ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` (``w = 1`` without
    class weights: the plain mean), as ``torch.nn.CrossEntropyLoss``.

    Args:
        weight: optional per-class weights ``w`` (length C, finite, ``>= 0``).
        ignore_index: target value whose pixels take no part, or None.
        validate_args: check that the logits are finite and the targets in ``[0, C)``.

    An input whose pixels are all ``ignore_index`` gives 0 (torch gives NaN).
    """

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", check_class_weights("weight", weight))
        self.ignore_index = check_ignore_index(ignore_index)
        self.validate_args = validate_args

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target, valid = flatten_inputs(
            logits, target, self.ignore_index, self.validate_args
        )
        check_num_weights("weight", self.weight, logits.shape[1])
        with torch.autocast(logits.device.type, enabled=False):
            ce = F.cross_entropy(logits, target, reduction="none")  # (B, N)
            pixel_weight = valid  # None: every pixel weighs 1
            if self.weight is not None:
                class_weight = self.weight.to(ce.dtype)[target]
                pixel_weight = class_weight if valid is None else class_weight * valid
            return weighted_mean(ce, pixel_weight)


class FocalLoss(nn.Module):
    """Softmax focal loss ``mean_i -alpha_{y_i} (1 - p_{i, y_i})^gamma log p_{i, y_i}``.

    ``gamma = 0`` without ``alpha`` is the plain cross-entropy. The mean runs over the valid
    pixels only (MONAI's ``FocalLoss(use_softmax=True)`` also averages over the class axis, so
    it gives this loss divided by C). The gradient is finite for every ``gamma >= 0``, also for
    ``0 < gamma < 1`` at confident correct pixels (see :func:`focal_factor`).

    Args:
        gamma: focusing parameter, ``>= 0``.
        alpha: optional per-class weights (length C); None weighs every class 1.
        ignore_index, validate_args: as in :class:`CrossEntropyLoss`.

    Raises:
        ValueError: ``gamma`` negative or not finite; ``alpha`` holding a negative or
            non-finite value, or of the wrong length (at call time).

    Reference: Lin et al., "Focal loss for dense object detection", ICCV 2017.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.gamma = check_non_negative("gamma", gamma)
        self.register_buffer("alpha", check_class_weights("alpha", alpha))
        self.ignore_index = check_ignore_index(ignore_index)
        self.validate_args = validate_args

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target, valid = flatten_inputs(
            logits, target, self.ignore_index, self.validate_args
        )
        check_num_weights("alpha", self.alpha, logits.shape[1])
        with torch.autocast(logits.device.type, enabled=False):
            log_p = -F.cross_entropy(logits, target, reduction="none")  # log p_{i, y_i}
            loss = -log_p
            if self.gamma > 0:
                loss = loss * focal_factor(log_p, self.gamma)
            if self.alpha is not None:
                loss = loss * self.alpha.to(loss.dtype)[target]
            return weighted_mean(loss, valid)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


def focal_factor(log_p: Tensor, gamma: float) -> Tensor:
    """``(1 - p)^gamma`` from ``log p``, with a finite gradient everywhere.

    ``1 - p = -expm1(log p)`` (exact near ``p = 1``), floored at the dtype's smallest normal
    number when ``gamma < 1``: at a confident correct pixel ``1 - p`` rounds to 0, where
    ``d/dx x^gamma`` is infinite and the chain rule would give ``inf * 0 = NaN``. The floor
    changes the factor only where ``1 - p < tiny``; the gradient there is 0, the limit of the
    true one.
    """
    one_minus_p = -torch.expm1(log_p)
    if gamma >= 1.0:
        return one_minus_p.pow(gamma)
    return one_minus_p.clamp_min(torch.finfo(log_p.dtype).tiny).pow(gamma)
