"""Checkpoints written atomically: ``trainer.plugins: [lightning_app.checkpoint_io.AtomicCheckpointIO]``.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose local temporary
file lives in the system's temporary folder; committing it copies the bytes onto the final
name, so a full disk leaves a truncated ``best-*.ckpt`` that a later ``make eval`` loads.
:class:`AtomicCheckpointIO` writes ``torch.save`` output beside the final name and renames it
when complete (:func:`datamodules.atomic.atomic_path`; the bytes are built in memory first, as
Lightning's own save does); a full disk or a forbidden folder stops
the run with one line naming the checkpoint, and the previous file of that name is kept.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.atomic import atomic_path

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on the local filesystem (module docstring)."""

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                "`AtomicCheckpointIO.save_checkpoint` takes no `storage_options`, "
                f"but got {storage_options!r}"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # serialised in memory first: torch's zip writer reports a full disk as a RuntimeError
        # without errno or file name, Python's file writes as the OSError that names it
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
