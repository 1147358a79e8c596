"""One nnU-Net raw case: its files read, checked and turned into canonical arrays.

``read_case`` returns raw channels and label in raw voxel order after the checks every case
must pass (channel count, one voxel grid for all files, declared label values);
``to_canonical`` turns them into ``(C, D, H, W)`` / ``(D, H, W)`` arrays with D the slice axis
(``datamodules.nifti``; 2D images become one slice, D = 1, 1 mm pixels).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.nifti import raw_to_canonical
from datamodules.nnunet_io import NATURAL_2D_ENDINGS, read_image
from datamodules.nnunet_layout import DatasetError

__all__ = ["RawCase", "read_case", "to_canonical"]


@dataclass
class RawCase:
    """A case as read: channels (raw voxel order, one shape), label (same shape), affine."""

    case_id: str
    channels: list[np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    source: Path


def _check_grid(case_id: str, items: list[tuple[Path, np.ndarray, np.ndarray]]) -> None:
    ref_path, ref, ref_affine = items[0]
    for path, array, affine in items[1:]:
        if array.shape != ref.shape:
            raise DatasetError(
                f"Case {case_id}: shape {array.shape} of {path} differs from shape {ref.shape} "
                f"of {ref_path}; every channel and the label must share one voxel grid"
            )
        if not np.allclose(affine, ref_affine, rtol=1e-4, atol=1e-3):
            raise DatasetError(
                f"Case {case_id}: the affine (orientation, spacing or origin) of {path} differs "
                f"from that of {ref_path}; nnU-Net only warns, but 2D slices of the two would be "
                f"silently misaligned, so resample one onto the other's grid"
            )


def _check_label(case_id: str, path: Path, label: np.ndarray, allowed: int) -> np.ndarray:
    """Integer values in 0..allowed-1, as uint8."""
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or not np.array_equal(np.rint(label), label):
            raise DatasetError(f"Case {case_id}: label {path} holds non-integer values")
    lo, hi = label.min(), label.max()
    if lo < 0 or hi >= allowed:
        bad = [v for v in np.unique(label).tolist() if v < 0 or v >= allowed]
        raise DatasetError(
            f"Case {case_id}: label {path} holds values {bad[:10]} not declared in dataset.json "
            f"(declared: 0..{allowed - 1})"
        )
    return label.astype(np.uint8, copy=False)


def read_case(
    case_id: str,
    images: tuple[Path, ...],
    label: Path | None,
    ending: str,
    num_channels: int,
    num_label_values: int,
) -> RawCase:
    """Read and check one case (label optional, for prediction).

    Raises:
        DatasetError: unreadable files, a channel count other than ``num_channels``, files on
            different voxel grids, label values outside ``0..num_label_values-1``.
    """
    paths = [*images, *([label] if label is not None else [])]
    if ending in NATURAL_2D_ENDINGS:
        # a few ms per file: threads cost more than they save (GIL handoffs, thread starts)
        loaded = [read_image(p, ending) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=min(len(paths), 4)) as pool:
            loaded = list(pool.map(lambda p: read_image(p, ending), paths))
    items = [(p, ch, aff) for p, (chs, aff) in zip(paths, loaded, strict=True) for ch in chs]
    channels = [ch for chs, _ in loaded[: len(images)] for ch in chs]
    if len(channels) != num_channels:
        raise DatasetError(
            f"Case {case_id}: its image files {[p.name for p in images]} hold {len(channels)} "
            f"channels, but dataset.json declares {num_channels}"
        )
    for path, array, _ in items:
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise DatasetError(f"Case {case_id}: {path} holds NaN or infinite values")
    lab = np.zeros(channels[0].shape, np.uint8)
    if label is not None:
        if len(loaded[-1][0]) != 1:
            raise DatasetError(f"Case {case_id}: label {label} must have one channel")
        lab = _check_label(case_id, label, loaded[-1][0][0], num_label_values)
    _check_grid(case_id, items)
    return RawCase(case_id, channels, lab, loaded[0][1], images[0])


def to_canonical(
    case: RawCase, ending: str, slice_axis: str
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(channels (D, H, W) each, label (D, H, W), affine (4, 4), spacing (3,), attrs)``.

    ``attrs`` holds ``raw_shape`` and, for volumes, ``raw_affine`` and ``slice_axis``
    (to write predictions back onto the raw grid).
    """
    raw_shape = np.asarray(case.label.shape, np.int64)
    if ending in NATURAL_2D_ENDINGS:
        channels = [np.asarray(ch)[None] for ch in case.channels]
        return channels, case.label[None], np.eye(4), np.ones(3), {"raw_shape": raw_shape}
    channels = [raw_to_canonical(ch, case.affine, slice_axis)[0] for ch in case.channels]
    label, affine, spacing = raw_to_canonical(case.label, case.affine, slice_axis)
    attrs = {"raw_affine": case.affine, "raw_shape": raw_shape, "slice_axis": slice_axis}
    return channels, np.ascontiguousarray(label), affine, spacing, attrs
