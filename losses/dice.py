"""Soft Dice losses: the plain soft Dice and the pixel-wise modulated (PM) Dice.

Both are the same mechanism, :func:`soft_dice_score` with an optional pixel weight ``w``::

    dice_c = (2 * sum_i w_i y_ic p_ic + smooth) / (sum_i w_i y_ic^2 + sum_i w_i p_ic^2 + smooth)

with ``p = softmax(logits)`` and ``y`` the one-hot target. ``w = 1`` is the soft Dice of the
poster (squared denominators, as in V-Net and TransUNet), a 0/1 mask restricted to the K% hardest
pixels is the topK Dice (:mod:`losses.topk`), and ``w = |y - stopgrad(p)|^gamma`` is the PM Dice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losses.base import PreparedInputs, SegmentationLoss, check_non_negative


def soft_dice_score(
    probs: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    smooth: float = 1e-5,
    squared: bool = True,
    batch: bool = False,
    target_probs: Tensor | None = None,
) -> Tensor:
    """Per image and class soft Dice score.

    ``(2 * sum(w*y*p) + smooth) / (sum(w*y^2) + sum(w*p^2) + smooth)``, sums over pixels (and
    over the batch too when ``batch``); ``squared=False`` uses ``sum(w*p)`` in the denominator.
    The one-hot ``y`` is never materialised when ``weight`` is per pixel: ``sum(y*p)`` is a
    scatter-add of ``p_target`` into its class and ``sum(y^2)`` a class count.

    A class absent from an image's ground truth scores ``smooth / (sum(w*p^2) + smooth)``: 1 when
    nothing of it is predicted, falling towards 0 as it is predicted, so false positives on
    images without the class are penalised and the gradient stays finite.

    Args:
        probs: class probabilities ``(B, C, M)`` (M pixels).
        target: class indices ``(B, M)``, int64 in ``[0, C)``.
        weight: ``None``, a per-pixel weight ``(B, M)`` or a per-pixel-and-class weight
            ``(B, C, M)``; it carries no gradient.
        smooth: added to numerator and denominator.
        squared: square the probabilities in the denominator.
        batch: sum over the batch before the ratio (one score per class).
        target_probs: optionally ``p_{i, y_i}`` ``(B, M)``, already computed (shared with
            other terms); by default gathered from ``probs``.

    Returns:
        Dice scores ``(B, C)``, or ``(1, C)`` when ``batch``.
    """
    if weight is not None and weight.ndim == 3:
        return _dice_from_sums(*_class_weighted_sums(probs, target, weight, squared), smooth, batch)
    num_images, num_classes, _ = probs.shape
    p_target = target_probs
    if p_target is None:
        p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    pixel_weight = None if weight is None else weight.unsqueeze(1)
    prob_sum = power_sum(probs, pixel_weight, squared)
    if weight is not None:
        p_target = p_target * weight
    intersection = probs.new_zeros(num_images, num_classes).scatter_add(1, target, p_target)
    target_sum = class_counts(target, num_classes, weight, probs.dtype)
    return _dice_from_sums(intersection, target_sum, prob_sum, smooth, batch)


class _WeightedSquareSum(torch.autograd.Function):
    """``sum_m w * p^2`` over the last axis, ``(B, C, M) -> (B, C)``; ``w`` (broadcastable to
    ``p``, or None for 1) carries no gradient. Backward ``2 w p g`` in one pass (autograd's
    ``p * p`` takes two products and a sum)."""

    @staticmethod
    def forward(ctx, probs: Tensor, weight: Tensor | None) -> Tensor:  # noqa: ANN205
        ctx.save_for_backward(probs, weight)
        squares = probs * probs
        if weight is not None:
            squares.mul_(weight)
        return squares.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        probs, weight = ctx.saved_tensors
        scale = (2.0 * grad).unsqueeze(-1)
        if weight is not None:
            scale = scale * weight
        return probs * scale, None


class _ExpSquareSum(torch.autograd.Function):
    """``sum_m w * exp(2 x)`` over the last axis (``x`` a log-probability, so ``sum w p^2``),
    ``(B, C, M) -> (B, C)``; backward ``2 w p^2 g``: one full-size temporary each way."""

    @staticmethod
    def forward(ctx, log_probs: Tensor, weight: Tensor | None) -> Tensor:  # noqa: ANN205
        squares = (2.0 * log_probs).exp_()
        if weight is not None:
            squares.mul_(weight)
        ctx.save_for_backward(squares)
        return squares.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        (squares,) = ctx.saved_tensors
        return squares * (2.0 * grad).unsqueeze(-1), None


def exp_square_sum(log_probs: Tensor, weight: Tensor | None) -> Tensor:
    """``(B, C)``: ``sum_m w exp(2 log_probs)`` (``= sum w p^2``) over the last axis; ``weight``
    broadcastable (no gradient) or None."""
    if log_probs.requires_grad and torch.is_grad_enabled():
        return _ExpSquareSum.apply(log_probs, None if weight is None else weight.detach())
    squares = (2.0 * log_probs).exp()
    return (squares if weight is None else squares * weight).sum(-1)


def power_sum(probs: Tensor, weight: Tensor | None, squared: bool) -> Tensor:
    """``(B, C)``: ``sum_m w p^2`` (``squared``) or ``sum_m w p`` over the last axis; ``weight``
    broadcastable to ``probs`` (no gradient) or None."""
    if not squared:
        return (probs if weight is None else probs * weight).sum(-1)
    if probs.requires_grad and torch.is_grad_enabled():
        return _WeightedSquareSum.apply(probs, None if weight is None else weight.detach())
    squares = probs * probs
    return (squares if weight is None else squares * weight).sum(-1)


def class_counts(
    target: Tensor, num_classes: int, weight: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """``(B, C)``: ``sum_i w_i [y_i = c]`` per image (no gradient), one ``bincount``."""
    num_images = target.shape[0]
    offsets = torch.arange(num_images, device=target.device).unsqueeze(1) * num_classes
    counts = torch.bincount(
        (target + offsets).reshape(-1),
        weights=None if weight is None else weight.detach().reshape(-1).to(dtype),
        minlength=num_images * num_classes,
    )
    return counts.to(dtype).reshape(num_images, num_classes)


def _class_weighted_sums(
    probs: Tensor, target: Tensor, weight: Tensor, squared: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The three Dice sums ``(B, C)`` with a per-pixel-and-class weight ``(B, C, M)``."""
    denom_p = probs * probs if squared else probs
    classes = torch.arange(probs.shape[1], device=target.device).view(1, -1, 1)
    weighted_onehot = weight * (target.unsqueeze(1) == classes)
    return (weighted_onehot * probs).sum(-1), weighted_onehot.sum(-1), (denom_p * weight).sum(-1)


def _dice_ratio_terms(
    intersection: Tensor, target_sum: Tensor, prob_sum: Tensor, smooth: float, batch: bool
) -> tuple[Tensor, Tensor]:
    """Numerator ``2 I + s`` and denominator ``T + P + s`` from per image and class sums
    ``(B, C)`` (pooled over the batch first when ``batch``)."""
    if batch:
        intersection = intersection.sum(0, keepdim=True)
        target_sum = target_sum.sum(0, keepdim=True)
        prob_sum = prob_sum.sum(0, keepdim=True)
    return 2.0 * intersection + smooth, target_sum + prob_sum + smooth


def _dice_from_sums(
    intersection: Tensor, target_sum: Tensor, prob_sum: Tensor, smooth: float, batch: bool
) -> Tensor:
    """``(2 I + s) / (T + P + s)``: the ratio of :func:`_dice_ratio_terms`."""
    numerator, denominator = _dice_ratio_terms(intersection, target_sum, prob_sum, smooth, batch)
    return numerator / denominator


def dice_loss_from_scores(
    scores: Tensor, include_background: bool, counted: Tensor | None = None
) -> Tensor:
    """``1 - mean`` of the Dice scores ``(B, C)`` over classes then images.

    Args:
        scores: ``(B, C)`` per image (or ``(1, C)`` batch-pooled) Dice scores.
        include_background: keep class 0.
        counted: optional bool ``(B,)``: the images that enter the mean (those with at least one
            pixel that is not ``ignore_index``). With none counted the loss is 0 (with a zero
            gradient path).
    """
    if not include_background:
        scores = scores[:, 1:]
    if counted is not None and not bool(counted.all()):
        if not bool(counted.any()):
            return scores.sum() * 0.0
        scores = scores[counted]
    return 1.0 - scores.mean()


class _LogProbDiceLoss(torch.autograd.Function):
    """``1 - mean`` soft Dice score of log-probabilities, with its gradient in closed form.

    Forward: ``p = exp(x)``, the sums of :func:`soft_dice_score` (no pixel weights) and
    :func:`dice_loss_from_scores`. With ``N = 2 I + s`` and ``D = T + P + s`` per image (or
    pooled) and class, and ``w = dL/dscore`` (``-g / n`` for each of the ``n`` scores in the
    mean, 0 for an excluded background), the gradient with respect to ``x = log p`` is::

        dL/dx_ci = p_ci dL/dp_ci = -w_c N_c / D_c^2 * k p_ci^e + [y_i = c] 2 w_c / D_c * p_ci

    with ``(k, e) = (2, 2)`` for squared denominators and ``(1, 1)`` otherwise: one full-size
    product and one scatter at the target entries (autograd's chain through ``exp``, the
    squares, the gather and the scatter takes about eight passes). Not twice differentiable.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,
        log_probs: Tensor,
        target: Tensor,
        smooth: float,
        squared: bool,
        batch: bool,
        include_background: bool,
    ):
        num_images, num_classes, _ = log_probs.shape
        probs = log_probs.exp()
        power = probs * probs if squared else probs
        p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)
        intersection = probs.new_zeros(num_images, num_classes).scatter_add_(1, target, p_target)
        target_sum = class_counts(target, num_classes, None, probs.dtype)
        numerator, denominator = _dice_ratio_terms(
            intersection, target_sum, power.sum(-1), smooth, batch
        )
        scores = numerator / denominator
        used = scores if include_background else scores[:, 1:]
        ctx.save_for_backward(power, target, p_target, numerator, denominator)
        ctx.squared, ctx.include_background, ctx.count = squared, include_background, used.numel()
        return 1.0 - used.mean()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        power, target, p_target, numerator, denominator = ctx.saved_tensors
        d_score = torch.full_like(numerator, 1.0 / ctx.count) * -grad
        if not ctx.include_background:
            d_score[:, 0] = 0.0
        power_coef = -d_score * numerator / denominator.square() * (2.0 if ctx.squared else 1.0)
        target_coef = (2.0 * d_score / denominator).expand(power.shape[0], -1)
        grad_log_probs = power * power_coef.unsqueeze(-1)
        at_target = target_coef.gather(1, target) * p_target
        grad_log_probs.scatter_add_(1, target.unsqueeze(1), at_target.unsqueeze(1))
        return grad_log_probs, None, None, None, None, None


def log_prob_dice_loss(
    log_probs: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-5,
    squared: bool = True,
    batch: bool = False,
    include_background: bool = True,
) -> Tensor:
    """Soft Dice loss ``1 - mean_{b, c} dice_bc`` (:func:`soft_dice_score` without weights, then
    :func:`dice_loss_from_scores`) of log-probabilities ``(B, C, M)`` and targets ``(B, M)``.

    Equal to ``dice_loss_from_scores(soft_dice_score(log_probs.exp(), target, ...))``; with a
    gradient it runs as one autograd node whose backward is one full-size product and one
    scatter (:class:`_LogProbDiceLoss`); the topK Dice applies it to the selected pixels.
    """
    if log_probs.requires_grad and torch.is_grad_enabled():
        return _LogProbDiceLoss.apply(log_probs, target, smooth, squared, batch, include_background)
    scores = soft_dice_score(log_probs.exp(), target, smooth=smooth, squared=squared, batch=batch)
    return dice_loss_from_scores(scores, include_background)


class _DiceBase(SegmentationLoss):
    """Shared arguments of the Dice family (MONAI's names)."""

    def __init__(
        self,
        include_background: bool = True,
        smooth: float = 1e-5,
        squared: bool = True,
        batch: bool = False,
        ignore_index: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(ignore_index=ignore_index, validate_args=validate_args)
        self.include_background = include_background
        self.smooth = check_non_negative("smooth", smooth)
        self.squared = squared
        self.batch = batch

    def check_classes(self, inputs: PreparedInputs) -> None:
        if not self.include_background and inputs.num_classes < 2:
            raise ValueError(
                "Expected at least 2 classes in `logits` with include_background=False, "
                f"but got {inputs.num_classes}"
            )

    def dice_loss(
        self,
        probs: Tensor,
        target: Tensor,
        weight: Tensor | None,
        valid: Tensor | None = None,
        target_probs: Tensor | None = None,
    ) -> Tensor:
        """Dice loss of ``probs`` ``(B, C, M)`` with pixel weights ``weight``; ``valid`` (bool
        ``(B, M)``, or None for all) says which images count in the per-image mean: an image
        whose pixels are all ``ignore_index`` does not (with ``batch=True`` it adds nothing to
        the pooled sums anyway). ``target_probs``: ``p_y`` ``(B, M)`` if already computed."""
        scores = soft_dice_score(
            probs,
            target,
            weight,
            smooth=self.smooth,
            squared=self.squared,
            batch=self.batch,
            target_probs=target_probs,
        )
        return self.loss_from_scores(scores, valid)

    def loss_from_scores(self, scores: Tensor, valid: Tensor | None) -> Tensor:
        counted = None if valid is None or self.batch else valid.any(-1)
        return dice_loss_from_scores(scores, self.include_background, counted)

    def extra_repr(self) -> str:
        parts = [
            f"include_background={self.include_background}",
            f"smooth={self.smooth}",
            f"squared={self.squared}",
            f"batch={self.batch}",
        ]
        base = super().extra_repr()
        return ", ".join(parts + ([base] if base else []))


class SoftDiceLoss(_DiceBase):
    """Soft Dice loss, the poster's formula with K = 100%.

    ``loss = 1 - mean_{b, c} (2*sum(y*p) + smooth) / (sum(y^2) + sum(p^2) + smooth)`` with
    ``p = softmax(logits)`` over the class axis and sums over the pixels of one image (over the
    whole batch when ``batch=True``). Equals MONAI's ``DiceLoss(softmax=True, to_onehot_y=True,
    squared_pred=True, smooth_nr=smooth, smooth_dr=smooth)``.

    A class absent from an image's ground truth scores ``smooth / (sum(p^2) + smooth)``, so
    predicting it is penalised (towards loss 1) and not predicting it scores 1; loss and
    gradient stay finite.

    Args:
        include_background: keep class 0 in the mean over classes.
        smooth: added to numerator and denominator (MONAI's ``smooth_nr = smooth_dr``).
        squared: square the probabilities and targets in the denominator.
        batch: sum over the batch before the ratio (TransUNet's ``DiceLoss``; the presets'
            choice). ``False`` (MONAI's default): one ratio per image and class, then the mean
            over the images that hold at least one pixel that is not ``ignore_index``.
        ignore_index: target value removed from every sum.
        validate_args: check target values (see :class:`~losses.base.SegmentationLoss`).

    Shapes:
        logits ``(B, C, *spatial)`` float, target ``(B, *spatial)`` int -> scalar.

    Raises:
        ValueError: ``smooth < 0``; at call time a shape mismatch or a target value out of range.
        TypeError: integer logits.

    Reference: Milletari et al., "V-Net", 3DV 2016.
    """

    def compute(self, inputs: PreparedInputs) -> Tensor:
        self.check_classes(inputs)
        if inputs.share_log_probs and self.squared:
            return self._from_log_probs(inputs)
        probs = inputs.probs()
        weight = None if inputs.valid is None else inputs.valid.to(probs.dtype)
        return self.dice_loss(probs, inputs.target, weight, inputs.valid, inputs.target_probs())

    def plan(self, inputs: PreparedInputs) -> None:
        """With a shared log-softmax, have ``sum w p^2`` computed in the node that gathers the
        CE's target entries (:meth:`~losses.base.PreparedInputs.plan_square_sum`)."""
        if inputs.share_log_probs and self.squared:
            inputs.plan_square_sum()

    def _from_log_probs(self, inputs: PreparedInputs) -> Tensor:
        """The same Dice from the shared log-softmax without materialising the softmax:
        ``sum p^2 = sum exp(2 log p)`` in one pass (:func:`exp_square_sum`) and
        ``sum y p = scatter(exp(log p_y))``."""
        log_probs, target, valid = inputs.log_probs(), inputs.target, inputs.valid
        weight = None if valid is None else valid.to(log_probs.dtype)
        p_target = inputs.target_probs()
        prob_sum = inputs.planned_square_sum()  # computed with the CE's gather (see plan)
        if prob_sum is None:
            prob_sum = exp_square_sum(log_probs, None if weight is None else weight.unsqueeze(1))
        if weight is not None:
            p_target = p_target * weight
        num_images, num_classes = log_probs.shape[:2]
        intersection = log_probs.new_zeros(num_images, num_classes).scatter_add(1, target, p_target)
        target_sum = class_counts(target, num_classes, weight, log_probs.dtype)
        scores = _dice_from_sums(intersection, target_sum, prob_sum, self.smooth, self.batch)
        return self.loss_from_scores(scores, valid)


class PixelwiseModulatedDiceLoss(_DiceBase):
    """Pixel-wise modulated Dice loss (Hosseini, arXiv 2506.15744).

    The soft Dice with a per pixel and class factor ``m_ic = |y_ic - stopgrad(p_ic)|^gamma_c`` in
    every sum::

        loss = 1 - mean_{b, c} (2*sum(m*y*p) + smooth) / (sum(m*y^2) + sum(m*p^2) + smooth)

    Easy pixels (``p`` close to ``y``) get a small factor, hard ones a factor near 1, so the
    Dice concentrates on the difficult pixels without any selection. ``gamma = 0`` is exactly
    :class:`SoftDiceLoss`. A class absent from the ground truth behaves as in the soft Dice.

    Args:
        gamma: focusing exponent, one number or one per class (``>= 0``).
        include_background, smooth, squared, batch, ignore_index, validate_args: as in
            :class:`SoftDiceLoss`.

    Raises:
        ValueError: a negative ``gamma``, or per-class ``gamma`` whose length is not the number
            of classes (at call time).
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
        self.modulated = any(g > 0 for g in gammas)
        self.register_buffer("gamma", torch.tensor(gammas, dtype=torch.float32))

    def compute(self, inputs: PreparedInputs) -> Tensor:
        self.check_classes(inputs)
        if self.per_class and self.gamma.numel() != inputs.num_classes:
            raise ValueError(
                f"Expected one `gamma` per class ({inputs.num_classes}), "
                f"but got {self.gamma.numel()}"
            )
        probs, target, valid = inputs.probs(), inputs.target, inputs.valid
        p_target = inputs.target_probs()
        if not self.modulated:
            weight = None if valid is None else valid.to(probs.dtype)
            return self.dice_loss(probs, target, weight, valid, p_target)
        return self.loss_from_scores(
            _dice_from_sums(
                *self._modulated_sums(probs, p_target, target, valid), self.smooth, self.batch
            ),
            valid,
        )

    def _modulated_sums(
        self, probs: Tensor, p_target: Tensor, target: Tensor, valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The three sums ``(B, C)`` of the PM Dice without a ``(B, C, N)`` one-hot or factor.

        With ``q = stopgrad(p)`` the factor is ``q_c^gamma_c`` off the target class and
        ``(1 - q_y)^gamma_y`` on it, so ``sum_i m_ic p_ic^2`` is the full sum
        ``sum_i q_ic^gamma_c p_ic^2`` plus, at each pixel's target class, the correction
        ``((1 - q_y)^gamma_y - q_y^gamma_y) p_y^2``: per-pixel ``(B, N)`` work, scattered into
        the classes. The intersection and target sums need only ``p_y`` and ``m_iy``.
        """
        num_images, num_classes, _ = probs.shape
        dtype = probs.dtype
        with torch.no_grad():
            q, q_target = probs.detach(), p_target.detach()
            if self.per_class:
                gamma_full = self.gamma.to(dtype).view(1, -1, 1)
                gamma_target = self.gamma.to(dtype)[target]
            else:
                gamma_full = gamma_target = float(self.gamma[0])
            factor = q if isinstance(gamma_full, float) and gamma_full == 1.0 else q.pow(gamma_full)
            m_target = (1.0 - q_target).pow(gamma_target)
            wrong = q_target.pow(gamma_target)
            if valid is not None:
                factor = factor * valid.unsqueeze(1)
                m_target = m_target * valid
                wrong = wrong * valid
        denom_target = p_target * p_target if self.squared else p_target
        zeros = probs.new_zeros(num_images, num_classes)
        prob_sum = power_sum(probs, factor, self.squared) + zeros.scatter_add(
            1, target, (m_target - wrong) * denom_target
        )
        intersection = zeros.scatter_add(1, target, m_target * p_target)
        target_sum = class_counts(target, num_classes, m_target, dtype)
        return intersection, target_sum, prob_sum

    def extra_repr(self) -> str:
        return f"gamma={self.gamma.tolist()}, " + super().extra_repr()
