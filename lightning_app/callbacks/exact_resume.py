"""What a resumed fit needs besides weights, optimizer and loops to repeat the uninterrupted one.

- The global random states (Python's ``random``, NumPy's legacy generator, torch's CPU and GPU
  generators) at the save, set back just before the resumed fit's first training step, once
  its loaders have started (starting them draws a seed from torch's generator).
- The training loader's position in its epoch (:class:`datamodules.loader.SliceLoader`'s
  ``state_dict``, which Lightning saves in the checkpoint's fit loop). Lightning hands it back
  only to a loader it builds after the restore; a fit whose lr schedule asks for
  ``trainer.estimated_stepping_batches`` builds the loader before, so the position is handed
  over here, before the first batch is drawn.

The shuffle order and the augmentation draws of an epoch follow from the run's seed and the
epoch (:mod:`datamodules.loader`), so with these two a fit resumed at an epoch's end or in the
middle of one trains on the batches, augmentations and random streams of the uninterrupted fit.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.types import _Stateful

__all__ = ["ExactResume", "global_rng_states", "set_global_rng_states"]


def global_rng_states() -> dict[str, Any]:
    """The process's global random states: Python's ``random``, NumPy's legacy generator,
    torch's CPU generator and, when CUDA is initialised, every GPU's; as tensors, tuples and
    numbers only, so a checkpoint holding them loads with ``weights_only=True``."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_states` returned (the GPUs' states only onto as many GPUs)."""
    random.setstate(states["python"])
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _train_loader_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The stateful training loaders' states that Lightning saved in ``checkpoint``."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    return list(fit_loop.get("state_dict", {}).get("combined_loader", []))


class ExactResume(L.Callback):
    """Save the global random states with every checkpoint; in a resumed fit, set them back and
    hand the training loader its position (module docstring)."""

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": global_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng_states")

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._loader_states = _train_loader_states(checkpoint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._loader_states = self._loader_states, []
        loaders = trainer.train_dataloader
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        stateful = [loader for loader in loaders if isinstance(loader, _Stateful)]
        if states and len(states) == len(stateful):  # the loaders the states were saved from
            for loader, state in zip(stateful, states, strict=True):
                loader.load_state_dict(state)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self._rng_to_restore is not None:
            set_global_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
