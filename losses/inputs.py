"""Checks shared by every loss: the ``(logits, target)`` inputs and the constructor arguments.

:func:`flatten_inputs` turns ``logits`` ``(B, C, *spatial)`` and ``target`` ``(B, *spatial)`` (or
``(B, 1, *spatial)``) into ``(B, C, N)`` float32 (float64 stays float64) and ``(B, N)`` int64,
with the pixels equal to ``ignore_index`` marked in a bool ``valid`` ``(B, N)``. The argument
checks raise ``ValueError``/``TypeError`` in torchmetrics' wording:
"Expected argument `k` to be in (0, 100], but got 0".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def flatten_inputs(
    logits: Tensor, target: Tensor, ignore_index: int | None = None, validate_args: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check and flatten the inputs of a loss.

    Returns:
        ``(logits (B, C, N), target (B, N), valid)``. ``valid`` is None when no pixel equals
        ``ignore_index``; else a bool ``(B, N)`` that is False at the ignored pixels, whose
        ``target`` entries are set to 0 so that they can index (mask them out with ``valid``).

    Raises:
        TypeError: ``logits`` not floating point, or ``target`` not an integer tensor.
        ValueError: shapes that do not match, an empty batch (no image, class or pixel), and
            (only when ``validate_args``) a NaN or infinite logit or a target value outside
            ``[0, C)`` that is not ``ignore_index``.
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
    if validate_args:
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= num_classes:
            allowed = f"[0, {num_classes})"
            if ignore_index is not None:
                allowed += f" or ignore_index={ignore_index}"
            raise ValueError(
                f"Expected `target` values in {allowed} for {num_classes} classes, "
                f"but found value {low if low < 0 else high}"
            )
    return logits, target, valid


def check_finite_logits(logits: Tensor) -> None:
    """Raise ValueError if ``logits`` holds a NaN or an infinite value (one reduction when all
    are finite: the element-wise test runs only when the sum is not finite)."""
    if bool(torch.isfinite(logits.sum())):
        return
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return  # the sum overflowed
    num_nan = int(torch.isnan(logits).sum())
    num_inf = int((~finite).sum()) - num_nan
    raise ValueError(
        f"Expected `logits` to be finite, but found {num_nan} NaN and {num_inf} infinite "
        f"values in logits of shape {tuple(logits.shape)}"
    )


def check_ignore_index(ignore_index: int | None) -> int | None:
    """Return ``ignore_index`` if it is an int or None, else raise TypeError."""
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise TypeError(
            f"Expected argument `ignore_index` to be an int or None, but got {ignore_index!r}"
        )
    return ignore_index


def check_percent(name: str, value: float) -> float:
    """Return ``value`` as float if it is a percentage in ``(0, 100]``, else raise."""
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
    """Return ``value`` as float if it is a finite number >= 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"Expected argument `{name}` to be a number, but got {type(value).__name__}"
        )
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Expected argument `{name}` to be >= 0 and finite, but got {value}")
    return float(value)


def check_class_weights(name: str, values: object) -> Tensor | None:
    """Per-class weights as a float32 tensor ``(C,)`` (None stays None), else raise."""
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


def check_num_weights(name: str, weights: Tensor | None, num_classes: int) -> None:
    """Raise ValueError if per-class ``weights`` do not hold one value per class."""
    if weights is not None and weights.numel() != num_classes:
        raise ValueError(
            f"Expected argument `{name}` to have one value per class ({num_classes}), "
            f"but got {weights.numel()}"
        )
