"""Input checking and the common base class of every segmentation loss.

Every loss in this package is called as ``loss(logits, target)``:

- ``logits``: float tensor ``(B, C, *spatial)`` (2D or 3D), unnormalised class scores;
- ``target``: integer tensor ``(B, *spatial)`` (or ``(B, 1, *spatial)``) of class indices in
  ``[0, C)``, or ``ignore_index`` for pixels that take no part in any term;

and returns a scalar. The maths runs in float32 even under bf16/fp16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PreparedInputs:
    """Flattened, checked inputs shared by the loss functions.

    Attributes:
        logits: ``(B, C, N)``, ``N`` the number of pixels (voxels) per image; float32 (float64
            stays float64, half precision is promoted to float32).
        target: int64 ``(B, N)``; ignored pixels hold class 0 so that they can index safely.
        valid: bool ``(B, N)`` marking the pixels that count, or ``None`` when all of them do.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor | None

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]


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

    Subclasses implement ``compute(inputs: PreparedInputs) -> Tensor``. A
    :class:`~losses.compound.CompoundLoss` prepares the inputs once and calls ``compute`` of
    each of its terms directly, so the checks run once per step.

    Args:
        ignore_index: target value whose pixels are removed from every term, or ``None``.
        validate_args: check that target values lie in ``[0, C)`` (one pass over the target;
            turn off to save a device synchronisation per call).
    """

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
        with torch.autocast(device_type=inputs.logits.device.type, enabled=False):
            return self.compute(inputs)

    def compute(self, inputs: PreparedInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

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
