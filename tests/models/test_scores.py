"""PooledDiceIoU against hand-computed counts and torchmetrics' MulticlassStatScores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassStatScores

from models.scores import PooledDiceIoU, dice_iou_from_confmat


def test_hand_example() -> None:
    # 3 classes, 2 slices of 2x2; counts by hand:
    # class 1: TP=2 (pos (0,0,0),(1,0,0)), FP=1 ((0,1,1)), FN=1 ((1,1,0)) -> Dice 4/6, IoU 2/4
    # class 2: never in target, never predicted -> NaN
    # class 0: TP=4, FP=1, FN=1 -> Dice 8/10, IoU 4/6
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 0], [1, 0]]])
    pred = torch.tensor([[[1, 0], [0, 1]], [[1, 0], [0, 0]]])
    m = PooledDiceIoU(3)
    m.update(pred[:1], target[:1])
    m.update(pred[1:], target[1:])
    out = m.compute()
    assert out["dice"][1].item() == pytest.approx(4 / 6)
    assert out["iou"][1].item() == pytest.approx(2 / 4)
    assert out["dice"][0].item() == pytest.approx(8 / 10)
    assert out["iou"][0].item() == pytest.approx(4 / 6)
    assert math.isnan(out["dice"][2].item()) and math.isnan(out["iou"][2].item())
    # foreground mean skips background and the NaN class
    assert out["dice_mean"].item() == pytest.approx(4 / 6)
    assert out["iou_mean"].item() == pytest.approx(2 / 4)


def test_pooled_not_mean_of_slices() -> None:
    # slice A: class 1 perfect on 1 pixel (Dice 1); slice B: 3 FN pixels (Dice 0).
    # pooled: TP=1, FN=3 -> 2/(2+3) = 0.4, while the mean of per-slice Dice would be 0.5
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 0]]])
    pred = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    m = PooledDiceIoU(2)
    m.update(pred, target)
    assert m.compute()["dice"][1].item() == pytest.approx(0.4)


def test_predicted_but_absent_is_zero() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, 0, 0] = 1
    m = PooledDiceIoU(2)
    m.update(pred, target)
    assert m.compute()["dice"][1].item() == 0.0


@pytest.mark.parametrize("num_classes", [2, 4, 9])
def test_matches_torchmetrics_stat_scores(num_classes: int) -> None:
    g = torch.Generator().manual_seed(num_classes)
    m = PooledDiceIoU(num_classes)
    ref = MulticlassStatScores(num_classes, average=None, multidim_average="global")
    for _ in range(3):
        target = torch.randint(0, num_classes, (2, 16, 16), generator=g)
        logits = torch.randn(2, num_classes, 16, 16, generator=g)
        m.update(logits, target)  # float input -> argmax
        ref.update(logits.argmax(1), target)
    stats = ref.compute().double()  # (C, 5): tp, fp, tn, fn, support
    tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 3]
    out = m.compute()
    torch.testing.assert_close(out["dice"], 2 * tp / (2 * tp + fp + fn))
    torch.testing.assert_close(out["iou"], tp / (tp + fp + fn))


def test_states_sum_like_ddp() -> None:
    # two "processes" merged == one process that saw everything (dist_reduce_fx="sum")
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 3, (2, 8, 8), generator=g), torch.randint(0, 3, (2, 8, 8), generator=g))
        for _ in range(4)
    ]
    whole, a, b = PooledDiceIoU(3), PooledDiceIoU(3), PooledDiceIoU(3)
    for i, (p, t) in enumerate(batches):
        whole.update(p, t)
        (a if i % 2 else b).update(p, t)
    a.merge_state(b)
    torch.testing.assert_close(a.compute()["dice"], whole.compute()["dice"], equal_nan=True)


def test_confmat_numpy_reference() -> None:
    rng = np.random.default_rng(3)
    cm = rng.integers(0, 50, size=(4, 4))
    cm[3, :] = 0
    cm[:, 3] = 0
    dice, iou = dice_iou_from_confmat(torch.from_numpy(cm))
    for c in range(3):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        assert dice[c].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert iou[c].item() == pytest.approx(tp / (tp + fp + fn))
    assert math.isnan(dice[3].item())


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="`num_classes` to be an int >= 2"):
        PooledDiceIoU(1)
    m = PooledDiceIoU(3)
    with pytest.raises(ValueError, match="same shape"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"float `preds` of shape \(B, 3"):
        m.update(torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`target` values in \[0, 3\)"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="square"):
        dice_iou_from_confmat(torch.zeros(2, 3))
