"""Prediction on new volumes with a trained checkpoint (``make predict``).

- :mod:`~lightning_app.predict.inputs`: which cases and files ``--input`` means; header and
  output-folder checks before the first forward pass.
- :mod:`~lightning_app.predict.checkpoint`: the network and the training dataset's datamodule.
- :mod:`~lightning_app.predict.writing`: inference per case and the NIfTI output.
- :mod:`~lightning_app.predict.nnunet`: nnU-Net datasets: ``<case>_XXXX<file_ending>`` inputs
  grouped by case, ``<case><file_ending>`` outputs on the input's grid.
- :mod:`~lightning_app.predict.command`: the ``python -m lightning_app.predict`` entry point.
"""

from lightning_app.predict.checkpoint import LoadedCheckpoint, load_checkpoint
from lightning_app.predict.command import main
from lightning_app.predict.inputs import (
    InputCase,
    check_inputs,
    check_output_folder,
    find_cases,
)
from lightning_app.predict.nnunet import find_nnunet_cases, predict_nnunet_files
from lightning_app.predict.writing import predict_case, predict_files

__all__ = [
    "InputCase",
    "LoadedCheckpoint",
    "check_inputs",
    "check_output_folder",
    "find_cases",
    "find_nnunet_cases",
    "load_checkpoint",
    "main",
    "predict_case",
    "predict_files",
    "predict_nnunet_files",
]
