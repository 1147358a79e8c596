"""Checks of a fit's settings that need the built objects, run before anything is written.

- :func:`check_model_accepts_input`: one forward pass of a zero batch (1, C_in, S, S) in eval
  mode, so an architecture / image size that segmentation_models_pytorch rejects (FPN and
  ``image_size=100``: not a multiple of 32) is one ``ValueError`` naming both arguments, before
  the run directory exists. Eval mode and ``no_grad``: no BatchNorm statistic changes.
- :func:`warn_slow_bf16`: ``precision=bf16-mixed`` on a CPU without native bf16 instructions
  (AVX512-BF16 or AMX) is emulated and slower than ``32-true``; one warning says so.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from torch import nn

__all__ = ["check_model_accepts_input", "cpu_has_native_bf16", "warn_slow_bf16"]


def check_model_accepts_input(model: nn.Module, in_channels: int, image_size: int) -> None:
    """Raise ``ValueError`` unless ``model`` maps a (1, in_channels, S, S) batch to logits.

    Raises:
        ValueError: the network rejects the input size (the network's own message included).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    except (RuntimeError, ValueError) as exc:
        arch = getattr(getattr(model, "hparams", {}), "get", lambda *_: None)("arch")
        message = " ".join(str(exc).split())
        raise ValueError(
            f"Expected argument `data.image_size` ({image_size}) to suit `model.arch` "
            f"({arch or type(model).__name__}), but the network rejects a {image_size}x"
            f"{image_size} input: {message}"
        ) from exc
    finally:
        model.train(was_training)


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 instructions that torch uses (AVX512-BF16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def warn_slow_bf16(trainer: L.Trainer, native: bool | None = None) -> bool:
    """Warn once when ``trainer`` runs bf16 precision on a CPU without native bf16; returns
    whether it warned. ``native`` overrides the detection (tests)."""
    precision = str(getattr(trainer, "precision", ""))
    if not precision.startswith("bf16") or not isinstance(trainer.accelerator, CPUAccelerator):
        return False
    if native if native is not None else cpu_has_native_bf16():
        return False
    warnings.warn(
        f"precision={precision} on a CPU without native bf16 instructions (AVX512-BF16 or AMX) "
        "is emulated and slower than 32-true here; use --trainer.precision=32-true on this CPU",
        UserWarning,
        stacklevel=2,
    )
    return True


def run_fit_checks(cli: Any) -> None:
    """The checks of ``SegmentationCLI.before_fit`` (model input, bf16 on a CPU)."""
    datamodule = cli.datamodule
    in_channels = getattr(datamodule, "in_channels", None)
    image_size = getattr(datamodule, "image_size", None)
    if isinstance(in_channels, int) and isinstance(image_size, int):
        check_model_accepts_input(cli.model, in_channels, image_size)
    warn_slow_bf16(cli.trainer)
