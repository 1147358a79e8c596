"""``python -m lightning_app.predict --ckpt CKPT --input PATH [PATH ...] --output DIR``.

Segments new NIfTI volumes with a trained checkpoint (``make predict``): the checkpoint and
dataset are resolved by :mod:`~lightning_app.predict.checkpoint`, the inputs found and checked
by :mod:`~lightning_app.predict.inputs`, and each case written by
:mod:`~lightning_app.predict.writing`. Errors exit with status 2 and one message.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.atomic import WriteError
from lightning_app.predict.checkpoint import load_checkpoint
from lightning_app.predict.writing import predict_files

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_app.predict",
        allow_abbrev=False,
        description=(
            "Segment NIfTI volumes with a trained checkpoint; writes OUTPUT/<case>.nii.gz with "
            "each input's shape and affine. Multi-channel models (MSSEG-2) take one folder per "
            "case holding one file per channel named <channel>*.nii.gz. A model trained on an "
            "nnU-Net dataset takes nnU-Net's <case>_XXXX<file_ending> files (folders or files) "
            "and writes OUTPUT/<case><file_ending>."
        ),
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) from make train")
    parser.add_argument(
        "--input", required=True, nargs="+", help="NIfTI file(s) or folder(s) (see above)"
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--config",
        default=None,
        help="run config.yaml naming the dataset (default: the checkpoint's, or the "
        "config.yaml of the checkpoint's run directory)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="slices per forward pass (default 32)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Entry point; returns the written paths. Errors exit with status 2 and one message."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        loaded = load_checkpoint(args.ckpt, args.config, device)
        print(
            f"checkpoint {args.ckpt}: {type(loaded.datamodule).__name__} (from {loaded.source}), "
            f"slices at {loaded.image_size}x{loaded.image_size}, device {device}",
            flush=True,
        )
        return predict_files(loaded, args.input, args.output, args.batch_size, device)
    except (FileNotFoundError, ValueError, WriteError) as err:  # WriteError: a full disk
        parser.exit(2, f"error: {err}\n")
