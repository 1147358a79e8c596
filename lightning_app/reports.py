"""Test reports: ``per_case.csv``, ``summary.md`` (the poster's table layout) and predicted
masks as NIfTI; formatting and file writing only. The numbers come from
``models.evaluation.TestResults``; :class:`lightning_app.callbacks.TestReport` writes the files
into the run directory.

- ``per_case.csv``: one row per test case and foreground class (:data:`PER_CASE_COLUMNS`),
  metrics as fractions, ``nan`` where undefined, HD95 in mm (voxels under ``transunet``).
- ``summary.md``: the poster's table (percent, 2 decimals), every metric per class and the
  empty-mask counts with the policy in force.
- ``predictions/<case>.nii.gz`` (:func:`write_prediction`) with ``save_predictions=True``.

Poster layouts (:data:`POSTER_LAYOUTS`): Synapse ``mDice mIoU`` + the 8 organs' Dice in the
tables' alphabetical order; ACDC ``mDice mIoU`` + RV, MYO, LV; MSSEG-2 ``mDice mIoU mPrec
mRec``; any other dataset ``mDice mIoU`` + every class's Dice in label order.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from datamodules.atomic import atomic_path
from datamodules.nifti import canonical_to_raw
from models.evaluation import TestResults
from models.metrics import METRIC_NAMES

__all__ = [
    "PER_CASE_COLUMNS",
    "POSTER_LAYOUTS",
    "PosterLayout",
    "poster_table",
    "summary_markdown",
    "write_per_case_csv",
    "write_prediction",
]

PER_CASE_COLUMNS: tuple[str, ...] = (
    "index",
    "case",
    "class",
    "label",
    *METRIC_NAMES,
    "gt_empty",
    "pred_empty",
)


@dataclass(frozen=True)
class PosterLayout:
    """Columns of a poster table.

    Attributes:
        means: ``(header, metric)`` pairs of foreground means, e.g. ``("mDice", "dice")``.
        classes: ``(header, class name)`` pairs whose per-class Dice follows the means, in
            table order; ``None`` = every foreground class in label order, headed by its name.
    """

    means: tuple[tuple[str, str], ...]
    classes: tuple[tuple[str, str], ...] | None


_DICE_IOU = (("mDice", "dice"), ("mIoU", "iou"))

#: Poster table layouts by datamodule ``dataset_name``; others use :data:`DEFAULT_LAYOUT`.
POSTER_LAYOUTS: dict[str, PosterLayout] = {
    "synapse": PosterLayout(
        _DICE_IOU,
        (
            ("Aorta", "aorta"),
            ("Gallbladder", "gallbladder"),
            ("Kidney left", "left_kidney"),
            ("Kidney right", "right_kidney"),
            ("Liver", "liver"),
            ("Pancreas", "pancreas"),
            ("Spleen", "spleen"),
            ("Stomach", "stomach"),
        ),
    ),
    "acdc": PosterLayout(_DICE_IOU, (("RV", "RV"), ("MYO", "MYO"), ("LV", "LV"))),
    "msseg2": PosterLayout(
        (*_DICE_IOU, ("mPrec", "precision"), ("mRec", "recall")),
        (),
    ),
}
DEFAULT_LAYOUT = PosterLayout(_DICE_IOU, None)

_EMPTY_KINDS = (
    ("both_empty", "absent (GT and prediction empty)"),
    ("gt_empty_only", "false positive (GT empty)"),
    ("pred_empty_only", "missed (prediction empty)"),
    ("hd95_excluded", "HD95 not in the mean"),
)

_POLICY = {
    "default": (
        "`default` (nnU-Net style): a ratio with an empty denominator is undefined (NaN) and "
        "left out of the mean over cases: a class absent from both the ground truth and the "
        "prediction counts for no metric; a false positive (GT empty) scores Dice = IoU = "
        "precision = 0 with recall undefined; a miss (prediction empty) scores Dice = IoU = "
        "recall = 0 with precision undefined. HD95 is defined only when both masks are "
        "non-empty (in mm, from the case's spacing); the cases it leaves out are counted below."
    ),
    "transunet": (
        "`transunet` (TransUNet's `calculate_metric_percase`, comparable with published "
        "tables): prediction present and GT empty gives 1 (Dice, IoU, precision, recall) and "
        "HD95 0; an empty prediction gives 0 and HD95 0; nothing is left out of the means. "
        "HD95 is in voxels (spacing ignored, as TransUNet calls medpy without it)."
    ),
}


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100.0 * value:.2f}"


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_first: bool) -> str:
    sep = [":---" if align_first and i == 0 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def poster_table(results: TestResults, dataset: str, label: str) -> str:
    """The poster's results table for ``dataset`` (one row, ``label`` in its first column).

    Values are percentages with 2 decimals: the means over the foreground classes of the
    per-class means over cases, then the per-class Dice columns of the layout.

    Raises:
        ValueError: the layout names a class missing from ``results.class_names``.
    """
    layout = POSTER_LAYOUTS.get(dataset, DEFAULT_LAYOUT)
    names = list(results.class_names)
    classes = layout.classes if layout.classes is not None else tuple((n, n) for n in names)
    missing = [name for _, name in classes if name not in names]
    if missing:
        raise ValueError(
            f"The {dataset!r} poster table needs the classes {missing}, but the model's "
            f"foreground classes are {names}"
        )
    header = ["Loss functions", *(h for h, _ in layout.means), *(h for h, _ in classes)]
    row = [label]
    row += [_pct(results.mean[metric]) for _, metric in layout.means]
    row += [_pct(float(results.per_class["dice"][names.index(name)])) for _, name in classes]
    return _md_table(header, [row], align_first=True)


def summary_markdown(results: TestResults, dataset: str, label: str) -> str:
    """The whole ``summary.md``: poster table, per-class metrics, empty-mask counts, policy."""
    n_cases = len(results.cases)
    hd_unit = "voxels" if results.protocol == "transunet" else "mm"
    parts = [
        f"# Test results: {dataset}, {label}",
        "",
        f"{n_cases} test cases, empty-mask protocol `{results.protocol}`. Per class: mean over "
        "cases; m*: mean of those over the foreground classes. Percent, 2 decimals.",
        "",
        poster_table(results, dataset, label),
        "",
        "## Every metric per class",
        "",
    ]
    header = [
        "Class",
        "Dice (%)",
        "IoU (%)",
        f"HD95 ({hd_unit})",
        "Precision (%)",
        "Recall (%)",
    ]
    rows = []
    for i, name in enumerate(results.class_names):
        pc = {m: float(results.per_class[m][i]) for m in METRIC_NAMES}
        rows.append(
            [
                name,
                _pct(pc["dice"]),
                _pct(pc["iou"]),
                _num(pc["hd95"]),
                _pct(pc["precision"]),
                _pct(pc["recall"]),
            ]
        )
    mean = results.mean
    rows.append(
        [
            "**mean**",
            _pct(mean["dice"]),
            _pct(mean["iou"]),
            _num(mean["hd95"]),
            _pct(mean["precision"]),
            _pct(mean["recall"]),
        ]
    )
    parts += [_md_table(header, rows, align_first=True), ""]
    parts += [
        "## Empty masks",
        "",
        f"Number of cases (of {n_cases}) per class in each situation.",
        "",
    ]
    counts = results.empty_counts
    header = ["Class", *(title for _, title in _EMPTY_KINDS)]
    rows = [
        [name, *(str(int(counts[kind][i])) for kind, _ in _EMPTY_KINDS)]
        for i, name in enumerate(results.class_names)
    ]
    rows.append(["**total**", *(str(int(counts[kind].sum())) for kind, _ in _EMPTY_KINDS)])
    parts += [_md_table(header, rows, align_first=True), ""]
    parts += [f"Policy: {_POLICY.get(results.protocol, results.protocol)}", ""]
    return "\n".join(parts)


def _csv_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form; "nan" where undefined
    return str(value)


def write_per_case_csv(results: TestResults, path: str | os.PathLike) -> Path:
    """Write ``per_case.csv``: one row per case and foreground class, sorted by case index
    then label, columns :data:`PER_CASE_COLUMNS` (metrics with full float precision)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_CASE_COLUMNS)
        for row in results.per_case_rows():
            writer.writerow([_csv_value(row[c]) for c in PER_CASE_COLUMNS])
    return path


# --------------------------------------------------------------------------------------------
# predicted masks
# --------------------------------------------------------------------------------------------
def _first(batch: dict[str, Any], key: str) -> Any:
    value = batch.get(key)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return value[0]
    if isinstance(value, torch.Tensor):
        return value[0].detach().cpu().numpy()
    return np.asarray(value)[0]


def write_prediction(pred: np.ndarray, batch: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a predicted test mask ``(D, H, W)`` (canonical orientation) as NIfTI.

    The geometry comes from the test batch (batch size 1):

    - ``raw_affine`` (1, 4, 4) [+ ``slice_axis``]: the raw NIfTI's voxel grid (the array is put
      back in the raw voxel order with ``datamodules.nifti.canonical_to_raw``), so the mask
      overlays the raw image voxel for voxel; a NaN-filled ``raw_affine`` means "not from
      NIfTI" and is skipped;
    - else ``affine`` (1, 4, 4): the stored (D, H, W) array with its index-to-world affine
      (same world position, canonical voxel order);
    - else a diagonal affine from ``spacing`` (mm), with a warning.

    The file is written under a temporary name and moved into place, so processes writing the
    same (padded, repeated) case never leave a half-written file.
    """
    path = Path(path)
    mask = np.ascontiguousarray(np.asarray(pred).astype(np.uint8))
    raw_affine, affine = _first(batch, "raw_affine"), _first(batch, "affine")
    # a NaN-filled raw_affine marks a case that did not come from NIfTI
    if raw_affine is not None and not np.isfinite(np.asarray(raw_affine, np.float64)).all():
        raw_affine = None
    if affine is not None and not np.isfinite(np.asarray(affine, np.float64)).all():
        affine = None
    if raw_affine is not None:
        slice_axis = _first(batch, "slice_axis") or "superior"
        data = np.ascontiguousarray(canonical_to_raw(mask, raw_affine, str(slice_axis)))
        out_affine = np.asarray(raw_affine, dtype=np.float64)
    elif affine is not None:
        data, out_affine = mask, np.asarray(affine, dtype=np.float64)
    else:
        spacing = _first(batch, "spacing")
        warnings.warn(
            "Test batches carry no `raw_affine` / `affine`: predicted masks are written in the "
            "stored (D, H, W) order with a diagonal affine from the spacing (no scanner position).",
            stacklevel=2,
        )
        out_affine = np.diag([*(np.ones(3) if spacing is None else spacing), 1.0])
        data = mask
    image = nib.Nifti1Image(data, out_affine)
    image.set_qform(out_affine, code=1)
    image.set_sform(out_affine, code=1)
    if raw_affine is not None:  # the input's own qform / sform and codes, as make predict
        for name, setter in (("qform", image.set_qform), ("sform", image.set_sform)):
            code, matrix = _first(batch, f"raw_{name}_code"), _first(batch, f"raw_{name}")
            if code is None or int(code) < 0:
                continue  # not recorded (split files written before the codes were stored)
            finite = matrix is not None and np.isfinite(np.asarray(matrix, np.float64)).all()
            setter(np.asarray(matrix, np.float64) if finite else out_affine, code=int(code))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path
