"""Per-case segmentation metrics on integer label volumes: Dice, IoU, HD95, precision, recall.

Plain numpy/scipy on one case (a 3D volume (D, H, W) or a 2D image (H, W)) at a time; the model
collects the per-case rows and reduces them with :func:`aggregate_case_metrics`. Per case and
foreground class ``c`` (``P = {pred == c}``, ``G = {target == c}``, ``TP = |P and G|``)::

    dice = 2 TP / (|P| + |G|)    iou = TP / (|P| + |G| - TP)    precision = TP / |P|
    recall = TP / |G|            hd95: :mod:`models.surface_distance`

These are medpy's ``dc``, ``jc``, ``precision``, ``recall`` and ``hd95`` definitions (the values
agree with medpy to float rounding wherever both masks are non-empty). The empty-mask policy of
each ``protocol`` (``"default"``, nnU-Net style NaN; ``"transunet"``, never NaN) is stated
once, in :func:`compute_case_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from models.surface_distance import check_spacing, hd95, hd95_from_masks

__all__ = [
    "METRIC_NAMES",
    "PROTOCOLS",
    "aggregate_case_metrics",
    "compute_case_metrics",
    "count_empty_masks",
    "empty_mask_flags",
    "hd95",
]

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95", "precision", "recall")
PROTOCOLS: tuple[str, ...] = ("default", "transunet")

# Voxels per bincount chunk when counting the confusion table (bounds the int64 temporary).
_CHUNK_VOXELS = 1 << 22


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_label_array(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"Expected argument `{name}` to be an integer (or bool) label array, "
            f"but got dtype {arr.dtype}"
        )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"Expected argument `{name}` to be a label volume (D, H, W) or image (H, W), "
            f"but got shape {arr.shape}"
        )
    return arr


def _check_labels(pred: object, target: object, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(
            f"Expected argument `num_classes` to be an int, but got {type(num_classes).__name__}"
        )
    if num_classes < 2:
        raise ValueError(
            "Expected argument `num_classes` to be >= 2 (background plus at least one class), "
            f"but got {num_classes}"
        )
    pred_arr = _as_label_array(pred, "pred")
    target_arr = _as_label_array(target, "target")
    if pred_arr.shape != target_arr.shape:
        raise ValueError(
            f"Expected `pred` and `target` to have the same shape, but got pred {pred_arr.shape} "
            f"and target {target_arr.shape}"
        )
    for name, arr in (("pred", pred_arr), ("target", target_arr)):
        if arr.size == 0:
            raise ValueError(
                f"Expected argument `{name}` to be non-empty, but got shape {arr.shape}"
            )
        lo, hi = int(arr.min()), int(arr.max())
        bad = lo if lo < 0 else hi if hi >= num_classes else None
        if bad is not None:
            raise ValueError(
                f"Expected labels of `{name}` in [0, {num_classes - 1}] "
                f"(num_classes={num_classes}), but found label {bad}"
            )
    return pred_arr, target_arr


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------
def _class_counts(
    pred: np.ndarray, target: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(TP, |P|, |G|)``, each int64 ``(num_classes,)``, from one chunked bincount."""
    flat_p = pred.reshape(-1)
    flat_t = target.reshape(-1)
    table = np.zeros(num_classes * num_classes, dtype=np.int64)
    for start in range(0, flat_p.size, _CHUNK_VOXELS):
        p = flat_p[start : start + _CHUNK_VOXELS].astype(np.intp)
        t = flat_t[start : start + _CHUNK_VOXELS].astype(np.intp)
        table += np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    confusion = table.reshape(num_classes, num_classes)  # rows: target, columns: pred
    return np.diag(confusion).copy(), confusion.sum(axis=0), confusion.sum(axis=1)


# --------------------------------------------------------------------------------------------
# per-case metrics
# --------------------------------------------------------------------------------------------
def compute_case_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | np.ndarray | None = None,
    protocol: Literal["default", "transunet"] = "default",
) -> dict[str, np.ndarray]:
    """Dice, IoU, HD95, precision and recall of one case, per foreground class.

    Definitions: module docstring.

    Empty-mask policies (``protocol``)::

        protocol="default" (nnU-Net style): a ratio with an empty denominator is undefined -> NaN,
        so nanmean excludes it; HD95 is defined only when both masks are non-empty.

            case for class c          dice  iou  precision  recall  hd95
            both non-empty            ratio ratio ratio     ratio   mm
            G empty, P non-empty      0     0    0          NaN     NaN
            G non-empty, P empty      0     0    NaN        0       NaN
            both empty (absent)       NaN   NaN  NaN        NaN     NaN

        protocol="transunet" (TransUNet's calculate_metric_percase): spacing is ignored (HD95 in
        voxels, as TransUNet calls medpy without voxelspacing); never NaN.

            case for class c          dice, iou, precision, recall  hd95
            both non-empty            ratio                         voxels
            G empty, P non-empty      1                             0
            P empty (G either)        0                             0

    Why HD95 is NaN (excluded from the mean) under ``"default"`` when exactly one side is empty,
    rather than a worst-case penalty such as the image diagonal: any such penalty measures the field
    of view, not the anatomy, so a table would depend on the scanner's crop and a handful of empty
    predictions would dominate a mean of millimetres; Dice already scores those cases 0. Since the
    exclusion hides them from the HD95 mean, the caller reports how often it happened:
    :func:`empty_mask_flags` gives the per-case flags, :func:`count_empty_masks` the counts.

    TransUNet reports only Dice and HD95; here IoU, precision and recall follow its Dice rule, so
    ``iou == dice / (2 - dice)`` holds per case and class under both protocols.

    Args:
        pred: predicted labels, integer ``(D, H, W)`` or ``(H, W)``, values in
            ``[0, num_classes)``.
        target: ground-truth labels, same shape and range.
        num_classes: number of classes including background (label 0).
        spacing: voxel size per axis in the array's axis order (mm; the datamodules' ``spacing``
            is (D, H, W)); None = voxel units. Used for HD95 only, and ignored by
            ``protocol="transunet"`` (which measures HD95 in voxels).
        protocol: ``"default"`` (NaN = undefined, excluded by ``nanmean``) or ``"transunet"``.

    Returns:
        ``{name: float64 (num_classes - 1,)}`` for ``name`` in :data:`METRIC_NAMES`
        (``dice``, ``iou``, ``hd95``, ``precision``, ``recall``); entry ``i`` is class ``i + 1``.

    Raises:
        TypeError: non-integer labels or ``num_classes``.
        ValueError: shape mismatch (both shapes named), not 2D/3D, a label outside
            ``[0, num_classes)`` (the label named), wrong ``spacing`` length or values,
            unknown ``protocol``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Expected argument `protocol` to be one of {PROTOCOLS}, but got {protocol!r}"
        )
    pred_arr, target_arr = _check_labels(pred, target, num_classes)
    sp = check_spacing(spacing, pred_arr.ndim)
    if protocol == "transunet":
        sp = None

    tp, n_pred, n_gt = (
        c[1:].astype(np.float64) for c in _class_counts(pred_arr, target_arr, num_classes)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = 2.0 * tp / (n_pred + n_gt)
        iou = tp / (n_pred + n_gt - tp)
        precision = tp / n_pred
        recall = tp / n_gt
    hd = np.full(num_classes - 1, np.nan)
    both = (n_pred > 0) & (n_gt > 0)
    for i in np.flatnonzero(both):
        c = i + 1
        hd[i] = hd95_from_masks(pred_arr == c, target_arr == c, sp)

    if protocol == "transunet":
        only_pred = (n_pred > 0) & (n_gt == 0)
        no_pred = n_pred == 0
        for arr in (dice, iou, precision, recall):
            arr[only_pred] = 1.0
            arr[no_pred] = 0.0
        hd[~both] = 0.0
    return {"dice": dice, "iou": iou, "hd95": hd, "precision": precision, "recall": recall}


def empty_mask_flags(
    pred: np.ndarray, target: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Which foreground classes are empty in the ground truth and in the prediction.

    Args:
        pred, target, num_classes: as in :func:`compute_case_metrics` (same checks).

    Returns:
        ``{"gt_empty": bool (num_classes - 1,), "pred_empty": bool (num_classes - 1,)}``;
        entry ``i`` is class ``i + 1``. Feed the per-case dicts to :func:`count_empty_masks`.
    """
    pred_arr, target_arr = _check_labels(pred, target, num_classes)
    _, n_pred, n_gt = _class_counts(pred_arr, target_arr, num_classes)
    return {"gt_empty": n_gt[1:] == 0, "pred_empty": n_pred[1:] == 0}


def count_empty_masks(flags: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Count the empty-mask situations over cases, per foreground class.

    Args:
        flags: one :func:`empty_mask_flags` dict per case.

    Returns:
        int64 ``(num_classes - 1,)`` arrays:
        ``both_empty`` (class absent, all metrics excluded under ``"default"``),
        ``gt_empty_only`` (false-positive case: recall and HD95 excluded),
        ``pred_empty_only`` (missed class: precision and HD95 excluded),
        ``hd95_excluded`` (the sum of the three: cases missing from the HD95 mean).

    Raises:
        ValueError: no cases, or cases with different numbers of classes.
    """
    if len(flags) == 0:
        raise ValueError("Expected argument `flags` to hold at least one case, but got none")
    try:
        gt = np.stack([np.asarray(f["gt_empty"], dtype=bool) for f in flags])
        pr = np.stack([np.asarray(f["pred_empty"], dtype=bool) for f in flags])
    except ValueError as err:
        raise ValueError(f"Expected every case to have the same number of classes: {err}") from err
    counts = {
        "both_empty": (gt & pr).sum(axis=0),
        "gt_empty_only": (gt & ~pr).sum(axis=0),
        "pred_empty_only": (~gt & pr).sum(axis=0),
    }
    counts = {k: v.astype(np.int64) for k, v in counts.items()}
    counts["hd95_excluded"] = (
        counts["both_empty"] + counts["gt_empty_only"] + counts["pred_empty_only"]
    )
    return counts


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without the all-NaN RuntimeWarning (all-NaN slices give NaN)."""
    valid = ~np.isnan(x)
    n = valid.sum(axis=axis)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def aggregate_case_metrics(
    cases: Sequence[Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Reduce per-case metrics to per-class means and the foreground mean.

    ``per_class[m][c] = nanmean over cases of cases[k][m][c]`` and
    ``mean[m] = nanmean over classes of per_class[m]`` (TransUNet's order: cases first, then
    classes). A class that no case defines is NaN in ``per_class`` and left out of ``mean``;
    ``mean`` is NaN if no class is defined.

    Args:
        cases: one :func:`compute_case_metrics` dict per case (all with the same keys and
            number of classes).

    Returns:
        ``(per_class, mean)``: ``{name: float64 (num_classes - 1,)}`` and ``{name: float}``.

    Raises:
        ValueError: no cases, or cases with different keys or numbers of classes.
    """
    if len(cases) == 0:
        raise ValueError("Expected argument `cases` to hold at least one case, but got none")
    names = list(cases[0].keys())
    for k, case in enumerate(cases):
        if list(case.keys()) != names:
            raise ValueError(
                f"Expected every case to have the keys {names}, but case {k} has {list(case.keys())}"
            )
    per_class: dict[str, np.ndarray] = {}
    mean: dict[str, float] = {}
    for name in names:
        try:
            table = np.stack([np.asarray(case[name], dtype=np.float64) for case in cases])
        except ValueError as err:
            raise ValueError(
                f"Expected every case to have the same number of classes for `{name}`: {err}"
            ) from err
        per_class[name] = _nanmean(table, axis=0)
        mean[name] = float(_nanmean(per_class[name], axis=0))
    return per_class, mean
