"""Input checking and the common base class of every segmentation loss.

Every loss in this package is called as ``loss(logits, target)``:

- ``logits``: float tensor ``(B, C, *spatial)`` (2D or 3D), unnormalised class scores;
- ``target``: integer tensor ``(B, *spatial)`` (or ``(B, 1, *spatial)``) of class indices in
  ``[0, C)``, or ``ignore_index`` for pixels that take no part in any term;

and returns a scalar. The maths runs in float32 even under bf16/fp16 autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(eq=False)
class PreparedInputs:
    """Flattened, checked inputs and the quantities that the loss terms share.

    A :class:`~losses.compound.CompoundLoss` prepares the inputs once per call and hands the same
    object to each of its terms, so what one term computes (the log-softmax, the per-pixel CE,
    the softmax) the others reuse, also in the backward pass (one graph through one
    log-softmax). Each quantity is computed on first use and kept for the rest of the call.

    Attributes:
        logits: ``(B, C, N)``, ``N`` the number of pixels (voxels) per image; float32 (float64
            stays float64, half precision is promoted to float32).
        target: int64 ``(B, N)``; ignored pixels hold class 0 so that they can index safely.
        valid: bool ``(B, N)`` marking the pixels that count, or ``None`` when all of them do.
        share_log_probs: whether some term needs the full log-softmax with its gradient (the
            CE family). If so the probabilities are ``exp(log_probs)`` and the ranking CE is
            read off ``log_probs``; if not, a Dice-only loss takes the plain softmax and ranks
            pixels with one no-grad CE pass.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor | None
    share_log_probs: bool = False
    _cache: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _planned: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _square_sum_planned: bool = field(default=False, repr=False)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def _get(self, key: str, make: Callable[[], Tensor], grad_free: bool = False) -> Tensor:
        """The cached ``key``, made on first use. A quantity that carries a gradient is not
        cached when made under ``torch.no_grad`` (a later term would get it without one)."""
        value = self._cache.get(key)
        if value is None:
            value = make()
            if grad_free or torch.is_grad_enabled():
                self._cache[key] = value
        return value

    def log_probs(self) -> Tensor:
        """``log softmax(logits)`` over classes, ``(B, C, N)``, with gradient."""
        return self._get("log_probs", lambda: self.logits.log_softmax(1))

    def target_log_probs(self) -> Tensor:
        """``log p_{i, y_i}``, ``(B, N)``, with gradient (minus the per-pixel CE).

        When pixel selections (:meth:`plan_pixels`) or the Dice's square sum
        (:meth:`plan_square_sum`) were planned, one autograd node takes the target entries,
        every selection's entries and the square sum from the log-softmax, so the backward pass
        writes all their gradients into one buffer (no second full-size gradient to add).
        """
        planned = self._planned or self._square_sum_planned
        if "target_log_probs" not in self._cache and planned and torch.is_grad_enabled():
            keys = list(self._planned)
            squares = self._square_sum_planned
            outputs = _GatherLogProbs.apply(
                self.log_probs(),
                self.target,
                self._cache.get("ranking_ce"),  # the target entries' values, if gathered
                squares,
                None if self.valid is None else self.valid.to(self.logits.dtype).unsqueeze(1),
                *(self._planned[key] for key in keys),
            )
            self._cache["target_log_probs"] = outputs[0]
            if squares:
                self._cache["square_sum"] = outputs[1]
            for key, selected in zip(keys, outputs[1 + squares :], strict=True):
                self._cache["selected:" + key] = selected
        return self._get(
            "target_log_probs",
            lambda: self.log_probs().gather(1, self.target.unsqueeze(1)).squeeze(1),
        )

    def plan_pixels(self, key: str, indices: Tensor) -> None:
        """Announce that :meth:`selected_log_probs` will be asked for ``indices`` ``(B, K)``
        (pixel indices per image), so that it shares the gather of :meth:`target_log_probs`.
        Ignored once the target entries were gathered."""
        if "target_log_probs" not in self._cache:
            self._planned[key] = indices

    def plan_square_sum(self) -> None:
        """Announce that :meth:`planned_square_sum` will be asked for, so that the soft Dice's
        ``sum_n w p^2`` is computed in the node of :meth:`target_log_probs` (its backward then
        starts the shared gradient buffer instead of a separate full-size gradient). Ignored
        once the target entries were gathered."""
        if "target_log_probs" not in self._cache:
            self._square_sum_planned = True

    def planned_square_sum(self) -> Tensor | None:
        """``sum_n w_n exp(2 log p_cn)`` ``(B, C)`` with ``w`` the valid pixels (1 without
        ``ignore_index``), with gradient, if :meth:`plan_square_sum` was called; else None."""
        if not self._square_sum_planned:
            return None
        self.target_log_probs()  # the shared node fills "square_sum" (when grad is enabled)
        return self._cache.get("square_sum")

    def planned_pixels(self, key: str) -> Tensor | None:
        """The indices planned under ``key``, or None."""
        return self._planned.get(key)

    def selected_log_probs(self, key: str, indices: Tensor) -> Tensor:
        """``log_probs[b, :, indices[b]]``, ``(B, C, K)``, with gradient."""
        if key in self._planned:
            self.target_log_probs()  # the shared gather fills "selected:<key>"
        return self._get("selected:" + key, lambda: gather_pixels(self.log_probs(), indices))

    def probs(self) -> Tensor:
        """``softmax(logits)``, ``(B, C, N)``, with gradient: ``exp(log_probs)`` when the
        log-softmax is shared, else the plain softmax."""
        if self.share_log_probs:
            return self._get("probs", lambda: self.log_probs().exp())
        return self._get("probs", lambda: self.logits.softmax(1))

    def target_probs(self) -> Tensor:
        """``p_{i, y_i}``, ``(B, N)``, with gradient."""
        if self.share_log_probs:
            return self._get("target_probs", lambda: self.target_log_probs().exp())
        return self._get(
            "target_probs", lambda: self.probs().gather(1, self.target.unsqueeze(1)).squeeze(1)
        )

    def ranking_ce(self) -> Tensor:
        """Per-pixel CE ``-log p_{i, y_i}``, ``(B, N)``, without gradient (to rank pixels).

        With a shared log-softmax it is read off it (the gathered target entries when they
        exist, else a no-grad gather that leaves them to be gathered with the selections).
        """
        if self.share_log_probs:

            def from_log_probs() -> Tensor:
                if "target_log_probs" in self._cache:
                    return -self._cache["target_log_probs"].detach()
                log_probs = self.log_probs().detach()  # cached with its gradient for the terms
                return -log_probs.gather(1, self.target.unsqueeze(1)).squeeze(1)

            return self._get("ranking_ce", from_log_probs, grad_free=True)

        def make() -> Tensor:
            with torch.no_grad():
                return F.cross_entropy(self.logits, self.target, reduction="none")

        return self._get("ranking_ce", make, grad_free=True)


def gather_pixels(values: Tensor, indices: Tensor) -> Tensor:
    """``values[b, :, indices[b]]``: ``(B, C, N)`` and ``(B, K)`` -> ``(B, C, K)``.

    One gather with the index broadcast over the classes (no copy of the index; with torch
    2.14 on the CPU as fast as a row-wise gather on the ``(B*C, N)`` view with a repeated
    index, which also has to build that index).
    """
    return values.gather(2, indices.unsqueeze(1).expand(-1, values.shape[1], -1))


class _GatherLogProbs(torch.autograd.Function):
    """``(log_probs (B, C, N), target (B, N), ranking_ce, squares, weight, *indices (B, K_j))``
    -> ``(log_probs at the targets (B, N), [square sum (B, C)], *log_probs at each selection
    (B, C, K_j))``.

    The same values as separate gathers (and, with ``squares``, the soft Dice's
    ``sum_n w_n exp(2 log p_cn)``, ``w`` = ``weight`` (B, 1, N) or 1); the backward pass
    writes every output's gradient into ONE buffer (the square sum's gradient
    ``2 w exp(2 log p) g``, or zeros, then scatter-adds of the gathers' gradients) instead of
    one full-size buffer per output plus their sum. ``ranking_ce``: ``-log_probs`` at the
    targets already gathered without gradient (reused instead of a second gather), or None.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,
        log_probs: Tensor,
        target: Tensor,
        ranking_ce: Tensor | None,
        squares: bool,
        weight: Tensor | None,
        *indices: Tensor,
    ):
        ctx.set_materialize_grads(False)
        ctx.shape = log_probs.shape
        ctx.squares = squares
        if ranking_ce is None:
            outputs = [log_probs.gather(1, target.unsqueeze(1)).squeeze(1)]
        else:
            outputs = [-ranking_ce]
        saved_squares = None
        if squares:
            saved_squares = (2.0 * log_probs).exp_()
            if weight is not None:
                saved_squares.mul_(weight)
            outputs.append(saved_squares.sum(-1))
        ctx.save_for_backward(target, saved_squares, *indices)
        outputs += [gather_pixels(log_probs, index) for index in indices]
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):  # noqa: ANN205
        target, saved_squares, *indices = ctx.saved_tensors
        grad_target = grads[0]
        grad_squares = grads[1] if ctx.squares else None
        grad_selected = grads[1 + ctx.squares :]
        none_after = (None, None, None, None, *(None for _ in indices))
        reference = next((g for g in grads if g is not None), None)
        if reference is None:
            return (None, *none_after)
        if grad_squares is not None:  # d/dx sum_n w exp(2 x) = 2 w exp(2 x)
            buffer = saved_squares * (2.0 * grad_squares).unsqueeze(-1)
        else:
            buffer = reference.new_zeros(ctx.shape)
        if grad_target is not None:
            buffer.scatter_add_(1, target.unsqueeze(1), grad_target.unsqueeze(1))
        for index, grad in zip(indices, grad_selected, strict=True):
            if grad is not None:
                buffer.scatter_add_(2, index.unsqueeze(1).expand_as(grad), grad)
        return (buffer, *none_after)


def prepare_inputs(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> PreparedInputs:
    """Check ``logits``/``target`` and flatten them to ``(B, C, N)`` / ``(B, N)``.

    Raises:
        TypeError: if ``logits`` is not floating point or ``target`` is not an integer tensor.
        ValueError: if the shapes do not match, the batch is empty (no image or no pixel), or
            (only checked when ``validate_args``) ``logits`` holds NaN or infinite values or a
            target value lies outside ``[0, C)`` and is not ``ignore_index``.
    """
    if not isinstance(logits, Tensor) or not torch.is_floating_point(logits):
        dtype = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"Expected `logits` to be a floating point tensor, but got {dtype}")
    if not isinstance(target, Tensor) or torch.is_floating_point(target) or target.is_complex():
        dtype = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(
            f"Expected `target` to be an integer tensor of class indices, but got {dtype}"
        )
    if logits.ndim < 3:
        raise ValueError(
            f"Expected `logits` of shape (B, C, *spatial) with at least one spatial dimension, "
            f"but got {tuple(logits.shape)}"
        )
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target.squeeze(1)
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"Expected `target` of shape (B, *spatial) = {expected} to match `logits` of shape "
            f"{tuple(logits.shape)}, but got target of shape {tuple(target.shape)}"
        )
    if logits.numel() == 0:
        raise ValueError(
            f"Expected non-empty `logits` and `target` (at least one image, class and pixel), "
            f"but got logits of shape {tuple(logits.shape)} and target of shape "
            f"{tuple(target.shape)}"
        )
    if validate_args:
        check_finite_logits(logits)
    batch, num_classes = logits.shape[:2]
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half precision in, float32 maths
    logits = logits.reshape(batch, num_classes, -1)
    target = target.long().reshape(batch, -1)

    valid = None
    if ignore_index is not None:
        ignored = target == ignore_index
        if bool(ignored.any()):
            valid = ~ignored
            target = target.masked_fill(ignored, 0)
    if validate_args and target.numel() > 0:
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            allowed = f"[0, {num_classes})"
            if ignore_index is not None:
                allowed += f" or ignore_index={ignore_index}"
            raise ValueError(
                f"Expected `target` values in {allowed} for {num_classes} classes, "
                f"but found value {bad}"
            )
    return PreparedInputs(logits, target, valid)


def check_finite_logits(logits: Tensor) -> None:
    """Raise ValueError if ``logits`` holds a NaN or an infinite value.

    One reduction in the common case: a sum is finite only if every term is, so the
    element-wise test runs only when the sum is not (it may also have overflowed).
    """
    if bool(torch.isfinite(logits.sum())):
        return
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    num_nan = int(torch.isnan(logits).sum())
    num_inf = int((~finite).sum()) - num_nan
    raise ValueError(
        f"Expected `logits` to be finite, but found {num_nan} NaN and {num_inf} infinite "
        f"values in logits of shape {tuple(logits.shape)}"
    )


def check_percent(name: str, value: float) -> float:
    """Return ``value`` as float if it is a percentage in ``(0, 100]``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"Expected argument `{name}` to be a number, but got {type(value).__name__}"
        )
    if not 0 < value <= 100:  # also False for NaN
        raise ValueError(f"Expected argument `{name}` to be in (0, 100], but got {value}")
    return float(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError."""
    if value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {choices}, but got {value!r}")
    return value


def check_non_negative(name: str, value: float) -> float:
    """Return ``value`` as float if it is a finite number >= 0, else raise ValueError/TypeError
    (NaN and infinity included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"Expected argument `{name}` to be a number, but got {type(value).__name__}"
        )
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Expected argument `{name}` to be >= 0 and finite, but got {value}")
    return float(value)


class SegmentationLoss(nn.Module):
    """Base class: checks the inputs, disables autocast and calls :meth:`compute`.

    Subclasses implement ``compute(inputs: PreparedInputs) -> Tensor`` and take what they need
    from ``inputs`` (``log_probs()``, ``probs()``, ``target_log_probs()``, ``ranking_ce()``...)
    so that terms of a :class:`~losses.compound.CompoundLoss`, which prepares the inputs once
    and calls ``compute`` of each term on the same object, share those computations; the checks
    run once per step. A subclass that needs the full log-softmax with its gradient sets
    ``uses_log_probs = True``.

    Args:
        ignore_index: target value whose pixels are removed from every term, or ``None``.
        validate_args: check that target values lie in ``[0, C)`` (one pass over the target;
            turn off to save a device synchronisation per call).
    """

    #: whether :meth:`compute` needs the full log-softmax with gradient (the CE family)
    uses_log_probs: bool = False

    def __init__(self, ignore_index: int | None = None, validate_args: bool = True) -> None:
        super().__init__()
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise TypeError(
                f"Expected argument `ignore_index` to be an int or None, but got {ignore_index!r}"
            )
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    def prepare(self, logits: Tensor, target: Tensor) -> PreparedInputs:
        return prepare_inputs(logits, target, self.ignore_index, self.validate_args)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        inputs = self.prepare(logits, target)
        inputs.share_log_probs = self.uses_log_probs
        with torch.autocast(device_type=inputs.logits.device.type, enabled=False):
            return self.compute(inputs)

    def compute(self, inputs: PreparedInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def plan(self, inputs: PreparedInputs) -> None:
        """Called by a :class:`~losses.compound.CompoundLoss` on every term before any
        ``compute``: a term may announce what it will ask of ``inputs`` so that it can be
        computed together with the other terms' needs (e.g. a pixel selection). No-op here."""

    def set_step(self, step: int) -> None:
        """Tell the loss the current optimisation step (used by scheduled losses only)."""

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}" if self.ignore_index is not None else ""


def masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``values`` over the pixels marked in ``valid`` (all when ``None``).

    Returns 0 (with a gradient path) when no pixel is valid.
    """
    if valid is None:
        return values.mean()
    weight = valid.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)
