"""How the model calls its loss: the dataset's ignore label set on the loss, and where a failing
loss call happened (global step, batch, case ids) for the error message."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["apply_ignore_index", "batch_context"]


def apply_ignore_index(loss: nn.Module, ignore_index: int | None, num_classes: int) -> int | None:
    """Set ``ignore_index`` on every (sub)module of ``loss`` that has that attribute (the
    package's losses, or a user's loss that declares it) and leaves it None."""
    if ignore_index is None:
        return None
    if (
        isinstance(ignore_index, bool)
        or not isinstance(ignore_index, int)
        or (0 <= ignore_index < num_classes)
    ):
        raise ValueError(
            f"Expected argument `ignore_index` to be None or an int outside [0, {num_classes}), "
            f"but got {ignore_index!r}"
        )
    for module in loss.modules():
        if hasattr(module, "ignore_index"):
            if module.ignore_index not in (None, ignore_index):
                raise ValueError(
                    f"The loss {type(module).__name__} has ignore_index={module.ignore_index}, "
                    f"but the dataset's ignore label is {ignore_index}"
                )
            module.ignore_index = ignore_index
    return ignore_index


def batch_context(batch: dict[str, Any], batch_idx: int, step: int, epoch: int) -> str:
    """``"global step 12, epoch 0, batch 3, cases ['case0001 slice 40', ...]"``."""
    cases = batch.get("case")
    if cases is None:
        keys = ", ".join(sorted(map(str, batch)))
        where = f"case ids not in the batch (keys: {keys})"
    else:
        cases = [cases] if isinstance(cases, str) else [str(c) for c in cases]
        index = batch.get("slice")
        if index is not None:
            index = torch.as_tensor(index).reshape(-1).tolist()
        if index is not None and len(index) == len(cases):
            cases = [f"{c} slice {i}" for c, i in zip(cases, index, strict=True)]
        where = f"cases {cases}"
    return f"global step {step}, epoch {epoch}, batch {batch_idx}, {where}"
