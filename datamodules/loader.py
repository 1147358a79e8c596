"""The slice loader: ships labels between processes as uint8, hands them out as int64.

A training batch of 24 slices at 224 x 224 holds 4.8 MB of float32 image and, as int64 class
indices (what ``cross_entropy`` needs), 9.6 MB of label. A ``DataLoader`` worker collates each
batch into fresh shared memory and the main process maps it, so every byte a batch carries is
written and page-faulted once per batch: with one worker the int64 labels cost more than the
augmentation itself (``make bench-data``: about 1,000 slices/s with int64 labels on the wire,
about 1,350 with uint8).

The stored labels are uint8 (``datamodules.hdf5``: values 0..num_classes-1 <= 255) and every
transform keeps their values, so narrowing them to uint8 for the trip is lossless:

- :func:`collate_slices` (in the worker) collates a batch as ``default_collate`` does, except
  ``label``: (B, S, S) uint8, written straight into shared memory when it runs in a worker;
- :class:`SliceLoader` (in the main process) widens ``label`` back to int64 (pinned when the
  loader pins), so its batches are what ``default_collate`` of the items gives:
  ``{"image": float32 (B, C, S, S), "label": int64 (B, S, S), "case": list[str],
  "slice": int64 (B,)}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

__all__ = ["SliceLoader", "collate_slices"]


def collate_slices(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of slice items with ``label`` (each (S, S) integer, values < 256)
    stacked as (B, S, S) uint8; in a worker process the stack is allocated in shared memory
    (as ``default_collate`` does), so sending it to the main process copies nothing."""
    labels = [item["label"] for item in items]
    batch = default_collate([{k: v for k, v in item.items() if k != "label"} for item in items])
    out = torch.empty((len(labels), *labels[0].shape), dtype=torch.uint8)
    if get_worker_info() is not None:
        out.share_memory_()
    for i, label in enumerate(labels):
        out[i].copy_(label)
    batch["label"] = out
    return batch


class SliceLoader(DataLoader):
    """``DataLoader`` of slice items whose batches carry int64 labels, shipped from the
    workers as uint8 (module docstring). Takes ``DataLoader``'s arguments; ``collate_fn``
    defaults to :func:`collate_slices`. Lightning re-creates it with a distributed sampler
    under DDP like any ``DataLoader``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("collate_fn") is None:
            kwargs["collate_fn"] = collate_slices
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            label = batch.get("label") if isinstance(batch, dict) else None
            if isinstance(label, torch.Tensor) and label.dtype == torch.uint8:
                wide = torch.empty(label.shape, dtype=torch.int64, pin_memory=label.is_pinned())
                batch["label"] = wide.copy_(label)
            yield batch
