"""SegmentationModel's ignore_index: set on every loss term, left out of the metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losses import build_loss
from losses.cross_entropy import CrossEntropyLoss
from models import SegmentationModel
from models.scores import PooledDiceIoU


def _model(loss: nn.Module, ignore_index: int | None) -> SegmentationModel:
    return SegmentationModel(loss=loss, in_channels=1, num_classes=3, ignore_index=ignore_index)


def test_ignore_index_reaches_every_term() -> None:
    model = _model(build_loss("ce_topk_dice"), 3)
    terms = [m for m in model.loss.modules() if hasattr(m, "validate_args")]
    assert terms and all(m.ignore_index == 3 for m in terms)


def test_ignored_pixels_leave_the_scores() -> None:
    model = _model(build_loss("ce_dice"), 3)
    target = torch.tensor([[[1, 1, 3, 3], [2, 0, 3, 0]]])
    pred = torch.tensor([[[1, 1, 2, 1], [2, 0, 1, 0]]])  # wrong only on ignored pixels
    scores = PooledDiceIoU(3)
    scores.update(*model._without_ignored(pred, target))
    dice = scores.compute()["dice"]
    assert dice[1].item() == 1.0 and dice[2].item() == 1.0  # foreground: perfect
    plain = _model(build_loss("ce_dice"), None)
    assert plain._without_ignored(pred, target)[0] is pred


@pytest.mark.parametrize("bad", [1, True, 2.5])
def test_bad_ignore_index(bad) -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        _model(build_loss("ce"), bad)


def test_conflicting_loss_ignore_index() -> None:
    with pytest.raises(ValueError, match="ignore label is 3"):
        _model(CrossEntropyLoss(ignore_index=5), 3)
