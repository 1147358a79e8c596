"""Per-case segmentation metrics on integer label volumes: Dice, IoU, HD95, precision, recall.

Everything here is plain numpy/scipy and works on one case (a 3D volume (D, H, W) or a 2D image
(H, W)) at a time; the model collects the per-case rows and reduces them with
:func:`aggregate_case_metrics`.

Definitions, per case and foreground class ``c`` (``P = {pred == c}``, ``G = {target == c}``,
``TP = |P and G|``)::

    dice      = 2 TP / (|P| + |G|)
    iou       = TP / |P or G|  = TP / (|P| + |G| - TP)  = dice / (2 - dice)
    precision = TP / |P|
    recall    = TP / |G|
    hd95      = 95th percentile (numpy's linear interpolation) of the pooled surface distances
                {d(x, S_G) : x in S_P}  and  {d(y, S_P) : y in S_G}

where the surface ``S_M = M xor erode(M)``, eroded once with the face-connected cross
(connectivity 1) and with everything outside the array counted as background (so mask voxels
on the array border are surface), and ``d(x, S)`` is the Euclidean distance from ``x`` to the
nearest voxel of ``S`` with per-axis ``spacing``. These are medpy's ``dc``, ``jc``,
``precision``, ``recall`` and ``hd95(result, reference, voxelspacing)`` definitions; the values
agree with medpy to float rounding wherever both masks are non-empty (tests: 1e-9).

Empty-mask policies (``protocol``), stated here and nowhere else::

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree

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
# Surface distances use a k-d tree over surface voxels unless the surfaces are so dense that a
# distance transform over the union's bounding box is cheaper (both paths are exact; measured
# crossover near 20% surface voxels per box voxel).
_KDTREE_MAX_SURFACE_FRACTION = 0.1


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


def _check_spacing(spacing: Sequence[float] | np.ndarray | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.ndim != 1 or sp.shape[0] != ndim:
        raise ValueError(
            f"Expected argument `spacing` to hold one value per array axis ({ndim} for a "
            f"{ndim}D array, in the array's axis order), but got {np.asarray(spacing).tolist()}"
        )
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"Expected argument `spacing` to be positive and finite, but got {sp.tolist()}"
        )
    return sp


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
# surface distances
# --------------------------------------------------------------------------------------------
def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of the ``True`` voxels as slices, or None for an empty mask."""
    box: list[slice] = []
    sub = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(sub.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
        # Narrow the array along this axis so the next projections read less.
        index = [slice(None)] * mask.ndim
        index[axis] = box[-1]
        sub = sub[tuple(index)]
    return tuple(box)


def _surface_coords(mask: np.ndarray) -> np.ndarray:
    """Integer coordinates ``(N, ndim)`` of the surface voxels ``mask xor erode(mask)``.

    The erosion uses the face-connected cross and treats everything outside the array as
    background (scipy's ``binary_erosion`` default ``border_value=0``). It is computed on the
    mask's tight bounding box only: the voxels around that box are background in the full array
    as well, so treating the box's outside as background gives the same erosion.
    """
    box = _bounding_box(mask)
    if box is None:
        return np.empty((0, mask.ndim), dtype=np.intp)
    crop = mask[box]
    eroded = crop.copy()
    for axis in range(crop.ndim):
        lo = [slice(None)] * crop.ndim
        hi = [slice(None)] * crop.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        eroded[tuple(hi)] &= crop[tuple(lo)]  # neighbour at index - 1
        eroded[tuple(lo)] &= crop[tuple(hi)]  # neighbour at index + 1
        first = [slice(None)] * crop.ndim
        last = [slice(None)] * crop.ndim
        first[axis] = 0
        last[axis] = -1
        eroded[tuple(first)] = False  # neighbour outside the box: background
        eroded[tuple(last)] = False
    coords = np.stack(np.nonzero(crop & ~eroded), axis=1)
    coords += np.array([s.start for s in box], dtype=coords.dtype)
    return coords


def _nearest_distances(
    src: np.ndarray, dst: np.ndarray, spacing: np.ndarray, tree: cKDTree
) -> np.ndarray:
    """Distance from each point of ``src`` to its nearest point of ``dst`` (tree over ``dst``).

    The tree only picks the partner; the distance is then recomputed from the integer offset as
    ``sqrt(sum((offset * spacing)**2))``, the same float64 operations as scipy's EDT.
    """
    _, idx = tree.query(src * spacing, k=1)
    offset = (dst[idx] - src).astype(np.float64) * spacing
    return np.sqrt(np.einsum("ij,ij->i", offset, offset))


def _surface_distances_kdtree(
    surf_a: np.ndarray, surf_b: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    tree_a = cKDTree(surf_a * spacing)
    tree_b = cKDTree(surf_b * spacing)
    return np.concatenate(
        (
            _nearest_distances(surf_a, surf_b, spacing, tree_b),
            _nearest_distances(surf_b, surf_a, spacing, tree_a),
        )
    )


def _surface_distances_edt(
    surf_a: np.ndarray, surf_b: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    # Every surface voxel lies in the union's bounding box, so the nearest-surface distance
    # computed by an EDT restricted to that box is the distance in the full array.
    both = np.concatenate((surf_a, surf_b))
    origin = both.min(axis=0)
    shape = tuple(int(n) for n in both.max(axis=0) - origin + 1)
    local_a = tuple((surf_a - origin).T)
    local_b = tuple((surf_b - origin).T)
    out = []
    for src, dst in ((local_a, local_b), (local_b, local_a)):
        not_surface = np.ones(shape, dtype=bool)
        not_surface[dst] = False
        out.append(distance_transform_edt(not_surface, sampling=spacing)[src])
    return np.concatenate(out)


def _hd95_from_masks(
    result: np.ndarray,
    reference: np.ndarray,
    spacing: np.ndarray | None,
    method: Literal["auto", "kdtree", "edt"] = "auto",
) -> float:
    """HD95 of two non-empty boolean masks (same shape); ``method`` only selects the algorithm."""
    ndim = result.ndim
    sp = np.ones(ndim, dtype=np.float64) if spacing is None else spacing
    surf_a = _surface_coords(result)
    surf_b = _surface_coords(reference)
    if method == "auto":
        both = np.concatenate((surf_a, surf_b))
        box_voxels = float(np.prod(both.max(axis=0) - both.min(axis=0) + 1))
        n_points = surf_a.shape[0] + surf_b.shape[0]
        method = "kdtree" if n_points <= _KDTREE_MAX_SURFACE_FRACTION * box_voxels else "edt"
    if method == "kdtree":
        distances = _surface_distances_kdtree(surf_a, surf_b, sp)
    elif method == "edt":
        distances = _surface_distances_edt(surf_a, surf_b, sp)
    else:
        raise ValueError(f"Expected argument `method` in ('auto', 'kdtree', 'edt'), got {method!r}")
    return float(np.percentile(distances, 95))


def hd95(
    result: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] | np.ndarray | None = None,
) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks.

    Same definition as medpy's ``hd95(result, reference, voxelspacing)`` (see the module
    docstring): surfaces by a face-connected erosion with background outside the array, distances
    pooled in both directions, ``np.percentile(..., 95)``. Computed only from the surface voxels
    (a k-d tree, or an EDT over the union's bounding box when the surfaces are dense), so it costs
    a few array passes instead of two full-volume distance transforms.

    Args:
        result: mask ``(D, H, W)`` or ``(H, W)``, non-zero = object.
        reference: mask of the same shape.
        spacing: voxel size per axis in the array's axis order (e.g. mm); None = voxel units.

    Returns:
        HD95 in the unit of ``spacing``. Symmetric in its two arguments.

    Raises:
        ValueError: shapes differ, not 2D/3D, bad ``spacing``, or either mask is empty
            (HD95 is undefined; :func:`compute_case_metrics` applies the empty-mask policy).
    """
    a = np.asarray(result)
    b = np.asarray(reference)
    if a.shape != b.shape:
        raise ValueError(
            f"Expected `result` and `reference` to have the same shape, but got result {a.shape} "
            f"and reference {b.shape}"
        )
    if a.ndim not in (2, 3):
        raise ValueError(f"Expected 2D (H, W) or 3D (D, H, W) masks, but got shape {a.shape}")
    sp = _check_spacing(spacing, a.ndim)
    a = a.astype(bool, copy=False)
    b = b.astype(bool, copy=False)
    for name, m in (("result", a), ("reference", b)):
        if not m.any():
            raise ValueError(f"HD95 is undefined for an empty mask, but `{name}` is empty")
    return _hd95_from_masks(a, b, sp)


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

    Definitions and the empty-mask policy of each protocol: module docstring.

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
    sp = _check_spacing(spacing, pred_arr.ndim)
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
        hd[i] = _hd95_from_masks(pred_arr == c, target_arr == c, sp)

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
