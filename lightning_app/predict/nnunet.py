"""Prediction for checkpoints trained on an nnU-Net v2 / MSD dataset (``NNUNetDataModule``).

Inputs follow nnU-Net's inference format (``dataset_format_inference.md``): files
``<case>_XXXX<file_ending>``, one per channel file, grouped by case id (the name less
``len(file_ending) + 5`` characters); an MSD dataset takes one 4D ``<case>.nii.gz`` per case.
``--input`` names folders (every visible file ending in ``file_ending``) or single files.
Each case is read and checked as the training cases are (``datamodules.nnunet_cases``), cut
along the prepared data's slice axis, normalized by the datamodule, segmented, and written as
``<output>/<case><file_ending>`` on the input's grid: NIfTI with its shape, affine and
qform/sform; 2D images (``.png``, ``.bmp``, ``.tif``) with its size, as 8-bit grey labels;
``.nrrd`` / ``.mha`` with its SimpleITK geometry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from datamodules.atomic import atomic_path
from datamodules.nifti import canonical_to_raw, save_nifti_like
from datamodules.nnunet_cases import read_case, to_canonical
from datamodules.nnunet_io import NATURAL_2D_ENDINGS
from datamodules.raw import check_same_geometry
from lightning_app.predict.checkpoint import LoadedCheckpoint
from lightning_app.predict.inputs import InputCase, check_output_folder
from models.inference import predict_volume

__all__ = ["find_nnunet_cases", "is_nnunet", "predict_nnunet_case", "predict_nnunet_files"]


def is_nnunet(datamodule: object) -> bool:
    """True for a datamodule that reads nnU-Net raw files (it names their ``file_ending``)."""
    return isinstance(getattr(datamodule, "file_ending", None), str)


# --------------------------------------------------------------------------------------------
def _input_files(inputs: Sequence[str | Path], ending: str) -> list[Path]:
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"Input {path} does not exist")
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.name.endswith(ending) and not p.name.startswith(".")
            )
            if not found:
                raise ValueError(f"Input folder {path} holds no file ending in {ending!r}")
            files += found
        elif not path.name.endswith(ending):
            raise ValueError(
                f"Input {path} does not end in the dataset's file_ending {ending!r}; "
                f"expected <case>_XXXX{ending} files"
            )
        else:
            files.append(path)
    return files


def find_nnunet_cases(
    inputs: Sequence[str | Path], file_ending: str, msd: bool = False
) -> list[InputCase]:
    """Group the input files by case id (rules: module docstring).

    Returns:
        Cases sorted by id, each with its channel files in ``_XXXX`` order.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a file with another ending, a name without ``_XXXX``, a channel file
            missing or given twice.
    """
    if not inputs:
        raise ValueError("Expected at least one --input path, but got none")
    grouped: dict[str, dict[int, Path]] = {}
    for path in _input_files(inputs, file_ending):
        stem = path.name[: -len(file_ending)]
        if msd:
            case, number = stem, 0
        else:
            if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
                raise ValueError(
                    f"Input {path}: nnU-Net input files are named <case>_XXXX{file_ending} "
                    f"(XXXX the channel file, 0000 for the first)"
                )
            case, number = stem[:-5], int(stem[-4:])
        files = grouped.setdefault(case, {})
        if number in files and files[number].resolve() != path.resolve():
            raise ValueError(
                f"Case {case}: channel file {number:04d} given twice ({files[number]} and {path})"
            )
        files[number] = path
    cases = []
    for case in sorted(grouped):
        files = grouped[case]
        missing = [n for n in range(max(files) + 1) if n not in files]
        if missing:
            folder = files[max(files)].parent
            raise ValueError(
                f"Case {case}: channel file {folder / f'{case}_{missing[0]:04d}{file_ending}'} "
                "is missing"
            )
        cases.append(InputCase(case, tuple(files[n] for n in sorted(files))))
    return cases


def _check_nifti_headers(cases: Sequence[InputCase], in_channels: int) -> None:
    """Shapes, channel count and grids of NIfTI inputs from their headers, before any
    forward pass (2D and SimpleITK files are checked as each case is read)."""
    for case in cases:
        items, channels = [], 0
        for path in case.files:
            try:
                image = nib.load(str(path))
                shape, affine = tuple(int(n) for n in image.shape), np.asarray(image.affine)
            except Exception as err:  # nibabel, gzip and OS errors: not a readable NIfTI
                raise ValueError(
                    f"Cannot read NIfTI file {path}: it is empty, corrupt or not NIfTI "
                    f"({type(err).__name__})"
                ) from err
            if len(shape) not in (3, 4):
                raise ValueError(f"{path} has shape {shape}; expected a 3D volume")
            channels += shape[3] if len(shape) == 4 else 1
            items.append((path, shape[:3], affine))
        if channels != in_channels:
            raise ValueError(
                f"Case {case.name}: its files {[p.name for p in case.files]} hold {channels} "
                f"channels, but the model takes {in_channels}"
            )
        check_same_geometry(case.name, items)


# --------------------------------------------------------------------------------------------
def predict_nnunet_case(
    case: InputCase,
    forward: Callable[[torch.Tensor], torch.Tensor],
    datamodule: object,
    image_size: int | None,
    slice_axis: str,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one case; returns ``(mask (D, H, W) uint8 canonical, raw affine (4, 4))``.

    Raises:
        ValueError: (``DatasetError``) unreadable files, a channel count other than the
            model's, files on different grids, NaN intensities.
    """
    ending = datamodule.file_ending
    raw = read_case(case.name, case.files, None, ending, datamodule.in_channels, 2)
    channels = to_canonical(raw, ending, slice_axis)[0]
    image = datamodule.preprocess_image(np.stack(channels))
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    protocol = getattr(datamodule, "protocol", "default")
    labels = predict_volume(forward, volume, image_size, batch_size, protocol=protocol)
    return labels.cpu().numpy().astype(np.uint8), raw.affine


def _write_mask(
    mask: np.ndarray, raw_affine: np.ndarray, case: InputCase, target: Path, ending: str, axis: str
) -> Path:
    if ending in (".nii.gz", ".nii"):
        return save_nifti_like(mask, case.files[0], target, axis)
    if ending in NATURAL_2D_ENDINGS:
        from PIL import Image

        with atomic_path(target) as tmp:
            Image.fromarray(np.ascontiguousarray(mask[0])).save(tmp)
        return target
    import SimpleITK as sitk  # the input was read with it (datamodules.nnunet_io)

    reference = sitk.ReadImage(str(case.files[0]))
    raw = canonical_to_raw(mask, raw_affine, axis)  # (X, Y, Z)
    out = sitk.GetImageFromArray(np.ascontiguousarray(raw.transpose(2, 1, 0)))
    out.SetOrigin(reference.GetOrigin())
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    with atomic_path(target) as tmp:
        sitk.WriteImage(out, str(tmp), True)
    return target


def predict_nnunet_files(
    loaded: LoadedCheckpoint,
    inputs: Sequence[str | Path],
    output: str | Path,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Predict every case of ``inputs`` into ``output/<case><file_ending>``.

    Returns:
        The written paths, in case order.

    Raises:
        ValueError: any error of :func:`find_nnunet_cases`, a NIfTI header problem or an
            output folder problem (all before the first case is predicted), or of
            :func:`predict_nnunet_case`.
    """
    dm = loaded.datamodule
    ending = dm.file_ending
    cases = find_nnunet_cases(inputs, ending, bool(getattr(dm, "msd", False)))
    if ending in (".nii.gz", ".nii"):
        _check_nifti_headers(cases, loaded.model.hparams.in_channels)
    out_dir = Path(output)
    inputs_resolved = {p.resolve() for c in cases for p in c.files}
    targets = [out_dir / f"{c.name}{ending}" for c in cases]
    for target in targets:
        if target.resolve() in inputs_resolved:
            raise ValueError(f"Output {target} would overwrite an input; choose another --output")
    check_output_folder(out_dir, cases)
    axis = dm.prediction_slice_axis()
    written = []
    for case, target in zip(cases, targets, strict=True):
        mask, raw_affine = predict_nnunet_case(
            case, loaded.model, dm, loaded.image_size, axis, batch_size, device
        )
        written.append(_write_mask(mask, raw_affine, case, target, ending, axis))
        if log is not None:
            log(f"{case.name}: {target}")
    return written
