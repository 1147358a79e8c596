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

Its worker processes leave SIGINT and SIGTERM to the main process (:func:`leave_signals_to_main`):
a Ctrl-C or a SIGTERM sent to the whole process group (SLURM's preemption, time limit and
``scancel``, ``kill -- -PGID``) then reaches the main process, which finishes its step and saves,
instead of killing the workers under it. The main process still shuts its workers down with its
own SIGTERM.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

__all__ = ["SliceLoader", "collate_slices", "leave_signals_to_main"]


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


def _obey_parent_sigterm(parent: int) -> None:
    """Consume the worker's (blocked) SIGTERMs: exit on one from ``parent`` (the loader
    shutting its workers down, as torch's own worker handler does) or once ``parent`` is gone;
    ignore the others."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)


def leave_signals_to_main(parent: int, then: Callable[[int], None] | None, worker_id: int) -> None:
    """``worker_init_fn`` of a loader worker: ignore SIGINT, and SIGTERM unless ``parent`` (the
    main process) sends it; then call ``then(worker_id)`` (e.g. Lightning's worker seeding).

    SIGTERM is blocked in the worker and taken by a thread with ``sigwaitinfo``, which knows the
    sender: a group-wide SIGTERM is dropped, the main process's shutdown SIGTERM still ends a
    worker that hangs. A Ctrl-C reaches the main process, which shuts the workers down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_obey_parent_sigterm, args=(parent,), name="sigterm-from-parent", daemon=True
    ).start()
    if then is not None:
        then(worker_id)


class SliceLoader(DataLoader):
    """``DataLoader`` of slice items whose batches carry int64 labels, shipped from the
    workers as uint8 (module docstring). Takes ``DataLoader``'s arguments; ``collate_fn``
    defaults to :func:`collate_slices`. Lightning re-creates it with a distributed sampler
    under DDP like any ``DataLoader``. Its workers leave SIGINT and SIGTERM to the main process
    (:func:`leave_signals_to_main`, run before any ``worker_init_fn``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("collate_fn") is None:
            kwargs["collate_fn"] = collate_slices
        super().__init__(*args, **kwargs)

    def _get_iterator(self) -> Any:
        # the workers start here; any worker_init_fn (Lightning sets its seeding one after
        # __init__) runs after the signal policy, and the attribute is restored afterwards
        if self.num_workers == 0:
            return super()._get_iterator()
        then = self.worker_init_fn
        self.worker_init_fn = functools.partial(leave_signals_to_main, os.getpid(), then)
        try:
            return super()._get_iterator()
        finally:
            self.worker_init_fn = then

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            label = batch.get("label") if isinstance(batch, dict) else None
            if isinstance(label, torch.Tensor) and label.dtype == torch.uint8:
                wide = torch.empty(label.shape, dtype=torch.int64, pin_memory=label.is_pinned())
                batch["label"] = wide.copy_(label)
            yield batch
