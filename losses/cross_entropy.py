"""Pixel-wise cross-entropy and focal losses with the package's common interface."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from losses.base import PreparedInputs, SegmentationLoss, check_non_negative, masked_mean

_TORCH_IGNORE = -100  # torch's ignore value; ignored pixels are re-marked with it


class CrossEntropyLoss(SegmentationLoss):
    """Mean pixel-wise cross-entropy ``mean_i -w_{y_i} log p_{i, y_i}``, ``p = softmax(logits)``.

    Args:
        weight: optional per-class weights ``w`` (length C); with weights the mean is the
            weighted mean ``sum_i w_{y_i} CE_i / sum_i w_{y_i}``, as in ``torch.nn``.
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

    def compute(self, inputs: PreparedInputs) -> Tensor:
        weight = _checked_weights("weight", self.weight, inputs.num_classes)
        if inputs.valid is None:
            return F.cross_entropy(inputs.logits, inputs.target, weight=weight)
        if not bool(inputs.valid.any()):
            return inputs.logits.sum() * 0.0
        target = inputs.target.masked_fill(~inputs.valid, _TORCH_IGNORE)
        return F.cross_entropy(inputs.logits, target, weight=weight, ignore_index=_TORCH_IGNORE)


class FocalLoss(SegmentationLoss):
    """Softmax multi-class focal loss: ``mean_i -alpha_{y_i} (1 - p_{i, y_i})^gamma log p_{i, y_i}``.

    ``gamma = 0`` (and no ``alpha``) is the plain cross-entropy. The mean runs over the valid
    pixels (not over classes: MONAI's ``FocalLoss(use_softmax=True)`` with ``reduction="mean"``
    averages over the class axis too, so it is this loss divided by C).

    Args:
        gamma: focusing parameter, ``>= 0``.
        alpha: optional per-class weights (length C); ``None`` weighs every class 1.
        ignore_index, validate_args: see :class:`~losses.base.SegmentationLoss`.

    Raises:
        ValueError: ``gamma < 0``; ``alpha`` of the wrong length (at call time).

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

    def compute(self, inputs: PreparedInputs) -> Tensor:
        alpha = _checked_weights("alpha", self.alpha, inputs.num_classes)
        log_p = inputs.logits.log_softmax(1).gather(1, inputs.target.unsqueeze(1)).squeeze(1)
        loss = -log_p
        if self.gamma > 0:
            loss = loss * (1.0 - log_p.exp()).pow(self.gamma)
        if alpha is not None:
            loss = loss * alpha[inputs.target]
        return masked_mean(loss, inputs.valid)

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"gamma={self.gamma}" + (f", {base}" if base else "")


def _class_weights(name: str, values: Sequence[float] | None) -> Tensor | None:
    if values is None:
        return None
    weights = torch.as_tensor(list(values), dtype=torch.float32)
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(f"Expected argument `{name}` to be a non-empty sequence of numbers")
    if bool((weights < 0).any()):
        raise ValueError(f"Expected argument `{name}` to hold values >= 0, but got {list(values)}")
    return weights


def _checked_weights(name: str, weights: Tensor | None, num_classes: int) -> Tensor | None:
    if weights is not None and weights.numel() != num_classes:
        raise ValueError(
            f"Expected argument `{name}` to have one value per class ({num_classes}), "
            f"but got {weights.numel()}"
        )
    return weights
