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

Random draws that a resume restores (:class:`EpochShuffleSampler`, :class:`EpochSeeds`): the
training order of epoch ``e`` is a permutation drawn from ``(seed, e)``, and each process that
loads slices (worker ``w`` of rank ``r``, or the main process as worker 0) reseeds its
augmentation from ``(seed, r, e, w)`` when it meets a new epoch; ``seed`` is the run's
``seed_everything``. Epoch ``e`` of a run resumed at an epoch boundary therefore draws what the
uninterrupted run drew, whatever ran before it in the process.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, default_collate, get_worker_info

__all__ = [
    "EpochSeeds",
    "EpochShuffleSampler",
    "SliceLoader",
    "collate_slices",
    "leave_signals_to_main",
    "run_seed",
]


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (``$PL_GLOBAL_SEED``), else torch's initial seed
    (random in an unseeded process)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else torch.initial_seed()


def _derived_seed(*entropy: int) -> int:
    """A 32-bit seed from integers (``numpy.random.SeedSequence``: nearby tuples give
    unrelated seeds)."""
    return int(np.random.SeedSequence([e % 2**63 for e in entropy]).generate_state(1)[0])


class EpochShuffleSampler(RandomSampler):
    """A shuffle whose order in epoch ``e`` is ``torch.randperm(n)`` drawn from ``(seed, e)``
    only: Lightning sets the epoch (``set_epoch``) before each training epoch, so a resumed run
    replays the order of the uninterrupted one, and the global random state is not touched.
    A ``RandomSampler``, so that under DDP Lightning replaces it with a shuffling
    ``DistributedSampler`` (whose order is also a function of its seed and the epoch)."""

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class EpochSeeds:
    """Per-epoch seeds of a dataset's random draws, in every process that loads from it.

    The main process sets the epoch (:meth:`set_epoch`, shared memory, so persistent loader
    workers see it; :class:`SliceLoader` does it before each pass); a loading process calls
    :meth:`new_epoch_seed` before each item and reseeds its augmentation with the seed it
    returns at the first item of a new epoch: ``(seed, rank, epoch, worker id)``, the main
    process counting as worker 0. A worker also reseeds Python's, NumPy's and torch's global
    generators with it. Exact when a pass runs to its end before the next starts (a pass cut
    short leaves prefetched items that a worker may load after the epoch has changed).
    """

    def __init__(self, seed: int = 0, rank: int = 0) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._seen: tuple[int, int] | None = None  # (pid, epoch) last reseeded for

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def new_epoch_seed(self) -> int | None:
        """The seed of this process in the current epoch if it has not yet been handed out
        here, else ``None``."""
        seen = (os.getpid(), int(self._epoch))
        if seen == self._seen:
            return None
        self._seen = seen
        worker = get_worker_info()
        seed = _derived_seed(self.seed, self.rank, seen[1], 0 if worker is None else worker.id)
        if worker is not None:  # the worker's own globals; the main process keeps its state
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        return seed


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
    (:func:`leave_signals_to_main`, run before any ``worker_init_fn``). Before each pass it
    hands the sampler's epoch to the dataset's ``epoch_seeds`` (:class:`EpochSeeds`), if any.

    Resumable mid-epoch (Lightning's stateful-loader interface): :meth:`state_dict` holds the
    pass's epoch and how many batches it has handed out (Lightning does not prefetch from a
    loader with a length, so these are the batches trained on when a checkpoint is saved);
    after :meth:`load_state_dict` the next pass of that epoch loads those batches again and
    drops them, so that the workers' random draws for the batches that follow are those of the
    uninterrupted pass, and hands out the rest.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("collate_fn") is None:
            kwargs["collate_fn"] = collate_slices
        super().__init__(*args, **kwargs)
        self._position = (0, 0)  # (epoch, batches handed out) of the current pass
        self._resume_at: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))

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
        # A generator: this body runs at the first batch, after Lightning has set the sampler's
        # epoch, and hands that epoch to the dataset's EpochSeeds before the (persistent)
        # workers receive its first indices.
        epoch = int(getattr(self.sampler, "epoch", 0))
        seeds = getattr(self.dataset, "epoch_seeds", None)
        if isinstance(seeds, EpochSeeds):
            seeds.set_epoch(epoch)
        skip = 0
        if self._resume_at is not None:
            if self._resume_at[0] == epoch:
                skip = self._resume_at[1]
            self._resume_at = None
        self._position = (epoch, skip)
        for position, batch in enumerate(super().__iter__(), start=1):
            if position <= skip:
                continue  # trained on before the checkpoint
            label = batch.get("label") if isinstance(batch, dict) else None
            if isinstance(label, torch.Tensor) and label.dtype == torch.uint8:
                wide = torch.empty(label.shape, dtype=torch.int64, pin_memory=label.is_pinned())
                batch["label"] = wide.copy_(label)
            self._position = (epoch, position)
            yield batch
