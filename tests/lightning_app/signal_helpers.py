"""A callback for the signal tests: hold training at one step until a signal has arrived.

``HoldForSignal(step, ready)`` touches ``ready`` after training step ``step`` and then waits
until :class:`~lightning_app.checkpoints.CheckpointOnTerminate` has seen a signal, so the test
knows the run is mid-epoch (with its loader workers alive) when it sends one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

from lightning_app.checkpoints import CheckpointOnTerminate


class HoldForSignal(L.Callback):
    """Args: ``step``: the global step to hold at; ``ready``: the file to touch then;
    ``only``: hold only in runs whose directory name holds this text (every run if empty)."""

    def __init__(self, step: int, ready: str, only: str = "", timeout: float = 120.0) -> None:
        self.step, self.ready, self.only, self.timeout = step, Path(ready), only, timeout

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step != self.step or self.only not in Path(trainer.default_root_dir).name:
            return
        (terminate,) = [cb for cb in trainer.callbacks if isinstance(cb, CheckpointOnTerminate)]
        self.ready.touch()
        deadline = time.monotonic() + self.timeout
        while terminate._pending is None and time.monotonic() < deadline:
            time.sleep(0.01)
