"""The maths under every loss of the package, as plain functions on flattened tensors.

Shapes: ``probs`` ``(B, C, N)`` (N pixels or voxels per image), ``target`` ``(B, N)`` int64 in
``[0, C)``, optional pixel weight ``w`` ``(B, N)`` or pixel-and-class weight ``(B, C, N)``.

- :func:`soft_dice_score`: ``(2 sum w y p + s) / (sum w y^2 + sum w p^2 + s)`` per image and
  class (``p^2 -> p`` when not ``squared``), the sums pooled over the batch when ``batch``;
- :func:`class_sums`: ``sum_i v_i [y_i = c]`` (the one-hot's sums without the one-hot);
- :func:`num_selected`: ``max(1, int(N * k / 100))``, nnU-Net v2's float expression;
- :func:`top_k_mask`: 0/1 mask of the K% highest scores of each row (``torch.topk``).

A weight of 0/1 restricted to the hard pixels makes the soft Dice the topK Dice; a weight
``|y - stopgrad(p)|^gamma`` makes it the PM Dice. Nothing here carries state.
"""

from __future__ import annotations

import torch
from torch import Tensor


def class_sums(target: Tensor, num_classes: int, values: Tensor | None = None) -> Tensor:
    """``(B, C)``: ``sum_i v_i [y_i = c]`` per image, a scatter-add of ``values`` ``(B, N)`` into
    each pixel's class (with their gradient); ``values=None`` counts the pixels (float32)."""
    if values is None:
        values = torch.ones((), device=target.device).expand(target.shape)
    sums = torch.zeros(target.shape[0], num_classes, dtype=values.dtype, device=target.device)
    return sums.scatter_add(1, target, values)


def one_hot(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(B, N)`` class indices -> ``(B, C, N)`` one-hot of ``dtype``."""
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1)
    return (target.unsqueeze(1) == classes).to(dtype)


def soft_dice_score(
    probs: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    smooth: float = 1e-5,
    squared: bool = True,
    batch: bool = False,
) -> Tensor:
    """Soft Dice score per image and class, ``(B, C)`` (``(1, C)`` when ``batch``).

    ``(2 sum w y p + s) / (sum w y^2 + sum w p^2 + s)`` with ``y`` the one-hot of ``target``
    (``y^2 = y``) and ``w`` a pixel weight ``(B, N)`` or a pixel-and-class weight ``(B, C, N)``
    (None: 1; it carries no gradient). No one-hot is built: ``y`` is non-zero at the target
    class only, so ``sum w y p`` is a scatter-add of ``w_y p_y`` into each pixel's class and
    ``sum w y^2`` one of ``w_y``. A class absent from an image scores ``s / (sum w p^2 + s)``:
    1 when it is not predicted, towards 0 as it is; loss and gradient stay finite.
    """
    pixel_weight = None if weight is None else weight.detach().to(probs.dtype)
    target_weight = pixel_weight  # w at each pixel's target class, (B, N)
    if pixel_weight is not None and pixel_weight.ndim == 3:
        target_weight = pixel_weight.gather(1, target.unsqueeze(1)).squeeze(1)
    elif pixel_weight is not None:
        pixel_weight = pixel_weight.unsqueeze(1)  # (B, 1, N): the same for every class
    p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, N)
    if target_weight is not None:
        p_target = p_target * target_weight
    num_classes = probs.shape[1]
    intersection = class_sums(target, num_classes, p_target)
    target_sum = class_sums(target, num_classes, target_weight).to(probs.dtype)
    prob_sum = power_sum(probs, pixel_weight, squared)
    return dice_from_sums(intersection, target_sum, prob_sum, smooth=smooth, batch=batch)


def dice_from_sums(
    intersection: Tensor, target_sum: Tensor, prob_sum: Tensor, *, smooth: float, batch: bool
) -> Tensor:
    """``(2 I + s) / (T + P + s)`` from per image and class sums ``(B, C)``, pooled over the
    batch first when ``batch`` (one score per class, ``(1, C)``)."""
    if batch:
        intersection = intersection.sum(0, keepdim=True)
        target_sum = target_sum.sum(0, keepdim=True)
        prob_sum = prob_sum.sum(0, keepdim=True)
    return (2.0 * intersection + smooth) / (target_sum + prob_sum + smooth)


def power_sum(probs: Tensor, weight: Tensor | None, squared: bool) -> Tensor:
    """``(B, C)``: ``sum_n w p^2`` (``squared``) or ``sum_n w p`` over the pixels; ``weight``
    broadcastable to ``probs`` without gradient, or None.

    The square sum is written ``2 sum (w q) p - stopgrad(sum (w q) p)`` with ``q = stopgrad(p)``:
    the same value and the same first derivative ``2 w p``, which autograd then computes in
    one product (``p * p`` takes two products and a sum of the two gradients). Not for second
    derivatives. ``tests/losses/test_functional.py`` holds value and gradient against ``p * p``.
    """
    if not squared:
        return (probs if weight is None else probs * weight).sum(-1)
    weighted_q = probs.detach() if weight is None else probs.detach() * weight
    half = (weighted_q * probs).sum(-1)  # sum w q p: the value sum w p^2, gradient w p
    return 2.0 * half - half.detach()


def dice_loss_from_scores(
    scores: Tensor, include_background: bool = True, counted: Tensor | None = None
) -> Tensor:
    """``1 - mean`` of the Dice scores ``(B, C)`` over the classes and the counted images.

    Args:
        scores: per image (or batch-pooled ``(1, C)``) Dice scores.
        include_background: keep class 0 in the mean.
        counted: optional bool ``(B,)``: the images that enter the mean (those with at least
            one pixel that is not ``ignore_index``). With none counted the loss is 0, with a
            zero gradient.
    """
    if not include_background:
        scores = scores[:, 1:]
    if counted is not None and not bool(counted.all()):
        if not bool(counted.any()):
            return scores.sum() * 0.0
        scores = scores[counted]
    return 1.0 - scores.mean()


def num_selected(k: float, num_pixels: int) -> int:
    """``max(1, int(num_pixels * k / 100))``: the size of a pool's hard set.

    The float expression of nnU-Net v2's ``TopKLoss``, so the counts agree with it exactly,
    also where the product lands just below an integer (``k=32.3, N=1000`` gives 322).
    """
    return max(1, int(num_pixels * k / 100))


def top_k_mask(scores: Tensor, k: float, valid: Tensor | None = None) -> Tensor | None:
    """Float 0/1 mask ``(..., N)`` of the K% highest ``scores`` of each row, or None when a
    row keeps all of its pixels (so that ``k=100`` takes the unrestricted path exactly).

    Each row keeps ``num_selected(k, n)`` of its ``n`` valid pixels (``valid`` bool
    ``(..., N)``, or None for all); invalid pixels are never selected. Ties at the threshold are
    broken by ``torch.topk``. No gradient.
    """
    scores = scores.detach()
    num_pixels = scores.shape[-1]
    if valid is None:
        keep = num_selected(k, num_pixels)
        if keep >= num_pixels:
            return None
        indices = scores.topk(keep, dim=-1, sorted=False).indices
        return torch.zeros_like(scores).scatter_(-1, indices, 1.0)
    counts = valid.sum(-1)
    keeps = torch.tensor(
        [num_selected(k, n) for n in counts.reshape(-1).tolist()], device=scores.device
    ).reshape(counts.shape)
    if bool((keeps >= counts).all()):
        return None
    # rank the valid pixels first (ignored ones at -inf), then keep each row's own count
    ranked = scores.masked_fill(~valid, float("-inf"))
    indices = ranked.topk(int(keeps.max()), dim=-1, sorted=True).indices
    ranks = torch.arange(indices.shape[-1], device=scores.device)
    taken = (ranks < keeps.unsqueeze(-1)).to(scores.dtype)
    return torch.zeros_like(scores).scatter_(-1, indices, taken) * valid


def weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """``sum w v / sum w`` (the plain mean when ``weight`` is None); 0 with a zero gradient
    when every weight is 0."""
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)
