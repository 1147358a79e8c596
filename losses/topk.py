"""Losses restricted to the K% hardest pixels: topK Dice (the poster's) and topK CE.

Selection rule shared by both: in each pool of ``N`` valid pixels (an image, the whole batch,
or an image and class) the ``max(1, int(N * k / 100))`` pixels of highest difficulty are kept
(:func:`num_selected`; nnU-Net's count).
The selection carries no gradient. It ranks an integer key that orders exactly as the float
difficulties (:func:`order_key`, or :func:`magnitude_key` for difficulties that are never
negative). On the CPU, float32 difficulties that are never negative (the image-pool topK Dice,
the topK CE without ignored pixels) are ranked by the native radix select of
:mod:`losses.native`, which keeps the lowest pixel indices among difficulties tied at the
threshold; everything else by ``torch.topk``, which breaks such ties arbitrarily.

Difficulty of pixel ``i`` with target class ``y_i``:

- ``"ce"``: the cross-entropy ``-log p_{i, y_i}`` (the poster's "highest CE loss");
- ``"abs_error"``: ``sum_c |y_ic - p_ic| = 2 (1 - p_{i, y_i})``. Both decrease with
  ``p_{i, y_i}``, so the two rank pixels the same way up to floating-point ties;
- with ``pool="class"`` the difficulty is per class, ``|y_ic - p_ic|``, and each class has its
  own K% of the image's pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from losses import native
from losses.base import (
    PreparedInputs,
    SegmentationLoss,
    check_choice,
    check_percent,
    gather_pixels,
)
from losses.dice import _DiceBase, log_prob_dice_loss

DIFFICULTIES = ("ce", "abs_error")
DICE_POOLS = ("image", "batch", "class")
CE_POOLS = ("image", "batch")


def num_selected(k: float, num_pixels: int) -> int:
    """``max(1, int(num_pixels * k / 100))``, the size of the hard set of a pool.

    The same float expression as nnU-Net v2's ``TopKLoss``, so the counts agree with it
    exactly, including where the float product lands just below an integer
    (``k=32.3, N=1000``: ``322.99999999999994``, so 322 pixels). Never fewer than 1.
    """
    return max(1, int(num_pixels * k / 100))


#: integer type of the same width as each float type (for :func:`order_key`)
_SAME_WIDTH_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def order_key(scores: Tensor) -> Tensor:
    """Integers that sort exactly as the float ``scores`` do (same shape, same width).

    IEEE-754 floats of one sign order as their bit patterns read as integers: increasingly for
    positive numbers, decreasingly for negative ones. Flipping every bit but the sign of the
    negative numbers (``bits ^ ((bits >> (w - 1)) & (2^(w-1) - 1))``, ``w`` the width) makes the
    signed integers increase with the floats over all of them: ``-inf < ... < -0.0 < +0.0 <
    ... < +inf``, equal floats giving equal integers; every NaN, whatever its sign bit, gets the
    largest integer, as ``torch.topk`` ranks NaN above everything (so a NaN pixel is always
    selected and the loss is NaN, which the training guard catches). Ranking the integers
    selects the same pixels as ranking the floats, and ``torch.topk`` ranks integers faster on
    the CPU (no NaN test in each comparison: about 2.6 ms instead of 3.7 ms, key included, for
    K = 10% of 8 x 50,176 pixels on one thread here). Other dtypes are returned as they are.
    """
    int_type = _SAME_WIDTH_INT.get(scores.dtype)
    if int_type is None:
        return scores
    info = torch.iinfo(int_type)
    bits = scores.view(int_type)
    key = bits ^ ((bits >> (info.bits - 1)) & info.max)
    return key.masked_fill_(scores.isnan(), info.max)


def magnitude_key(scores: Tensor) -> Tensor:
    """Integers that sort as ``|scores|`` (one pass: the float bits without the sign bit).

    For scores that are never below zero (a cross-entropy, an absolute error) this orders them
    as :func:`order_key` does, in one operation instead of five: ``-0.0`` (the CE of a pixel
    with ``log p_y = +0.0``) ranks with ``+0.0``, and a NaN of either sign above ``+inf``.
    """
    int_type = _SAME_WIDTH_INT.get(scores.dtype)
    if int_type is None:
        return scores.abs()
    return scores.view(int_type) & torch.iinfo(int_type).max


def top_k_indices(
    scores: Tensor, keep: int, sorted: bool = False, non_negative: bool = False
) -> Tensor:
    """Indices ``(..., keep)`` of the ``keep`` highest ``scores`` along the last axis (ties
    broken arbitrarily); ``sorted``: in decreasing order of the scores. The same selection as
    ``scores.topk(keep, dim=-1, sorted=sorted).indices``, ranked on :func:`order_key`, or on
    the cheaper :func:`magnitude_key` when the caller knows that no score is below zero
    (``non_negative``). Unsorted selections of non-negative float32 scores on the CPU run in
    the native radix select (:mod:`losses.native`), which returns each row's indices in
    increasing order and keeps the lowest indices among ties at the threshold."""
    if non_negative and not sorted:
        indices = native.top_k_magnitude_indices(scores, keep)
        if indices is not None:
            return indices
    key = magnitude_key(scores) if non_negative else order_key(scores)
    return key.topk(keep, dim=-1, sorted=sorted).indices


def pixel_difficulty(logits: Tensor, target: Tensor, difficulty: str) -> Tensor:
    """Difficulty ``(B, N)`` of each pixel from logits ``(B, C, N)`` and target ``(B, N)``.

    ``"ce"``: ``-log p_y`` (one fused cross-entropy pass); ``"abs_error"``: ``2 (1 - p_y)``.
    """
    ce = F.cross_entropy(logits, target, reduction="none")
    if difficulty == "ce":
        return ce
    return 2.0 * (1.0 - (-ce).exp())


def _mask_from_indices(indices: Tensor, like: Tensor) -> Tensor:
    """0/1 float mask shaped like ``like`` with ones at ``indices`` along the last axis."""
    return torch.zeros_like(like).scatter_(-1, indices, 1.0)


def top_k_mask(scores: Tensor, k: float, valid: Tensor | None) -> Tensor | None:
    """Mask of the K% highest ``scores`` along the last axis, per leading index.

    Args:
        scores: ``(..., N)`` difficulty of each pixel of each pool (no gradient needed).
        k: percent in ``(0, 100]``.
        valid: bool ``(..., N)`` of the pixels in the pool, or ``None`` for all.

    Returns:
        Float 0/1 mask shaped like ``scores`` (selected and valid pixels are 1), or ``None``
        when every valid pixel is selected (so callers can take the unrestricted path, which
        makes ``k=100`` exactly the plain loss).
    """
    num_pixels = scores.shape[-1]
    if valid is None:
        keep = num_selected(k, num_pixels)
        if keep >= num_pixels:
            return None
        return _mask_from_indices(top_k_indices(scores, keep), scores)
    counts = valid.sum(-1)
    keeps = torch.tensor(
        [num_selected(k, count) for count in counts.reshape(-1).tolist()], device=counts.device
    ).reshape(counts.shape)
    if bool((keeps >= counts).all()):
        return None
    scores = scores.masked_fill(~valid, float("-inf"))
    keep_max = int(keeps.max())
    indices = top_k_indices(scores, keep_max, sorted=True)
    ranks = torch.arange(keep_max, device=scores.device)
    take = (ranks < keeps.unsqueeze(-1)).to(scores.dtype)
    mask = torch.zeros_like(scores).scatter_(-1, indices, take)
    return mask * valid


class TopKDiceLoss(_DiceBase):
    """topK Dice loss: the soft Dice restricted to the K% most difficult pixels (the poster).

    ``loss = 1 - mean_{b, c} (2*sum_{i in S} y_ic p_ic + smooth) /
    (sum_{i in S} y_ic^2 + sum_{i in S} p_ic^2 + smooth)`` where ``S`` is the hard set of the
    pool (see the module docstring) and ``p = softmax(logits)``. ``k=100`` is exactly
    :class:`~losses.dice.SoftDiceLoss`. A class absent from the selected pixels' ground truth
    scores ``smooth / (sum_S p^2 + smooth)`` (as in the soft Dice): finite loss and gradient.

    With ``pool="image"`` (the default, the poster's sums run over one image) only the selected
    pixels' logits enter the softmax and the Dice sums, so the forward and backward passes cost
    about K% of the plain Dice's plus one no-grad pass to rank the pixels.

    Args:
        k: percent of the pool's pixels kept, in ``(0, 100]``.
        difficulty: ``"ce"`` or ``"abs_error"`` (see the module docstring).
        pool: ``"image"``, ``"batch"`` (one ranking over the batch) or ``"class"`` (per image
            and class by ``|y_c - p_c|``; ``difficulty`` is then unused).
        k_start: K at step 0 of the optional schedule (percent, in ``(0, 100]``).
        k_schedule_steps: if > 0, K falls linearly from ``k_start`` to ``k`` over this many
            optimisation steps; the model advances it with :meth:`set_step`.
        include_background, smooth, squared, batch, ignore_index, validate_args: as in
            :class:`~losses.dice.SoftDiceLoss`; ignored pixels never enter the hard set.

    Shapes:
        logits ``(B, C, *spatial)`` float, target ``(B, *spatial)`` int -> scalar.

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
        """K in force at the current step: ``k_start + (k - k_start) * min(1, step / steps)``."""
        if self.k_schedule_steps == 0 or self.step >= self.k_schedule_steps:
            return self.k
        return self.k_start + (self.k - self.k_start) * self.step / self.k_schedule_steps

    def compute(self, inputs: PreparedInputs) -> Tensor:
        self.check_classes(inputs)
        target, valid = inputs.target, inputs.valid
        k = self.current_k
        keep = self._gathered_keep(inputs)
        if keep is not None:
            return self._image_pool_gathered(inputs, keep)
        mask = self._selection_mask(inputs, k)
        probs = inputs.probs()
        if mask is None:
            weight = None if valid is None else valid.to(probs.dtype)
        else:
            weight = mask
        target_probs = None if weight is not None and weight.ndim == 3 else inputs.target_probs()
        return self.dice_loss(probs, target, weight, valid, target_probs)

    def _plan_key(self) -> str:
        return f"topk_dice:{id(self)}"

    def _gathered_keep(self, inputs: PreparedInputs) -> int | None:
        """Hard-set size of the gathered fast path (pool "image", no ignored pixel), or None."""
        if self.pool != "image" or inputs.valid is not None:
            return None
        keep = num_selected(self.current_k, inputs.target.shape[-1])
        return keep if keep < inputs.target.shape[-1] else None

    def plan(self, inputs: PreparedInputs) -> None:
        """Rank and select before the other terms run, so that the selected pixels' log-softmax
        is gathered together with the CE's target entries (one backward scatter)."""
        keep = self._gathered_keep(inputs)
        if keep is not None and inputs.share_log_probs:
            indices = top_k_indices(self._hardness(inputs), keep, non_negative=True)
            inputs.plan_pixels(self._plan_key(), indices)

    def _image_pool_gathered(self, inputs: PreparedInputs, keep: int) -> Tensor:
        """Fast path: gather the ``keep`` hardest pixels of each image, Dice on those alone.

        The ranking reuses the per-pixel CE when a CE term of the same compound loss has
        computed it; the selected pixels' probabilities are then ``exp`` of the shared
        log-softmax (one backward pass through it), else the softmax of the selected logits.
        """
        key = self._plan_key()
        indices = inputs.planned_pixels(key)
        if indices is None:
            hardness = self._hardness(inputs)  # detached; computed outside no_grad so that
            indices = top_k_indices(hardness, keep, non_negative=True)  # the shared CE caches
        selected_target = inputs.target.gather(1, indices)
        if inputs.share_log_probs:
            return log_prob_dice_loss(
                inputs.selected_log_probs(key, indices),
                selected_target,
                smooth=self.smooth,
                squared=self.squared,
                batch=self.batch,
                include_background=self.include_background,
            )
        selected_probs = gather_pixels(inputs.logits, indices).softmax(1)
        return self.dice_loss(selected_probs, selected_target, None)

    def _hardness(self, inputs: PreparedInputs) -> Tensor:
        """No-grad difficulty ``(B, N)`` of each pixel (see the module docstring)."""
        ce = inputs.ranking_ce()
        return ce if self.difficulty == "ce" else 2.0 * (1.0 - (-ce).exp())

    def _selection_mask(self, inputs: PreparedInputs, k: float) -> Tensor | None:
        """0/1 weight ``(B, N)`` (``(B, C, N)`` for ``pool="class"``) of the hard set, or None.

        Built from detached quantities only (no gradient), without ``torch.no_grad`` around the
        shared ones so that what it computes first (the softmax) is cached with its gradient.
        """
        valid = inputs.valid
        if self.pool == "class":
            probs = inputs.probs().detach()
            classes = torch.arange(probs.shape[1], device=probs.device).view(1, -1, 1)
            error = torch.where(inputs.target.unsqueeze(1) == classes, 1.0 - probs, probs)
            class_valid = None if valid is None else valid.unsqueeze(1).expand_as(error)
            return top_k_mask(error, k, class_valid)
        hardness = self._hardness(inputs)
        if self.pool == "image":
            return top_k_mask(hardness, k, valid)
        flat_valid = None if valid is None else valid.reshape(1, -1)
        mask = top_k_mask(hardness.reshape(1, -1), k, flat_valid)
        return None if mask is None else mask.reshape(hardness.shape)

    @torch.no_grad()
    def hard_pixel_mask(self, logits: Tensor, target: Tensor) -> Tensor:
        """Bool ``(B, *spatial)``: the pixels the loss would select now (for visualisation).

        For ``pool="class"`` a pixel is marked when it is selected for any class.
        """
        inputs = self.prepare(logits, target)
        with torch.autocast(device_type=inputs.logits.device.type, enabled=False):
            mask = self._selection_mask(inputs, self.current_k)
        if mask is None:
            selected = torch.ones_like(inputs.target, dtype=torch.bool)
            if inputs.valid is not None:
                selected &= inputs.valid
        else:
            selected = mask.bool() if mask.ndim == 2 else mask.bool().any(1)
        return selected.reshape(logits.shape[0], *logits.shape[2:])

    def extra_repr(self) -> str:
        head = f"k={self.k}, difficulty={self.difficulty!r}, pool={self.pool!r}"
        if self.k_schedule_steps:
            head += f", k_start={self.k_start}, k_schedule_steps={self.k_schedule_steps}"
        return head + ", " + super().extra_repr()


class _SelectedValues(torch.autograd.Function):
    """``values.gather(-1, indices)`` for distinct ``indices`` per row, saving only the indices
    for the backward (autograd's gather also keeps ``values`` alive until the backward, one
    more ``(B, N)`` tensor at the peak; ``torch.topk``'s values keep only the indices too)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor) -> Tensor:  # noqa: ANN205
        ctx.save_for_backward(indices)
        ctx.shape = values.shape
        return values.gather(-1, indices)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        (indices,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).scatter_(-1, indices, grad), None


class TopKCrossEntropyLoss(SegmentationLoss):
    """topK cross-entropy (Pohlen et al., "bootstrapped" CE): mean CE of the K% hardest pixels.

    ``loss = mean_{i in S} -log p_{i, y_i}`` where ``S`` holds the ``max(1, int(N*k/100))``
    pixels of highest CE in each pool of ``N`` valid pixels. ``pool="image"`` averages the
    per-image means (an image whose pixels are all ``ignore_index`` is left out of that mean);
    ``pool="batch"`` ranks the whole batch at once. ``k=100`` is the plain mean CE.

    Without ``ignore_index``, ``pool="batch"`` equals nnU-Net v2's ``TopKLoss(k)`` (whole-batch
    CE, the ``int(N*k/100)`` largest values, their mean) whenever ``int(N*k/100) >= 1``. With
    ``ignore_index`` the two differ: here ignored pixels leave the pool (``N`` counts the valid
    pixels only and an ignored pixel is never selected), while nnU-Net gives them CE 0 and keeps
    them in ``N`` and in the pool (so they can be selected and dilute the mean).

    Args:
        k: percent of the pool's pixels kept, in ``(0, 100]``.
        pool: ``"image"`` or ``"batch"``.
        ignore_index, validate_args: see :class:`~losses.base.SegmentationLoss`.

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
        super().__init__(ignore_index=ignore_index, validate_args=validate_args)
        self.k = check_percent("k", k)
        self.pool = check_choice("pool", pool, CE_POOLS)

    uses_log_probs = True

    def compute(self, inputs: PreparedInputs) -> Tensor:
        ce = -inputs.target_log_probs()  # per-pixel CE, shared with the other terms
        valid = inputs.valid
        if self.pool == "batch":
            ce = ce.reshape(1, -1)
            valid = None if valid is None else valid.reshape(1, -1)
        if valid is None:
            keep = num_selected(self.k, ce.shape[-1])
            if keep >= ce.shape[-1]:
                return ce.mean()
            indices = native.top_k_magnitude_indices(ce, keep)  # the CE is never below zero
            if indices is not None:
                return _SelectedValues.apply(ce, indices).mean()
            # float topk on the values with their gradient: no integer key to hold beside a
            # whole-batch pool (its memory would add to the peak)
            return ce.topk(keep, dim=-1, sorted=False).values.mean()
        with torch.no_grad():
            mask = top_k_mask(ce.detach(), self.k, valid)
        weight = valid.to(ce.dtype) if mask is None else mask
        per_pool = (ce * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)
        counted = valid.any(-1)  # a pool (image) with every pixel ignored is left out
        if not bool(counted.all()):
            if not bool(counted.any()):
                return per_pool.sum() * 0.0
            per_pool = per_pool[counted]
        return per_pool.mean()

    @torch.no_grad()
    def hard_pixel_mask(self, logits: Tensor, target: Tensor) -> Tensor:
        """Bool ``(B, *spatial)``: the pixels whose CE the loss averages now."""
        inputs = self.prepare(logits, target)
        ce = F.cross_entropy(inputs.logits, inputs.target, reduction="none")
        valid = inputs.valid
        if self.pool == "batch":
            flat_valid = None if valid is None else valid.reshape(1, -1)
            mask = top_k_mask(ce.reshape(1, -1), self.k, flat_valid)
            mask = None if mask is None else mask.reshape(ce.shape)
        else:
            mask = top_k_mask(ce, self.k, valid)
        if mask is None:
            selected = torch.ones_like(ce, dtype=torch.bool) if valid is None else valid.clone()
        else:
            selected = mask.bool()
        return selected.reshape(logits.shape[0], *logits.shape[2:])

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"k={self.k}, pool={self.pool!r}" + (f", {base}" if base else "")


__all__ = [
    "TopKCrossEntropyLoss",
    "gather_pixels",
    "TopKDiceLoss",
    "num_selected",
    "magnitude_key",
    "order_key",
    "pixel_difficulty",
    "top_k_indices",
    "top_k_mask",
]
