"""Test reports: per_case.csv, summary.md in the poster layouts, empty-mask counts, masks."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.nifti import raw_to_canonical
from lightning_app.callbacks.test_report import TestReport
from lightning_app.reports import (
    PER_CASE_COLUMNS,
    poster_table,
    summary_markdown,
    write_per_case_csv,
    write_prediction,
)
from models.evaluation import CaseResult, TestResults

SYNAPSE = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta",
           "pancreas"]  # fmt: skip


def _results(
    names: list[str],
    dice: list[list[float]],
    protocol: str = "default",
    gt_empty: list[list[bool]] | None = None,
    pred_empty: list[list[bool]] | None = None,
) -> TestResults:
    """Results whose per-case metrics are given (dice per case and class; the other metrics
    derived by hand: iou = d / (2 - d), precision = recall = d, hd95 = 10 d)."""
    cases = []
    for i, row in enumerate(dice):
        d = np.asarray(row, dtype=np.float64)
        metrics = {
            "dice": d,
            "iou": d / (2 - d),
            "hd95": 10 * d,
            "precision": d.copy(),
            "recall": d.copy(),
        }
        ge = np.asarray(gt_empty[i] if gt_empty else [False] * len(names))
        pe = np.asarray(pred_empty[i] if pred_empty else [False] * len(names))
        cases.append(CaseResult(i, f"case{i}", metrics, ge, pe))
    return TestResults.from_cases(cases, names, protocol)


def _table_lines(md: str) -> list[list[str]]:
    """Cells of the first markdown table of ``md``."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_synapse_table_has_the_poster_column_order_and_percentages() -> None:
    # case 0: class k (label order) has dice 0.5 + 0.05 k; case 1: 0.9 for every class
    dice = [[0.5 + 0.05 * k for k in range(8)], [0.9] * 8]
    res = _results(SYNAPSE, dice)
    header, sep, row = _table_lines(poster_table(res, "synapse", "CE + topK-Dice"))
    assert header == [
        "Loss functions", "mDice", "mIoU", "Aorta", "Gallbladder", "Kidney left",
        "Kidney right", "Liver", "Pancreas", "Spleen", "Stomach",
    ]  # fmt: skip
    assert sep[0] == ":---" and all(s == "---:" for s in sep[1:])
    per_class = {n: (0.5 + 0.05 * k + 0.9) / 2 for k, n in enumerate(SYNAPSE)}
    order = ["aorta", "gallbladder", "left_kidney", "right_kidney", "liver", "pancreas",
             "spleen", "stomach"]  # fmt: skip
    mdice = sum(per_class.values()) / 8
    miou = sum(((0.5 + 0.05 * k) / (1.5 - 0.05 * k) + 0.9 / 1.1) / 2 for k in range(8)) / 8
    assert row == [
        "CE + topK-Dice",
        f"{100 * mdice:.2f}",
        f"{100 * miou:.2f}",
        *(f"{100 * per_class[n]:.2f}" for n in order),
    ]
    assert row[3] == "85.00"  # aorta, label 7 (k = 6): (0.5 + 0.3 + 0.9) / 2 by hand


def test_acdc_and_msseg_layouts() -> None:
    acdc = _results(["RV", "MYO", "LV"], [[0.8, 0.85, 0.95]])
    header, _, row = _table_lines(poster_table(acdc, "acdc", "CE"))
    assert header == ["Loss functions", "mDice", "mIoU", "RV", "MYO", "LV"]
    assert row == ["CE", "86.67", f"{100 * (0.8 / 1.2 + 0.85 / 1.15 + 0.95 / 1.05) / 3:.2f}",
                   "80.00", "85.00", "95.00"]  # fmt: skip
    msseg = _results(["new_lesion"], [[0.6], [0.7]])
    header, _, row = _table_lines(poster_table(msseg, "msseg2", "CE"))
    assert header == ["Loss functions", "mDice", "mIoU", "mPrec", "mRec"]
    assert row == ["CE", "65.00", f"{100 * (0.6 / 1.4 + 0.7 / 1.3) / 2:.2f}", "65.00", "65.00"]


def test_other_datasets_list_every_class_in_label_order() -> None:
    names = ["synthetic_large_organ", "synthetic_tiny_spot", "a_first_alphabetically"]
    res = _results(names, [[0.1, 0.2, 0.3]])
    header, _, row = _table_lines(poster_table(res, "phantom", "dice"))
    assert header == ["Loss functions", "mDice", "mIoU", *names]
    assert row[3:] == ["10.00", "20.00", "30.00"]


def test_poster_layout_with_missing_class_is_an_error() -> None:
    res = _results(["RV", "MYO"], [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"needs the classes \['LV'\]"):
        poster_table(res, "acdc", "CE")


def test_nan_means_are_shown_as_na() -> None:
    res = _results(["a", "b"], [[float("nan"), 0.5]])
    _, _, row = _table_lines(poster_table(res, "phantom", "x"))
    assert row == ["x", "50.00", f"{100 * 0.5 / 1.5:.2f}", "n/a", "50.00"]


def test_summary_has_hd95_empty_mask_counts_and_policy() -> None:
    # 3 cases, 2 classes; class b: absent in case 0, false positive in case 1, missed in case 2
    res = _results(
        ["a", "b"],
        [[0.9, float("nan")], [0.8, 0.0], [0.7, 0.0]],
        gt_empty=[[False, True], [False, True], [False, False]],
        pred_empty=[[False, True], [False, False], [False, True]],
    )
    md = summary_markdown(res, "phantom", "ce_topk_dice")
    assert md.startswith("# Test results: phantom, ce_topk_dice")
    assert "3 test cases, empty-mask protocol `default`" in md
    assert "HD95 (mm)" in md and "| a | 80.00 |" in md
    # per-class HD95 (= 10 x dice by construction): a -> 8.00
    a_row = next(r for r in _table_lines(md.split("## Every metric per class")[1]) if r[0] == "a")
    assert a_row[3] == "8.00"
    empty = _table_lines(md.split("## Empty masks")[1])
    assert empty[0][1:] == [
        "absent (GT and prediction empty)",
        "false positive (GT empty)",
        "missed (prediction empty)",
        "HD95 not in the mean",
    ]
    assert empty[2] == ["a", "0", "0", "0", "0"]
    assert empty[3] == ["b", "1", "1", "1", "3"]
    assert empty[4] == ["**total**", "1", "1", "1", "3"]
    assert "Policy: `default`" in md
    t = summary_markdown(_results(["a"], [[0.5]], protocol="transunet"), "phantom", "x")
    assert "HD95 (voxels)" in t and "Policy: `transunet`" in t


def test_per_case_csv_columns_rows_and_values(tmp_path: Path) -> None:
    res = _results(["a", "b"], [[0.9, float("nan")], [0.25, 0.5]],
                   gt_empty=[[False, True], [False, False]],
                   pred_empty=[[False, True], [False, False]])  # fmt: skip
    path = write_per_case_csv(res, tmp_path / "per_case.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == list(PER_CASE_COLUMNS)
    assert list(PER_CASE_COLUMNS) == [
        "index", "case", "class", "label", "dice", "iou", "hd95", "precision", "recall",
        "gt_empty", "pred_empty",
    ]  # fmt: skip
    assert [(r["index"], r["case"], r["class"], r["label"]) for r in rows] == [
        ("0", "case0", "a", "1"),
        ("0", "case0", "b", "2"),
        ("1", "case1", "a", "1"),
        ("1", "case1", "b", "2"),
    ]
    assert float(rows[2]["dice"]) == 0.25 and float(rows[2]["iou"]) == 0.25 / 1.75
    assert math.isnan(float(rows[1]["dice"])) and rows[1]["gt_empty"] == "1"
    assert rows[0]["gt_empty"] == "0"


def _oblique_affine() -> np.ndarray:
    theta = np.deg2rad(25)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    # raw axes: x runs inferior (flipped, permuted), y right-ish, z anterior-ish
    axes = np.array([[0, 1.5, 0], [0, 0, -0.8], [-2.0, 0, 0]]).T
    aff = np.eye(4)
    aff[:3, :3] = rot @ axes
    aff[:3, 3] = [10, -20, 30]
    return aff


def test_prediction_written_back_in_the_raw_geometry(tmp_path: Path) -> None:
    raw_affine = _oblique_affine()
    raw = np.zeros((6, 9, 11), dtype=np.uint8)
    raw[1:3, 2:7, 4:10] = 2  # an asymmetric box in raw voxel order
    raw[5, 0, 0] = 1
    canon, affine, spacing = raw_to_canonical(raw, raw_affine)
    assert canon.shape != raw.shape  # the orientation really changes the array
    batch = {
        "raw_affine": torch.from_numpy(raw_affine)[None],
        "slice_axis": ["superior"],
        "affine": torch.from_numpy(affine)[None],
        "spacing": torch.from_numpy(spacing)[None],
    }
    path = write_prediction(np.ascontiguousarray(canon), batch, tmp_path / "p" / "c.nii.gz")
    img = nib.load(str(path))
    assert img.shape == raw.shape
    np.testing.assert_allclose(img.affine, raw_affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), raw)
    assert img.get_data_dtype() == np.uint8
    assert not list((tmp_path / "p").glob(".*tmp*"))  # temporary file moved into place

    # without raw geometry: the stored (D, H, W) array with its index-to-world affine
    path2 = write_prediction(canon, {"affine": batch["affine"]}, tmp_path / "c2.nii.gz")
    img2 = nib.load(str(path2))
    assert img2.shape == canon.shape
    np.testing.assert_allclose(img2.affine, affine, atol=1e-5)
    # the same world point holds the same label in both files
    ijk_raw = np.array([1, 2, 4, 1.0])
    world = raw_affine @ ijk_raw
    dhw = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
    assert np.asarray(img2.dataobj)[tuple(dhw)] == raw[1, 2, 4] == 2

    # a NaN raw_affine (case not from NIfTI) falls back to the affine
    nan_raw = {"raw_affine": torch.full((1, 4, 4), float("nan")), "affine": batch["affine"]}
    path4 = write_prediction(canon, nan_raw, tmp_path / "c4.nii.gz")
    assert nib.load(str(path4)).shape == canon.shape

    with pytest.warns(UserWarning, match="carry no `raw_affine` / `affine`"):
        path3 = write_prediction(canon, {"spacing": batch["spacing"]}, tmp_path / "c3.nii.gz")
    np.testing.assert_allclose(nib.load(str(path3)).affine, np.diag([*spacing, 1.0]), atol=1e-5)


def test_report_callback_rejects_absolute_predictions_dir() -> None:
    with pytest.raises(ValueError, match="predictions_dir"):
        TestReport(predictions_dir="/tmp/x")
    with pytest.raises(ValueError, match="predictions_dir"):
        TestReport(predictions_dir="")
