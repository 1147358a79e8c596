"""Soft Dice loss and pixel-wise modulated (PM) Dice loss.

Both are :func:`losses.functional.soft_dice_score` with a pixel weight ``w``::

    dice_c = (2 sum_i w_i y_ic p_ic + smooth) / (sum_i w_i y_ic^2 + sum_i w_i p_ic^2 + smooth)
    loss   = 1 - mean_{b, c} dice_bc          (batch=True: one dice_c from the batch's sums)

with ``p = softmax(logits)`` and ``y`` the one-hot target: ``w = 1`` (0 at ``ignore_index``) is
the soft Dice, ``w = |y - stopgrad(p)|^gamma`` the PM Dice, and a 0/1 mask of the K% hardest
pixels the topK Dice (:mod:`losses.topk`). Shapes: logits ``(B, C, *spatial)`` float, target
``(B, *spatial)`` int -> scalar, computed in float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from losses.functional import (
    class_sums,
    dice_from_sums,
    dice_loss_from_scores,
    power_sum,
    soft_dice_score,
)
from losses.inputs import check_ignore_index, check_non_negative, flatten_inputs


def check_dice_classes(num_classes: int, include_background: bool) -> None:
    """Raise ValueError if the background is left out of a single-class input."""
    if not include_background and num_classes < 2:
        raise ValueError(
            "Expected at least 2 classes in `logits` with include_background=False, "
            f"but got {num_classes}"
        )


def counted_images(valid: Tensor | None, batch: bool) -> Tensor | None:
    """Bool ``(B,)``: the images that enter a per-image mean (those with a valid pixel); None
    when all do or when the sums are pooled over the batch (an empty image adds nothing)."""
    return None if valid is None or batch else valid.any(-1)


class SoftDiceLoss(nn.Module):
    """Soft Dice loss (V-Net, the poster's formula with K = 100%).

    ``loss = 1 - mean_{b, c} (2 sum y p + smooth) / (sum y^2 + sum p^2 + smooth)``, the sums over
    the pixels of each image (of the whole batch when ``batch``). Equals MONAI's
    ``DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=smooth,
    smooth_dr=smooth, batch=batch)``; ``batch=True`` is TransUNet's ``DiceLoss``. A class absent
    from an image scores ``smooth / (sum p^2 + smooth)``: predicting it is penalised.

    Args:
        include_background: keep class 0 in the mean over classes.
        smooth: added to numerator and denominator (MONAI's ``smooth_nr = smooth_dr``).
        squared: square the probabilities in the denominator.
        batch: sum over the batch before the ratio. ``False``: one ratio per image, then the
            mean over the images that hold a pixel that is not ``ignore_index``.
        ignore_index: target value whose pixels leave every sum, or None.
        validate_args: check that the logits are finite and the targets in ``[0, C)``.

    Raises:
        ValueError: ``smooth`` negative or not finite; at call time bad inputs (see
            :func:`losses.inputs.flatten_inputs`).

    Reference: Milletari et al., "V-Net", 3DV 2016.
    """

    def __init__(
        self,
        include_background: bool = True,
        smooth: float = 1e-5,
        squared: bool = True,
        batch: bool = False,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.smooth = check_non_negative("smooth", smooth)
        self.squared = squared
        self.batch = batch
        self.ignore_index = check_ignore_index(ignore_index)
        self.validate_args = validate_args

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target, valid = flatten_inputs(
            logits, target, self.ignore_index, self.validate_args
        )
        check_dice_classes(logits.shape[1], self.include_background)
        with torch.autocast(logits.device.type, enabled=False):
            probs = logits.softmax(1)
            scores = soft_dice_score(
                probs, target, valid, smooth=self.smooth, squared=self.squared, batch=self.batch
            )
            counted = counted_images(valid, self.batch)
            return dice_loss_from_scores(scores, self.include_background, counted)

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, smooth={self.smooth}, "
            f"squared={self.squared}, batch={self.batch}"
        )


class PixelwiseModulatedDiceLoss(SoftDiceLoss):
    """Pixel-wise modulated Dice loss (Hosseini, arXiv 2506.15744).

    The soft Dice with the factor ``m_ic = |y_ic - stopgrad(p_ic)|^gamma_c`` in every sum::

        loss = 1 - mean_{b, c} (2 sum m y p + smooth) / (sum m y^2 + sum m p^2 + smooth)

    Easy pixels (``p`` close to ``y``) weigh little, hard ones close to 1, so the Dice
    concentrates on the difficult pixels without a selection. ``gamma = 0`` is exactly
    :class:`SoftDiceLoss`. ``m`` is ``q_c^gamma_c`` off the target class and ``(1 - q_y)^gamma_y``
    at it (``q = stopgrad(p)``), so ``sum m p^2`` is the full sum ``sum_c q_c^gamma_c p_c^2``
    plus a per-pixel correction at the target class: no ``(B, C, N)`` factor is built.

    Args:
        gamma: focusing exponent, one number or one per class (each ``>= 0``).
        include_background, smooth, squared, batch, ignore_index, validate_args: as in
            :class:`SoftDiceLoss`.

    Raises:
        ValueError: a negative or non-finite ``gamma``; per-class ``gamma`` whose length is
            not the number of classes (at call time).
    """

    def __init__(
        self,
        gamma: float | Sequence[float] = 1.0,
        include_background: bool = True,
        smooth: float = 1e-5,
        squared: bool = True,
        batch: bool = False,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(include_background, smooth, squared, batch, ignore_index, validate_args)
        gammas = [gamma] if isinstance(gamma, int | float) else list(gamma)
        if not gammas:
            raise ValueError("Expected argument `gamma` to be a number or a non-empty sequence")
        gammas = [check_non_negative("gamma", g) for g in gammas]
        self.per_class = not isinstance(gamma, int | float)
        self.register_buffer("gamma", torch.tensor(gammas, dtype=torch.float32))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not bool((self.gamma > 0).any()):
            return super().forward(logits, target)  # gamma = 0: the soft Dice exactly
        logits, target, valid = flatten_inputs(
            logits, target, self.ignore_index, self.validate_args
        )
        num_classes = logits.shape[1]
        check_dice_classes(num_classes, self.include_background)
        if self.per_class and self.gamma.numel() != num_classes:
            raise ValueError(
                f"Expected one `gamma` per class ({num_classes}), but got {self.gamma.numel()}"
            )
        with torch.autocast(logits.device.type, enabled=False):
            probs = logits.softmax(1)
            p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, N)
            with torch.no_grad():  # the factor m, off and at each pixel's target class
                q, q_target = probs.detach(), p_target.detach()
                gamma = self.gamma.to(q.dtype)
                gamma_target = gamma[target] if self.per_class else gamma  # (B, N) or (1,)
                plain = bool((gamma == 1).all())
                m_off = q if plain else q.pow(gamma.view(1, -1, 1))  # q_c^gamma_c, (B, C, N)
                m_off_target = q_target if plain else q_target.pow(gamma_target)
                m_target = (1.0 - q_target).pow(gamma_target)  # (1 - q_y)^gamma_y, (B, N)
                if valid is not None:
                    m_off = m_off * valid.unsqueeze(1)
                    m_off_target, m_target = m_off_target * valid, m_target * valid
            # sum m p^2: the full sum with m_off, corrected at the target class
            power_target = p_target * p_target if self.squared else p_target
            correction = class_sums(target, num_classes, (m_target - m_off_target) * power_target)
            prob_sum = power_sum(probs, m_off, self.squared) + correction
            intersection = class_sums(target, num_classes, m_target * p_target)
            target_sum = class_sums(target, num_classes, m_target)
            scores = dice_from_sums(
                intersection, target_sum, prob_sum, smooth=self.smooth, batch=self.batch
            )
            counted = counted_images(valid, self.batch)
            return dice_loss_from_scores(scores, self.include_background, counted)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma.tolist()}, " + super().extra_repr()
