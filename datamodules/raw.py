"""Raw-data reading and checks shared by the dataset subclasses.

``CaseSpec`` says which raw files make one case, ``CaseData`` holds a preprocessed case ready
to be written to HDF5, and the ``check_*`` helpers turn bad raw data (NaN, labels out of range,
image and label on different grids) into errors that name the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from datamodules.nifti import raw_to_canonical, read_nifti

__all__ = [
    "CaseData",
    "CaseSpec",
    "check_finite",
    "check_label_values",
    "check_same_geometry",
    "load_nifti_case",
    "raw_header_codes",
]


@dataclass(frozen=True)
class CaseSpec:
    """One case to preprocess: its id, the raw files it reads (fingerprinted) and extras."""

    case_id: str
    files: tuple[Path, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@dataclass
class CaseData:
    """A preprocessed case, ready to be written.

    Attributes:
        image: (C, D, H, W), float32 intensity-preprocessed, or raw (a small integer type)
            with its per-channel maps in ``attrs["intensity"]`` (``datamodules.intensity``).
        label: uint8 (D, H, W), values in 0..num_classes-1.
        spacing: float64 (3,), mm in (D, H, W) order.
        affine: float64 (4, 4), array index (d, h, w, 1) -> scanner mm.
        attrs: extra case attributes (e.g. ``raw_affine``, ``raw_shape``).
    """

    image: np.ndarray
    label: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# validation helpers shared by the subclasses
# --------------------------------------------------------------------------------------------
def check_finite(array: np.ndarray, what: str) -> None:
    """Raise ValueError naming ``what`` if a float array holds NaN or infinity."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n_nan = int(np.isnan(array).sum())
        raise ValueError(
            f"{what} contains non-finite values ({n_nan} NaN); expected finite intensities."
        )


def check_label_values(label: np.ndarray, num_values: int, what: str) -> np.ndarray:
    """Check that ``label`` holds integers in ``0..num_values-1`` and return it as uint8.

    Args:
        label: raw label array, any numeric dtype.
        num_values: the dataset's number of raw label values (e.g. 14 for BTCV 0..13).
        what: name of the file or case, for the error.

    Returns:
        uint8 array, same shape (values unchanged).
    """
    if np.issubdtype(label.dtype, np.floating):
        check_finite(label, what)
        rounded = np.rint(label)
        if not np.array_equal(rounded, label):
            raise ValueError(f"{what} holds non-integer label values; expected integer labels.")
        label = rounded
    lo, hi = label.min(), label.max()
    if lo < 0 or hi >= num_values:
        values = np.unique(label)
        bad = [v for v in values.tolist() if v < 0 or v >= num_values]
        raise ValueError(
            f"{what} holds label values {bad[:10]} outside the dataset's label set "
            f"0..{num_values - 1}."
        )
    return label.astype(np.uint8, copy=False)


def check_same_geometry(case_id: str, items: Sequence[tuple[Path, tuple, np.ndarray]]) -> None:
    """Raise ValueError naming the case if the (path, shape, affine) items disagree."""
    ref_path, ref_shape, ref_aff = items[0]
    for path, shape, aff in items[1:]:
        if tuple(shape) != tuple(ref_shape):
            raise ValueError(
                f"Case {case_id}: shape {tuple(shape)} of {path} does not match shape "
                f"{tuple(ref_shape)} of {ref_path}; image and label must share one voxel grid."
            )
        if not np.allclose(aff, ref_aff, rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"Case {case_id}: the affine of {path} does not match the affine of {ref_path}; "
                f"image and label must share one voxel grid.\n{np.round(aff, 4)}\nvs\n"
                f"{np.round(ref_aff, 4)}"
            )


def raw_header_codes(path: Path) -> dict[str, Any]:
    """The qform / sform of a NIfTI header with their codes (``raw_qform``, ``raw_sform``
    (4, 4) float64, ``raw_qform_code``, ``raw_sform_code`` int), so that saved predictions
    carry the input's codes as ``make predict`` writes them. Only the header is read."""
    header = nib.load(str(path)).header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    nan = np.full((4, 4), np.nan)
    return {
        "raw_qform": nan if qform is None else np.asarray(qform, np.float64),
        "raw_sform": nan if sform is None else np.asarray(sform, np.float64),
        "raw_qform_code": int(qcode),
        "raw_sform_code": int(scode),
    }


def load_nifti_case(
    case_id: str,
    image_paths: Sequence[Path],
    label_path: Path,
    num_label_values: int,
    slice_axis: str = "superior",
    label_lut: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Load one case's image channels and label from NIfTI, checked, in canonical orientation.

    The files are read in parallel threads (zlib decompression releases the GIL); the label is
    checked and relabelled in its reading thread, while the larger image still decompresses.

    Args:
        case_id: case name for error messages.
        image_paths: one NIfTI file per input channel.
        label_path: the label NIfTI file.
        num_label_values: raw label values allowed, ``0..num_label_values-1``.
        slice_axis: see :func:`datamodules.nifti.raw_to_canonical`.
        label_lut: optional uint8 lookup table ``raw label -> dataset label`` applied after
            the check (e.g. BTCV's 13 labels to TransUNet's 8).

    Returns:
        ``(channels: list of raw-dtype (D, H, W) views, label uint8 (D, H, W), affine (4, 4),
        spacing (3,), attrs)`` with ``attrs`` holding ``raw_affine`` and ``raw_shape``.

    Raises:
        ValueError: corrupt file, NaN, image/label shape or affine mismatch, bad label values.
    """

    def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
        data, affine = read_nifti(path)
        label = check_label_values(data, num_label_values, f"Case {case_id}: label {path}")
        return (label if label_lut is None else label_lut[label]), affine

    paths = [*image_paths, label_path]
    with ThreadPoolExecutor(max_workers=min(len(paths), 4)) as pool:
        label_future = pool.submit(read_label, label_path)
        loaded = list(pool.map(read_nifti, image_paths))
        loaded.append(label_future.result())
    check_same_geometry(case_id, [(p, d.shape, a) for p, (d, a) in zip(paths, loaded, strict=True)])
    raw_affine = loaded[0][1]
    channels = []
    for path, (data, affine) in zip(image_paths, loaded[:-1], strict=True):
        check_finite(data, f"Case {case_id}: image {path}")
        channels.append(raw_to_canonical(data, affine, slice_axis)[0])
    label, affine, spacing = raw_to_canonical(loaded[-1][0], raw_affine, slice_axis)
    attrs = {
        "raw_affine": raw_affine,
        "raw_shape": np.asarray(loaded[0][0].shape, dtype=np.int64),
        "slice_axis": slice_axis,
        **raw_header_codes(image_paths[0]),
    }
    return channels, np.ascontiguousarray(label), affine, spacing, attrs
