"""``python -m lightning_app.predict --ckpt CKPT --input PATH [PATH ...] --output DIR``
(``make predict``): segment new NIfTI volumes with a trained checkpoint.

Writes one mask per input case to ``DIR/<case>.nii.gz`` (uint8 labels, the class order of the
checkpoint) with the input's voxel grid: same shape, affine and qform/sform, whatever the
input's orientation. Each volume goes through the pipeline of the dataset the model was
trained on: loaded in that dataset's canonical orientation (``datamodules.nifti``; ACDC keeps
the acquired short-axis stack as the slice axis), intensity-preprocessed by the datamodule's
``preprocess_image``, segmented slice by slice at the training size under the datamodule's
``protocol`` (``models.inference.predict_volume``), and put back into the raw voxel order.

Which dataset: the checkpoint's saved datamodule hyperparameters when the datamodule saved them
(``datamodule_hyper_parameters`` with ``_class_path``), else ``--config`` if given, else the
run's ``config.yaml`` next to the checkpoint (``<run>/config.yaml`` for
``<run>/checkpoints/*.ckpt``), whose ``data`` section names the datamodule class and its
arguments.

Inputs (``--input``, one or more paths):

- single-channel datasets (Synapse, ACDC, phantom): a ``.nii`` / ``.nii.gz`` file is one case
  (named after the file); a folder means every NIfTI file directly inside it.
- multi-channel datasets (MSSEG-2: FLAIR time01 and time02): one folder per case (named after
  the folder) holding one 3D NIfTI per channel, the file of channel ``c`` being the only one
  whose name starts with the channel name (MSSEG-2: ``flair_time01*.nii.gz`` and
  ``flair_time02*.nii.gz``, so the raw release's case folders work as they are; other files,
  such as ``ground_truth.nii.gz``, are ignored). A folder that holds no channel files itself
  stands for its sub-folders, one case each. The channels must share one voxel grid.

Bad input (a path that does not exist, not NIfTI, an empty or unreadable file, a 4D series, a
missing or ambiguous channel file, channels on different grids, NaN intensities) raises an
error naming the file. Every input's header and the output folder are checked before the first
forward pass (:func:`check_inputs`, :func:`check_output_folder`), so a bad file in the middle
of a folder stops the command before anything is written; only what needs the voxels (NaN
intensities, a truncated data block) is found while the case is read.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import yaml
from lightning.pytorch import LightningDataModule
from torch import nn

from datamodules.nifti import raw_to_canonical, read_nifti, save_nifti_like
from datamodules.raw import check_finite, check_same_geometry
from models import SegmentationModel
from models.inference import predict_volume

__all__ = [
    "InputCase",
    "LoadedCheckpoint",
    "check_inputs",
    "check_output_folder",
    "find_cases",
    "load_checkpoint",
    "main",
    "predict_case",
    "predict_files",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


# Model hyperparameters that define the network (everything else is training or test setup).
_NET_HPARAMS = (
    "arch",
    "encoder_name",
    "in_channels",
    "num_classes",
    "class_names",
    "model_kwargs",
)


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its name (output ``<name>.nii.gz``) and one file per channel."""

    name: str
    files: tuple[Path, ...]


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
# inputs
# --------------------------------------------------------------------------------------------
def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _channel_files(folder: Path, channel_names: Sequence[str]) -> tuple[Path, ...] | None:
    """The channel files of a case folder, or None if it holds none of them.

    Raises:
        ValueError: some but not all channels found, or a channel matched by several files.
    """
    niftis = sorted(p for p in folder.iterdir() if p.is_file() and _is_nifti(p))
    matches = {c: [p for p in niftis if p.name.startswith(c)] for c in channel_names}
    if not any(matches.values()):
        return None
    for channel, found in matches.items():
        if len(found) != 1:
            what = "no file" if not found else f"{len(found)} files ({[p.name for p in found]})"
            raise ValueError(
                f"Case folder {folder}: {what} for channel {channel!r}. Expected exactly one "
                f"3D NIfTI per channel, named <channel>*.nii.gz, for the channels "
                f"{list(channel_names)}."
            )
    return tuple(matches[c][0] for c in channel_names)


def find_cases(inputs: Sequence[str | Path], channel_names: Sequence[str]) -> list[InputCase]:
    """Resolve ``--input`` paths into cases (rules: module docstring).

    Args:
        inputs: files or folders.
        channel_names: the dataset's input channels, in order (``len == 1``: single-channel).

    Returns:
        Cases in input order (folders: sorted by name).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file is not NIfTI, a single file given to a multi-channel model, a folder
            with no case, bad channel files, or two cases with the same name.
    """
    if not inputs:
        raise ValueError("Expected at least one --input path, but got none")
    multi = len(channel_names) > 1
    layout = (
        f"one folder per case holding one 3D NIfTI per channel, named "
        f"{', '.join(f'{c}*.nii.gz' for c in channel_names)}"
    )
    cases: list[InputCase] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"Input {path} does not exist")
        if path.is_file():
            if not _is_nifti(path):
                raise ValueError(
                    f"Input {path} is not a NIfTI file: expected a .nii or .nii.gz volume "
                    + (f"({layout})" if multi else "or a folder of them")
                )
            if multi:
                raise ValueError(
                    f"Input {path} is a single file, but the model takes {len(channel_names)} "
                    f"channels {list(channel_names)}: give {layout}"
                )
            cases.append(InputCase(_stem(path), (path,)))
            continue
        if not multi:
            files = sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p))
            if not files:
                raise ValueError(f"Input folder {path} holds no .nii / .nii.gz file")
            cases += [InputCase(_stem(p), (p,)) for p in files]
            continue
        own = _channel_files(path, channel_names)
        if own is not None:
            cases.append(InputCase(path.name, own))
            continue
        found = []
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            files = _channel_files(sub, channel_names)
            if files is not None:
                found.append(InputCase(sub.name, files))
        if not found:
            raise ValueError(f"Input folder {path} holds no case: expected {layout}")
        cases += found
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Several inputs give the case names {duplicates}; outputs are <case>.nii.gz, so "
            "case names must be distinct"
        )
    return cases


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a NIfTI file from its header (the voxels are not read)."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("the file is empty")
        image = nib.load(str(path))
        shape, affine = tuple(int(n) for n in image.shape), np.asarray(image.affine, float)
    except Exception as err:  # nibabel, gzip and OS errors all mean "not a readable NIfTI"
        raise ValueError(
            f"Cannot read NIfTI file {path}: it is empty, corrupt or not NIfTI "
            f"({type(err).__name__}: {err}). Expected a readable 3D .nii or .nii.gz volume."
        ) from err
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        what = "a 4D series" if len(shape) == 4 else f"{len(shape)}D"
        raise ValueError(
            f"{path} is {what} of shape {shape}; expected one 3D volume per file (split a time "
            "series into 3D frames, e.g. ACDC's patientNNN_frameFF.nii.gz, and a multi-channel "
            "case into one file per channel)"
        )
    return shape, affine


def check_inputs(cases: Sequence[InputCase]) -> None:
    """Check every case's files from their headers, before any case is predicted.

    Raises:
        ValueError: naming the file: empty, unreadable or not NIfTI, not 3D (a 4D series), or
            channels of one case on different voxel grids.
    """
    for case in cases:
        items = [(path, *_header(path)) for path in case.files]
        check_same_geometry(case.name, items)


def check_output_folder(output: str | Path, cases: Sequence[InputCase]) -> Path:
    """Create the output folder and prove it writable, before any case is predicted.

    Returns:
        The output folder.

    Raises:
        ValueError: the output is an existing file (or lies under one), is a folder that holds
            input files (masks would land beside the scans), cannot be created or is not
            writable.
    """
    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"Output {out_dir} is a file; --output must be a folder")
    resolved = out_dir.resolve()
    for case in cases:
        for path in case.files:
            if path.resolve().parent == resolved:
                raise ValueError(
                    f"Output folder {out_dir} holds the input {path}: the masks would land "
                    "beside the scans and be read as inputs next time; choose another --output"
                )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"Output folder {out_dir} cannot be created or written ({reason}); choose a "
            "writable --output"
        ) from err
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"Output folder {out_dir} is not writable; choose a writable --output")
    return out_dir


# --------------------------------------------------------------------------------------------
# checkpoint and dataset
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


# --------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------
def _read_channel(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one 3D channel, refusing 4D series with a message naming the file."""
    try:
        shape = nib.load(str(path)).shape
    except Exception:  # corrupt or not NIfTI: read_nifti raises the detailed error
        shape = None
    if shape is not None and (len(shape) > 4 or (len(shape) == 4 and shape[3] != 1)):
        raise ValueError(
            f"{path} is a 4D series of shape {tuple(shape)}; expected one 3D volume per file "
            "(split a time series into 3D frames, e.g. ACDC's patientNNN_frameFF.nii.gz, and a "
            "multi-channel case into one file per channel)"
        )
    return read_nifti(path)


def predict_case(
    case: InputCase,
    forward: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Callable[[np.ndarray], np.ndarray],
    image_size: int | None,
    slice_axis: str = "superior",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    protocol: str = "default",
) -> np.ndarray:
    """Segment one case; returns the uint8 mask in the canonical ``(D, H, W)`` orientation.

    Args:
        case: the case's channel files (one 3D NIfTI per channel, on one voxel grid).
        forward: the 2D network (see :func:`models.inference.predict_volume`).
        preprocess: the dataset's ``preprocess_image``, ``(C, D, H, W)`` raw -> float32.
        image_size: training slice size. slice_axis: as the dataset loads its volumes.
        batch_size: slices per forward pass. device: where ``forward`` runs.
        protocol: the inference protocol of :func:`models.inference.predict_volume` (the
            training datamodule's ``protocol``).

    Raises:
        ValueError: unreadable or 4D file, channels on different grids, NaN intensities.
    """
    loaded = [_read_channel(p) for p in case.files]
    check_same_geometry(
        case.name, [(p, d.shape, a) for p, (d, a) in zip(case.files, loaded, strict=True)]
    )
    channels = []
    for path, (data, affine) in zip(case.files, loaded, strict=True):
        check_finite(data, f"Input {path}")
        channels.append(raw_to_canonical(data, affine, slice_axis)[0])
    image = preprocess(np.stack(channels))
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    labels = predict_volume(forward, volume, image_size, batch_size, protocol=protocol)
    return labels.cpu().numpy().astype(np.uint8)


def predict_files(
    loaded: LoadedCheckpoint,
    inputs: Sequence[str | Path],
    output: str | Path,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Predict every case of ``inputs`` (see :func:`find_cases`) into ``output``.

    Returns:
        The written ``output/<case>.nii.gz`` paths, in case order.

    Raises:
        ValueError: an output would overwrite an input, or any error of :func:`find_cases`,
            :func:`check_inputs`, :func:`check_output_folder` (all before the first case is
            predicted) or :func:`predict_case` (what needs the voxels, as each case is read).
    """
    channel_names = list(getattr(loaded.datamodule, "channel_names", []) or [])
    if len(channel_names) != loaded.model.hparams.in_channels:
        channel_names = [f"channel{i}" for i in range(loaded.model.hparams.in_channels)]
    cases = find_cases(inputs, channel_names)
    check_inputs(cases)
    out_dir = Path(output)
    inputs_resolved = {p.resolve() for c in cases for p in c.files}
    targets = [out_dir / f"{c.name}.nii.gz" for c in cases]
    for target in targets:
        if target.resolve() in inputs_resolved:
            raise ValueError(f"Output {target} would overwrite an input; choose another --output")
    check_output_folder(out_dir, cases)
    written = []
    for case, target in zip(cases, targets, strict=True):
        mask = predict_case(
            case,
            loaded.model,
            loaded.datamodule.preprocess_image,
            loaded.image_size,
            loaded.slice_axis,
            batch_size,
            device,
            getattr(loaded.datamodule, "protocol", "default"),
        )
        written.append(save_nifti_like(mask, case.files[0], target, loaded.slice_axis))
        if log is not None:
            log(f"{case.name}: {target}")
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_app.predict",
        description=(
            "Segment NIfTI volumes with a trained checkpoint; writes OUTPUT/<case>.nii.gz with "
            "each input's shape and affine. Multi-channel models (MSSEG-2) take one folder per "
            "case holding one file per channel named <channel>*.nii.gz."
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
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
