"""Tests for models.metrics: reference values from medpy and from hand computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage as ndi

from models.metrics import (
    METRIC_NAMES,
    aggregate_case_metrics,
    compute_case_metrics,
    count_empty_masks,
    empty_mask_flags,
    hd95,
)
from models.surface_distance import hd95_from_masks

ATOL = 1e-9  # the brief requires 1e-6 against medpy; the implementation is exact to rounding


def _blob_labels(shape: tuple[int, ...], num_classes: int, sigma: float, seed: int) -> np.ndarray:
    """Smooth random label map: argmax of smoothed noise, background channel boosted."""
    rng = np.random.default_rng(seed)
    scores = np.stack(
        [ndi.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(num_classes)]
    )
    scores[0] += 0.15
    return scores.argmax(axis=0).astype(np.uint8)


def _medpy_row(pred: np.ndarray, target: np.ndarray, c: int, spacing) -> dict[str, float]:
    p, t = pred == c, target == c
    return {
        "dice": medpy_binary.dc(p, t),
        "iou": medpy_binary.jc(p, t),
        "precision": medpy_binary.precision(p, t),
        "recall": medpy_binary.recall(p, t),
        "hd95": medpy_binary.hd95(p, t, voxelspacing=spacing),
    }


# --------------------------------------------------------------------------------------------
# against medpy
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [
        ((10, 18, 16), (2.5, 0.8, 0.8), 0),
        ((10, 18, 16), (2.5, 0.8, 0.8), 1),
        ((8, 14, 20), None, 2),
        ((6, 16, 16), (1.0, 0.7, 1.3), 3),
        ((24, 20), (0.7, 1.3), 4),
        ((30, 22), None, 5),
    ],
)
@pytest.mark.parametrize("protocol", ["default", "transunet"])
def test_matches_medpy_on_random_blobs(shape, spacing, seed, protocol):
    num_classes = 4
    target = _blob_labels(shape, num_classes, sigma=1.5, seed=seed)
    pred = _blob_labels(shape, num_classes, sigma=1.5, seed=seed + 100)
    # Smooth blobs of this size touch the array border; make sure the case is covered.
    border = np.zeros(shape, dtype=bool)
    border[0] = True
    border[-1] = True
    assert (target[border] > 0).any() and (pred[border] > 0).any()
    out = compute_case_metrics(pred, target, num_classes, spacing=spacing, protocol=protocol)
    assert set(out) == set(METRIC_NAMES)
    for c in range(1, num_classes):
        assert (pred == c).any() and (target == c).any(), "fixture must fill every class"
        # TransUNet calls medpy's hd95 without voxelspacing.
        ref = _medpy_row(pred, target, c, spacing if protocol == "default" else None)
        for name, value in ref.items():
            assert out[name].dtype == np.float64 and out[name].shape == (num_classes - 1,)
            assert out[name][c - 1] == pytest.approx(value, abs=ATOL), (name, c)


@pytest.mark.parametrize("method", ["kdtree", "edt", "auto"])
@pytest.mark.parametrize(
    ("shape", "sigma", "spacing"),
    [
        ((12, 20, 18), 2.0, (2.5, 0.8, 0.8)),  # smooth blobs
        ((12, 20, 18), 0.6, (2.5, 0.8, 0.8)),  # speckle: nearly every voxel is surface
        ((40, 36), 0.6, (0.7, 1.3)),
        ((40, 36), 3.0, None),
    ],
)
def test_hd95_both_algorithms_match_medpy(method, shape, sigma, spacing):
    rng = np.random.default_rng(7)
    a = ndi.gaussian_filter(rng.standard_normal(shape), sigma) > 0.1
    b = ndi.gaussian_filter(rng.standard_normal(shape), sigma) > 0.0
    sp = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    ref = medpy_binary.hd95(a, b, voxelspacing=spacing)
    assert hd95_from_masks(a, b, sp, method) == pytest.approx(ref, abs=ATOL)


@pytest.mark.parametrize("spacing", [(2.5, 0.8, 0.8), None])
def test_hd95_masks_touching_every_border_and_far_apart(spacing):
    shape = (9, 17, 15)
    a = np.zeros(shape, dtype=bool)
    a[0:4, 0:6, 0:5] = True  # corner box touching three faces
    a[:, 8:10, -3:] = True  # slab through the whole depth, touching three more faces
    b = np.zeros(shape, dtype=bool)
    b[1:5, 1:7, 1:6] = True  # interior box near a's corner box
    b[-1, -1, -1] = True  # single voxel in the opposite corner
    ref = medpy_binary.hd95(a, b, voxelspacing=spacing)
    assert hd95(a, b, spacing) == pytest.approx(ref, abs=ATOL)
    assert hd95(b, a, spacing) == pytest.approx(ref, abs=ATOL)  # symmetric


def test_hd95_accepts_label_masks_like_medpy():
    """Non-zero = object, whatever the dtype (medpy converts to bool the same way)."""
    a = np.zeros((6, 9), dtype=np.int64)
    a[1:3, 1:4] = 7
    b = np.zeros((6, 9), dtype=np.uint8)
    b[2:5, 5:8] = 1
    assert hd95(a, b) == pytest.approx(medpy_binary.hd95(a, b), abs=ATOL)


# --------------------------------------------------------------------------------------------
# hand-computed
# --------------------------------------------------------------------------------------------
def test_hd95_two_lines_by_hand():
    # a: columns 1..3 of row 2; b: columns 6..9. One pixel thick, so every pixel is surface.
    # a->b: 5, 4, 3; b->a: 3, 4, 5, 6; pooled sorted: 3 3 4 4 5 5 6 (n = 7).
    # 95th percentile (linear): position 0.95 * 6 = 5.7 -> 5 + 0.7 * (6 - 5) = 5.7 columns.
    a = np.zeros((5, 12), dtype=bool)
    b = np.zeros((5, 12), dtype=bool)
    a[2, 1:4] = True
    b[2, 6:10] = True
    assert hd95(a, b) == pytest.approx(5.7, abs=1e-12)
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(5.7 * 0.5, abs=1e-12)
    assert hd95(a, b, spacing=(0.5, 2.0)) == pytest.approx(5.7 * 2.0, abs=1e-12)


def test_hd95_surface_excludes_interior_and_counts_array_border():
    # a: 3x3 square in the rows 0..2 (the full height) of a (3, 10) image, columns 0..2;
    # b: the single pixel (1, 9). Erosion with background outside the array keeps only a's
    # centre (1, 1) as interior, so a's surface is its ring of 8 pixels:
    #   a->b: sqrt(82) x2, 9, sqrt(65) x2, sqrt(50) x2, 7;   b->a: 7 (to (1, 2)).
    # pooled sorted: 7 7 sqrt50 sqrt50 sqrt65 sqrt65 9 sqrt82 sqrt82 (n = 9): position 7.6
    # lies between two sqrt(82) -> sqrt(82). Counting the centre as surface would add 8 and give
    # 9.03...; treating outside the array as object would leave only column 2 as surface and
    # give a value below sqrt(50).
    a = np.zeros((3, 10), dtype=bool)
    a[:, 0:3] = True
    b = np.zeros((3, 10), dtype=bool)
    b[1, 9] = True
    assert hd95(a, b) == pytest.approx(math.sqrt(82.0), abs=1e-12)


def test_hd95_single_voxels_anisotropic_by_hand():
    a = np.zeros((4, 5, 5), dtype=bool)
    b = np.zeros((4, 5, 5), dtype=bool)
    a[1, 1, 1] = True
    b[2, 3, 3] = True  # offset (1, 2, 2) voxels
    expected = math.sqrt(2.5**2 + (2 * 0.8) ** 2 + (2 * 0.8) ** 2)
    assert hd95(a, b, (2.5, 0.8, 0.8)) == pytest.approx(expected, abs=1e-12)
    assert hd95(a, a, (2.5, 0.8, 0.8)) == 0.0


def test_overlap_metrics_by_hand():
    # 1 x 10 strip: target class 1 on columns 0..5 (6 px), pred class 1 on columns 3..9 (7 px).
    # TP = 3: dice = 6/13, iou = 3/10, precision = 3/7, recall = 3/6.
    # Both are lines, all pixels surface: pred->target: 0 0 0 1 2 3 4; target->pred: 3 2 1 0 0 0.
    # pooled sorted: 0 0 0 0 0 0 1 1 2 2 3 3 4 (n = 13): position 11.4 -> 3 + 0.4 = 3.4.
    target = np.zeros((1, 10), dtype=np.int64)
    pred = np.zeros((1, 10), dtype=np.int64)
    target[0, 0:6] = 1
    pred[0, 3:10] = 1
    out = compute_case_metrics(pred, target, num_classes=2)
    assert out["dice"][0] == pytest.approx(6 / 13)
    assert out["iou"][0] == pytest.approx(3 / 10)
    assert out["precision"][0] == pytest.approx(3 / 7)
    assert out["recall"][0] == pytest.approx(3 / 6)
    assert out["hd95"][0] == pytest.approx(3.4)
    assert compute_case_metrics(pred, target, 2, spacing=(1.0, 0.5))["hd95"][0] == pytest.approx(
        1.7
    )


# --------------------------------------------------------------------------------------------
# empty-mask policies
# --------------------------------------------------------------------------------------------
@pytest.fixture
def empty_case() -> tuple[np.ndarray, np.ndarray]:
    """Five classes: 1 in both, 2 in neither, 3 in the target only, 4 in the prediction only."""
    target = np.zeros((4, 8, 9), dtype=np.uint8)
    pred = np.zeros((4, 8, 9), dtype=np.uint8)
    target[1:3, 1:5, 1:5] = 1
    pred[1:4, 2:6, 1:5] = 1
    target[0:2, 6:8, 6:9] = 3
    pred[2:4, 6:8, 6:9] = 4
    return pred, target


def test_default_policy_every_empty_rule(empty_case):
    pred, target = empty_case
    out = compute_case_metrics(pred, target, num_classes=5, spacing=(2.5, 0.8, 0.8))
    nan = np.nan
    expected = {  # classes 1, 2 (absent), 3 (missed), 4 (false positive)
        "dice": [medpy_binary.dc(pred == 1, target == 1), nan, 0.0, 0.0],
        "iou": [medpy_binary.jc(pred == 1, target == 1), nan, 0.0, 0.0],
        "precision": [medpy_binary.precision(pred == 1, target == 1), nan, nan, 0.0],
        "recall": [medpy_binary.recall(pred == 1, target == 1), nan, 0.0, nan],
        "hd95": [medpy_binary.hd95(pred == 1, target == 1, (2.5, 0.8, 0.8)), nan, nan, nan],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(out[name], values, atol=ATOL, equal_nan=True, err_msg=name)


def test_transunet_policy_every_empty_rule(empty_case):
    pred, target = empty_case
    spacing = (2.5, 0.8, 0.8)
    out = compute_case_metrics(pred, target, 5, spacing=spacing, protocol="transunet")
    dc = medpy_binary.dc(pred == 1, target == 1)
    hd_vox = medpy_binary.hd95(pred == 1, target == 1)  # TransUNet: no voxelspacing
    assert hd_vox != pytest.approx(medpy_binary.hd95(pred == 1, target == 1, spacing))
    expected = {  # classes 1, 2 (absent -> 0, 0), 3 (missed -> 0, 0), 4 (false positive -> 1, 0)
        "dice": [dc, 0.0, 0.0, 1.0],
        "hd95": [hd_vox, 0.0, 0.0, 0.0],
        "iou": [medpy_binary.jc(pred == 1, target == 1), 0.0, 0.0, 1.0],
        "precision": [medpy_binary.precision(pred == 1, target == 1), 0.0, 0.0, 1.0],
        "recall": [medpy_binary.recall(pred == 1, target == 1), 0.0, 0.0, 1.0],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(out[name], values, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(out["iou"], out["dice"] / (2 - out["dice"]), atol=ATOL)


def _transunet_reference(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """TransUNet's calculate_metric_percase as its README/paper states it (medpy, no spacing)."""
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy_binary.dc(pred, gt), medpy_binary.hd95(pred, gt)
    if pred.sum() > 0 and gt.sum() == 0:
        return 1.0, 0.0
    return 0.0, 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transunet_matches_reference_per_class_with_sparse_classes(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    target = _blob_labels((6, 12, 12), 3, sigma=1.5, seed=seed)  # classes 0..2 only
    pred = _blob_labels((6, 12, 12), 3, sigma=1.5, seed=seed + 50)
    pred[pred == 2] = rng.choice([2, 4])  # sometimes a class the target never has
    out = compute_case_metrics(
        pred, target, num_classes, spacing=(3.0, 1.0, 1.0), protocol="transunet"
    )
    for c in range(1, num_classes):
        dc, hd = _transunet_reference(pred == c, target == c)
        assert out["dice"][c - 1] == pytest.approx(dc, abs=ATOL)
        assert out["hd95"][c - 1] == pytest.approx(hd, abs=ATOL)


def test_empty_flags_and_counts(empty_case):
    pred, target = empty_case
    flags = empty_mask_flags(pred, target, 5)
    np.testing.assert_array_equal(flags["gt_empty"], [False, True, False, True])
    np.testing.assert_array_equal(flags["pred_empty"], [False, True, True, False])
    perfect = empty_mask_flags(target, target, 5)
    counts = count_empty_masks([flags, flags, perfect])
    np.testing.assert_array_equal(counts["both_empty"], [0, 3, 0, 1])
    np.testing.assert_array_equal(counts["gt_empty_only"], [0, 0, 0, 2])
    np.testing.assert_array_equal(counts["pred_empty_only"], [0, 0, 2, 0])
    np.testing.assert_array_equal(counts["hd95_excluded"], [0, 3, 2, 3])
    # The counts are exactly the cases whose default HD95 is NaN.
    rows = [compute_case_metrics(p, t, 5) for p, t in ((pred, target),) * 2 + ((target, target),)]
    np.testing.assert_array_equal(
        np.isnan(np.stack([r["hd95"] for r in rows])).sum(axis=0), counts["hd95_excluded"]
    )


def test_all_background_case_default_and_transunet():
    zeros = np.zeros((3, 4, 4), dtype=np.int64)
    out = compute_case_metrics(zeros, zeros, 3)
    for name in METRIC_NAMES:
        assert np.isnan(out[name]).all(), name
    out = compute_case_metrics(zeros, zeros, 3, protocol="transunet")
    for name in METRIC_NAMES:
        np.testing.assert_array_equal(out[name], [0.0, 0.0], err_msg=name)


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
def test_aggregate_by_hand():
    nan = np.nan
    cases = [
        {"dice": np.array([0.5, nan, 1.0]), "hd95": np.array([2.0, nan, nan])},
        {"dice": np.array([0.7, nan, 0.0]), "hd95": np.array([4.0, nan, 6.0])},
        {"dice": np.array([nan, nan, 0.5]), "hd95": np.array([nan, nan, 3.0])},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" for the all-NaN class
        per_class, mean = aggregate_case_metrics(cases)
    np.testing.assert_allclose(per_class["dice"], [0.6, nan, 0.5], equal_nan=True)
    np.testing.assert_allclose(per_class["hd95"], [3.0, nan, 4.5], equal_nan=True)
    assert mean["dice"] == pytest.approx(0.55)
    assert mean["hd95"] == pytest.approx(3.75)
    _, mean_all_nan = aggregate_case_metrics([{"dice": np.array([nan, nan])}])
    assert math.isnan(mean_all_nan["dice"])


def test_aggregate_real_rows_matches_numpy_nanmean(empty_case):
    pred, target = empty_case
    rows = [compute_case_metrics(pred, target, 5), compute_case_metrics(target, target, 5)]
    per_class, mean = aggregate_case_metrics(rows)
    assert set(per_class) == set(METRIC_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmean(np.stack([r["dice"] for r in rows]), axis=0)
    np.testing.assert_allclose(per_class["dice"], ref, equal_nan=True)
    assert mean["dice"] == pytest.approx(np.nanmean(ref))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(4, 5, 6\).*target \(4, 5, 7\)"):
        compute_case_metrics(np.zeros((4, 5, 6), int), np.zeros((4, 5, 7), int), 2)
    with pytest.raises(ValueError, match=r"result \(3, 3\).*reference \(3, 4\)"):
        hd95(np.ones((3, 3)), np.ones((3, 4)))


@pytest.mark.parametrize(
    ("where", "value", "pattern"),
    [("pred", 3, r"`pred`.*\[0, 2\].*label 3"), ("target", -1, r"`target`.*label -1")],
)
def test_label_out_of_range_names_the_value(where, value, pattern):
    pred = np.zeros((2, 4, 4), dtype=np.int64)
    target = np.zeros((2, 4, 4), dtype=np.int64)
    (pred if where == "pred" else target)[1, 2, 3] = value
    with pytest.raises(ValueError, match=pattern):
        compute_case_metrics(pred, target, 3)
    with pytest.raises(ValueError, match=pattern):
        empty_mask_flags(pred, target, 3)


@pytest.mark.parametrize(
    ("spacing", "pattern"),
    [
        ((1.0, 1.0), r"one value per array axis \(3 for a 3D array"),
        ((1.0, 1.0, 1.0, 1.0), r"one value per array axis"),
        (2.0, r"one value per array axis"),
        ((1.0, 0.0, 1.0), r"positive and finite"),
        ((1.0, np.nan, 1.0), r"positive and finite"),
    ],
)
def test_bad_spacing(spacing, pattern):
    x = np.zeros((2, 3, 3), dtype=np.int64)
    x[0, 0, 0] = 1
    with pytest.raises(ValueError, match=pattern):
        compute_case_metrics(x, x, 2, spacing=spacing)
    with pytest.raises(ValueError, match=pattern):
        hd95(x, x, spacing)


def test_other_bad_input():
    x = np.zeros((3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match=r"`protocol`.*'nnunet'"):
        compute_case_metrics(x, x, 2, protocol="nnunet")
    with pytest.raises(ValueError, match=r"`num_classes` to be >= 2.*got 1"):
        compute_case_metrics(x, x, 1)
    with pytest.raises(TypeError, match=r"`num_classes` to be an int.*float"):
        compute_case_metrics(x, x, 2.0)
    with pytest.raises(TypeError, match=r"`pred` to be an integer.*float32"):
        compute_case_metrics(x.astype(np.float32), x, 2)
    with pytest.raises(ValueError, match=r"`target` to be a label volume.*\(9,\)"):
        compute_case_metrics(np.zeros((3, 3), int), np.zeros(9, int), 2)
    with pytest.raises(ValueError, match=r"`reference` is empty"):
        hd95(np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"at least one case"):
        aggregate_case_metrics([])
    with pytest.raises(ValueError, match=r"case 1 has \['dice', 'iou'\]"):
        aggregate_case_metrics([{"dice": np.ones(2)}, {"dice": np.ones(2), "iou": np.ones(2)}])
    with pytest.raises(ValueError, match=r"same number of classes for `dice`"):
        aggregate_case_metrics([{"dice": np.ones(2)}, {"dice": np.ones(3)}])
    with pytest.raises(ValueError, match=r"at least one case"):
        count_empty_masks([])


@pytest.mark.parametrize("expected", ["kdtree", "edt"])
def test_hd95_auto_picks_the_cheaper_exact_algorithm(monkeypatch, expected):
    import models.surface_distance as metrics

    calls: list[str] = []
    for name in ("kdtree", "edt"):
        original = getattr(metrics, f"_surface_distances_{name}")

        def spy(*args, _name=name, _original=original):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(metrics, f"_surface_distances_{name}", spy)
    shape = (12, 40, 40)
    if expected == "kdtree":  # compact objects far apart: few surface voxels in a large box
        a = np.zeros(shape, dtype=bool)
        b = np.zeros(shape, dtype=bool)
        a[1:6, 2:12, 3:11] = True
        b[6:11, 25:37, 28:38] = True
        b[0, 39, 0] = True
    else:  # speckle: almost every voxel is surface
        rng = np.random.default_rng(7)
        a = ndi.gaussian_filter(rng.standard_normal(shape), 0.6) > 0.1
        b = ndi.gaussian_filter(rng.standard_normal(shape), 0.6) > 0.0
    value = hd95(a, b, (2.5, 0.8, 0.8))
    assert calls == [expected]
    assert value == pytest.approx(medpy_binary.hd95(a, b, (2.5, 0.8, 0.8)), abs=ATOL)
