"""Checkpoint and dataset resolution for prediction.

:func:`load_checkpoint` rebuilds the network from a ``SegmentationModel`` checkpoint and the
datamodule of the dataset it was trained on (only its preprocessing, channel and class names
are used). Which dataset: the checkpoint's saved datamodule hyperparameters
(``datamodule_hyper_parameters`` with ``_class_path``), else ``--config`` if given, else the
run's ``config.yaml`` next to the checkpoint (``<run>/config.yaml`` for
``<run>/checkpoints/*.ckpt``), whose ``data`` section names the datamodule class and arguments.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule
from torch import nn

from models import SegmentationModel

__all__ = ["LoadedCheckpoint", "load_checkpoint"]

# Model hyperparameters that define the network (everything else is training or test setup).
_NET_HPARAMS = (
    "arch",
    "encoder_name",
    "in_channels",
    "num_classes",
    "class_names",
    "model_kwargs",
)


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready for prediction.

    Attributes:
        model: the ``SegmentationModel`` with the checkpoint's network weights, in eval mode
            (its ``loss`` is a placeholder: prediction never calls it).
        datamodule: the training dataset's datamodule (only its preprocessing, channel and
            class names are used; no data is read).
        image_size: training slice size ``S``.
        slice_axis: ``"superior"`` or ``"acquisition"`` (see ``datamodules.nifti``).
        source: where the dataset configuration came from (for messages).
    """

    model: SegmentationModel
    datamodule: LightningDataModule
    image_size: int
    slice_axis: str
    source: str


# --------------------------------------------------------------------------------------------
def _import_class(class_path: str, source: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"Cannot import the datamodule class {class_path!r} ({source}): {err}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):
        raise ValueError(f"{class_path!r} ({source}) is not a LightningDataModule")
    return cls


def _data_config_from_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"Cannot read the run config {path}: {err}") from err
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("class_path"), str):
        raise ValueError(
            f"The run config {path} has no `data:` section with `class_path` and `init_args` "
            "(expected the config.yaml the CLI saves in the run directory)"
        )
    return {"class_path": data["class_path"], "init_args": dict(data.get("init_args") or {})}


def _data_config(
    ckpt_path: Path, checkpoint: dict[str, Any], config: Path | None
) -> tuple[dict[str, Any], str]:
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"--config {config} does not exist")
        return _data_config_from_yaml(config), str(config)
    saved = checkpoint.get("datamodule_hyper_parameters")
    if isinstance(saved, dict) and isinstance(saved.get("_class_path"), str):
        init_args = {k: v for k, v in saved.items() if not k.startswith("_")}
        return {"class_path": saved["_class_path"], "init_args": init_args}, f"{ckpt_path}"
    for candidate in (ckpt_path.parent / "config.yaml", ckpt_path.parent.parent / "config.yaml"):
        if candidate.is_file():
            return _data_config_from_yaml(candidate), str(candidate)
    raise ValueError(
        f"Cannot tell which dataset {ckpt_path} was trained on: the checkpoint holds no "
        "datamodule hyperparameters and there is no config.yaml next to it (looked in "
        f"{ckpt_path.parent} and {ckpt_path.parent.parent}). Pass --config <run dir>/config.yaml."
    )


def load_checkpoint(
    ckpt: str | Path, config: str | Path | None = None, device: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Rebuild the network and the training dataset's datamodule from a checkpoint.

    Args:
        ckpt: a ``SegmentationModel`` checkpoint (``.ckpt``) written by ``make train``.
        config: a run ``config.yaml`` whose ``data`` section names the dataset (default: see
            the module docstring).
        device: where the network runs.

    Raises:
        FileNotFoundError: ``ckpt`` or ``config`` does not exist.
        ValueError: not a SegmentationModel checkpoint, no dataset configuration found, or the
            dataset's channels / classes disagree with the network's.
    """
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt_path} does not exist")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise ValueError(f"Cannot read checkpoint {ckpt_path}: {err}") from err
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise ValueError(
            f"{ckpt_path} is not a SegmentationModel checkpoint (no hyper_parameters / state_dict)"
        )
    missing = [k for k in ("in_channels", "num_classes") if k not in hparams]
    if missing:
        raise ValueError(f"Checkpoint {ckpt_path} lacks the model hyperparameters {missing}")
    kwargs = {k: hparams[k] for k in _NET_HPARAMS if k in hparams}
    # encoder weights come from the checkpoint: never download pretrained ones here
    model = SegmentationModel(loss=nn.Identity(), encoder_weights=None, **kwargs)
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        model.net.load_state_dict(net_state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"The network weights of {ckpt_path} do not fit its hyperparameters: {err}"
        ) from err
    model.eval().to(device)

    data_cfg, source = _data_config(ckpt_path, checkpoint, None if config is None else Path(config))
    cls = _import_class(data_cfg["class_path"], source)
    try:
        datamodule = cls(**data_cfg["init_args"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"Cannot build {data_cfg['class_path']} from {source}: {err}") from err
    if not hasattr(datamodule, "preprocess_image"):
        raise ValueError(f"{data_cfg['class_path']} ({source}) has no preprocess_image()")
    dm_channels = int(getattr(datamodule, "in_channels", -1))
    if dm_channels != model.hparams.in_channels:
        raise ValueError(
            f"The dataset of {source} has {dm_channels} input channels, but the network of "
            f"{ckpt_path} takes {model.hparams.in_channels}"
        )
    dm_classes = list(getattr(datamodule, "class_names", []))
    if dm_classes and dm_classes != list(model.class_names):
        raise ValueError(
            f"The dataset of {source} has classes {dm_classes}, but the network of {ckpt_path} "
            f"predicts {list(model.class_names)}"
        )
    image_size = hparams.get("image_size") or getattr(datamodule, "image_size", None)
    if not isinstance(image_size, int):
        raise ValueError(f"Cannot tell the training image size of {ckpt_path} ({source})")
    return LoadedCheckpoint(model, datamodule, image_size, datamodule.slice_axis, source)
