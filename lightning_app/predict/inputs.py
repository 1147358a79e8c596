"""Input discovery and checks for prediction: which cases, which files, where to write.

- single-channel datasets (Synapse, ACDC, phantom): a ``.nii`` / ``.nii.gz`` file is one case
  (named after the file); a folder means every NIfTI file directly inside it.
- multi-channel datasets (MSSEG-2): one folder per case holding one 3D NIfTI per channel, the
  file of channel ``c`` being the only one whose name starts with ``c`` (other files, such as
  ``ground_truth.nii.gz``, are ignored). A folder holding no channel files itself stands for its
  sub-folders, one case each. The channels must share one voxel grid.

Every header and the output folder are checked (:func:`check_inputs`,
:func:`check_output_folder`) before the first forward pass, so a bad file stops the command
before anything is written; each error names the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules.raw import check_same_geometry

__all__ = ["NIFTI_SUFFIXES", "InputCase", "check_inputs", "check_output_folder", "find_cases"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its name (output ``<name>.nii.gz``) and one file per channel."""

    name: str
    files: tuple[Path, ...]


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
