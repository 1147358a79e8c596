"""Losses on the K% hardest pixels: topK Dice (the poster's proposal) and topK cross-entropy.

In each pool of ``N`` valid pixels (an image, the whole batch, or an image and class) the
``max(1, int(N * k / 100))`` pixels of highest difficulty form the hard set ``S``
(:func:`losses.functional.num_selected`, nnU-Net's count), chosen by ``torch.topk`` without
gradient. Difficulty of pixel ``i`` with class ``y_i``:

- ``"ce"``: ``-log p_{i, y_i}`` (the poster's "highest CE loss");
- ``"abs_error"``: ``sum_c |y_ic - p_ic| = 2 (1 - p_{i, y_i})``, which ranks as ``"ce"`` does;
- ``pool="class"``: ``|y_ic - p_ic|`` per class, each class with its own K% of the image.

topK Dice = the soft Dice (:mod:`losses.dice`) with a 0/1 weight on ``S``; ``k = 100`` is the
soft Dice exactly. Shapes: logits ``(B, C, *spatial)`` float, target ``(B, *spatial)`` int ->
scalar, computed in float32 even under autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from losses.dice import SoftDiceLoss, check_dice_classes, counted_images
from losses.functional import (
    dice_loss_from_scores,
    num_selected,
    one_hot,
    soft_dice_score,
    top_k_mask,
    weighted_mean,
)
from losses.inputs import check_choice, check_ignore_index, check_percent, flatten_inputs

DIFFICULTIES = ("ce", "abs_error")
DICE_POOLS = ("image", "batch", "class")
CE_POOLS = ("image", "batch")


def pixel_difficulty(logits: Tensor, target: Tensor, difficulty: str) -> Tensor:
    """No-grad difficulty ``(B, N)`` of each pixel: ``-log p_y`` or ``2 (1 - p_y)``."""
    with torch.no_grad():
        ce = F.cross_entropy(logits, target, reduction="none")
        return ce if difficulty == "ce" else 2.0 * (1.0 - torch.exp(-ce))


class TopKDiceLoss(SoftDiceLoss):
    """topK Dice loss: the soft Dice restricted to the K% most difficult pixels.

    ``loss = 1 - mean_{b, c} (2 sum_S y p + smooth) / (sum_S y^2 + sum_S p^2 + smooth)`` with
    ``S`` the hard set (module docstring) and ``p = softmax(logits)``. With ``pool="image"``
    and no ignored pixel the selected pixels are gathered first, so the softmax and the sums
    run on K% of the pixels; otherwise the hard set is a 0/1 weight on every pixel.
    ``batch=True`` pools the selected pixels' sums over the batch (TransUNet's reduction).

    Args:
        k: percent of each pool's valid pixels kept, in ``(0, 100]``.
        difficulty: ``"ce"`` or ``"abs_error"``.
        pool: ``"image"``, ``"batch"`` (one ranking over the batch) or ``"class"`` (per image
            and class by ``|y_c - p_c|``; ``difficulty`` is then unused).
        k_start, k_schedule_steps: if ``k_schedule_steps > 0``, K falls linearly from
            ``k_start`` to ``k`` over that many optimisation steps, set with :meth:`set_step`.
        include_background, smooth, squared, batch, ignore_index, validate_args: as in
            :class:`~losses.dice.SoftDiceLoss`; ignored pixels never enter the hard set.

    Raises:
        ValueError: ``k`` or ``k_start`` outside ``(0, 100]``, an unknown ``difficulty`` or
            ``pool``, a negative ``k_schedule_steps``.
    """

    def __init__(
        self,
        k: float = 10.0,
        difficulty: str = "ce",
        pool: str = "image",
        k_start: float = 100.0,
        k_schedule_steps: int = 0,
        include_background: bool = True,
        smooth: float = 1e-5,
        squared: bool = True,
        batch: bool = False,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(include_background, smooth, squared, batch, ignore_index, validate_args)
        self.k = check_percent("k", k)
        self.k_start = check_percent("k_start", k_start)
        self.difficulty = check_choice("difficulty", difficulty, DIFFICULTIES)
        self.pool = check_choice("pool", pool, DICE_POOLS)
        if isinstance(k_schedule_steps, bool) or not isinstance(k_schedule_steps, int):
            raise TypeError(
                f"Expected argument `k_schedule_steps` to be an int, but got {k_schedule_steps!r}"
            )
        if k_schedule_steps < 0:
            raise ValueError(
                f"Expected argument `k_schedule_steps` to be >= 0, but got {k_schedule_steps}"
            )
        self.k_schedule_steps = k_schedule_steps
        self.step = 0

    def set_step(self, step: int) -> None:
        """Set the optimisation step that the K schedule reads."""
        self.step = int(step)

    @property
    def current_k(self) -> float:
        """K at the current step: ``k_start + (k - k_start) * min(1, step / k_schedule_steps)``."""
        if self.k_schedule_steps == 0 or self.step >= self.k_schedule_steps:
            return self.k
        return self.k_start + (self.k - self.k_start) * self.step / self.k_schedule_steps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target, valid = flatten_inputs(
            logits, target, self.ignore_index, self.validate_args
        )
        check_dice_classes(logits.shape[1], self.include_background)
        options = {"smooth": self.smooth, "squared": self.squared, "batch": self.batch}
        with torch.autocast(logits.device.type, enabled=False):
            keep = num_selected(self.current_k, target.shape[1])
            if self.pool == "image" and valid is None and keep < target.shape[1]:
                # the same K pixels of every image: gather them, Dice on those alone
                hardness = pixel_difficulty(logits, target, self.difficulty)
                indices = hardness.topk(keep, dim=1, sorted=False).indices  # (B, K)
                selected_logits = logits.gather(
                    2, indices.unsqueeze(1).expand(-1, logits.shape[1], -1)
                )
                scores = soft_dice_score(
                    selected_logits.softmax(1), target.gather(1, indices), **options
                )
                return dice_loss_from_scores(scores, self.include_background)
            probs = logits.softmax(1)
            mask = self._hard_set(logits, target, valid)
            weight = valid if mask is None else mask
            scores = soft_dice_score(probs, target, weight, **options)
            counted = counted_images(valid, self.batch)
            return dice_loss_from_scores(scores, self.include_background, counted)

    def _hard_set(self, logits: Tensor, target: Tensor, valid: Tensor | None) -> Tensor | None:
        """0/1 weight of the hard set, ``(B, N)`` (``(B, C, N)`` for ``pool="class"``), or None
        when every valid pixel is selected. No gradient."""
        k = self.current_k
        if self.pool == "class":
            probs = logits.detach().softmax(1)
            error = (one_hot(target, probs.shape[1], probs.dtype) - probs).abs()
            class_valid = None if valid is None else valid.unsqueeze(1).expand_as(error)
            return top_k_mask(error, k, class_valid)
        hardness = pixel_difficulty(logits, target, self.difficulty)
        if self.pool == "image":
            return top_k_mask(hardness, k, valid)
        flat_valid = None if valid is None else valid.reshape(1, -1)
        mask = top_k_mask(hardness.reshape(1, -1), k, flat_valid)
        return None if mask is None else mask.reshape(hardness.shape)

    @torch.no_grad()
    def hard_pixel_mask(self, logits: Tensor, target: Tensor) -> Tensor:
        """Bool ``(B, *spatial)``: the pixels the loss selects now (for visualisation); with
        ``pool="class"`` a pixel selected for any class."""
        flat_logits, flat_target, valid = flatten_inputs(
            logits, target, self.ignore_index, validate_args=False
        )
        with torch.autocast(flat_logits.device.type, enabled=False):
            mask = self._hard_set(flat_logits, flat_target, valid)
        if mask is None:
            selected = torch.ones_like(flat_target, dtype=torch.bool)
            selected = selected if valid is None else selected & valid
        else:
            selected = mask.bool() if mask.ndim == 2 else mask.bool().any(1)
        return selected.reshape(logits.shape[0], *logits.shape[2:])

    def extra_repr(self) -> str:
        head = f"k={self.k}, difficulty={self.difficulty!r}, pool={self.pool!r}"
        if self.k_schedule_steps:
            head += f", k_start={self.k_start}, k_schedule_steps={self.k_schedule_steps}"
        return head + ", " + super().extra_repr()


class TopKCrossEntropyLoss(nn.Module):
    """topK cross-entropy (Pohlen et al.'s "bootstrapped" CE): mean CE of the K% hardest pixels.

    ``loss = mean_{i in S} -log p_{i, y_i}``. ``pool="image"`` averages the per-image means (an
    image whose pixels are all ``ignore_index`` is left out); ``pool="batch"`` ranks the whole
    batch at once. ``k=100`` is the plain mean CE.

    Without ``ignore_index``, ``pool="batch"`` equals nnU-Net v2's ``TopKLoss(k)`` whenever
    ``int(N*k/100) >= 1``. With ``ignore_index`` they differ: here ignored pixels leave the pool
    (``N`` counts the valid pixels), while nnU-Net gives them CE 0 and keeps them in ``N`` and in
    the pool.

    Args:
        k: percent of the pool's pixels kept, in ``(0, 100]``.
        pool: ``"image"`` or ``"batch"``.
        ignore_index, validate_args: as in :class:`~losses.cross_entropy.CrossEntropyLoss`.

    Raises:
        ValueError: ``k`` outside ``(0, 100]`` or an unknown ``pool``.

    Reference: Pohlen et al., "Full-resolution residual networks", CVPR 2017.
    """

    def __init__(
        self,
        k: float = 10.0,
        pool: str = "image",
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.k = check_percent("k", k)
        self.pool = check_choice("pool", pool, CE_POOLS)
        self.ignore_index = check_ignore_index(ignore_index)
        self.validate_args = validate_args

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target, valid = flatten_inputs(
            logits, target, self.ignore_index, self.validate_args
        )
        with torch.autocast(logits.device.type, enabled=False):
            ce = F.cross_entropy(logits, target, reduction="none")  # (B, N)
            if self.pool == "batch":
                ce = ce.reshape(1, -1)
                valid = None if valid is None else valid.reshape(1, -1)
            if valid is None:  # every pool keeps the same number of pixels
                keep = num_selected(self.k, ce.shape[1])
                return ce.topk(keep, dim=1, sorted=False).values.mean()
            weight = top_k_mask(ce, self.k, valid)
            weight = valid.to(ce.dtype) if weight is None else weight
            per_pool = (ce * weight).sum(1) / weight.sum(1).clamp_min(1.0)
            counted = valid.any(1)  # a pool whose pixels are all ignored is left out
            return weighted_mean(per_pool, counted)

    @torch.no_grad()
    def hard_pixel_mask(self, logits: Tensor, target: Tensor) -> Tensor:
        """Bool ``(B, *spatial)``: the pixels whose CE the loss averages now."""
        flat_logits, flat_target, valid = flatten_inputs(
            logits, target, self.ignore_index, validate_args=False
        )
        with torch.autocast(flat_logits.device.type, enabled=False):
            ce = pixel_difficulty(flat_logits, flat_target, "ce")
        if self.pool == "batch":
            flat_valid = None if valid is None else valid.reshape(1, -1)
            mask = top_k_mask(ce.reshape(1, -1), self.k, flat_valid)
            mask = None if mask is None else mask.reshape(ce.shape)
        else:
            mask = top_k_mask(ce, self.k, valid)
        if mask is None:
            selected = torch.ones_like(ce, dtype=torch.bool) if valid is None else valid
        else:
            selected = mask.bool()
        return selected.reshape(logits.shape[0], *logits.shape[2:])

    def extra_repr(self) -> str:
        return f"k={self.k}, pool={self.pool!r}"
