"""Inference and writing: each case segmented and saved on its input's voxel grid.

A case is loaded in its dataset's canonical orientation (``datamodules.nifti``; ACDC keeps the
acquired short-axis stack as the slice axis), intensity-preprocessed by the datamodule's
``preprocess_image``, segmented slice by slice at the training size under the datamodule's
``protocol`` (:func:`models.inference.predict_volume`), put back into the raw voxel order and
written as ``<output>/<case>.nii.gz`` (uint8 labels in the checkpoint's class order) with the
input's shape, affine and qform/sform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from datamodules.nifti import raw_to_canonical, read_nifti, save_nifti_like
from datamodules.raw import check_finite, check_same_geometry
from lightning_app.predict.checkpoint import LoadedCheckpoint
from lightning_app.predict.inputs import InputCase, check_inputs, check_output_folder, find_cases
from lightning_app.predict.nnunet import is_nnunet, predict_nnunet_files
from models.inference import predict_volume

__all__ = ["predict_case", "predict_files"]


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
    """Predict every case of ``inputs`` (see :func:`find_cases`) into ``output``; a checkpoint
    of an nnU-Net dataset takes nnU-Net's file names instead
    (:func:`~lightning_app.predict.nnunet.predict_nnunet_files`).

    Returns:
        The written ``output/<case>.nii.gz`` paths, in case order.

    Raises:
        ValueError: an output would overwrite an input, or any error of :func:`find_cases`,
            :func:`check_inputs`, :func:`check_output_folder` (all before the first case is
            predicted) or :func:`predict_case` (what needs the voxels, as each case is read).
    """
    if is_nnunet(loaded.datamodule):
        return predict_nnunet_files(loaded, inputs, output, batch_size, device, log)
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
