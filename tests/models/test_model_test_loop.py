"""SegmentationModel's test-time options and steps (the full test loop: tests/lightning_app/
test_eval.py, against medpy)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import SegmentationModel

TINY = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def _model(**kwargs) -> SegmentationModel:
    torch.manual_seed(0)
    args = {"loss": nn.CrossEntropyLoss(), "in_channels": 1, "num_classes": 3, **kwargs}
    return SegmentationModel(model_kwargs=TINY, **args).eval()


def _batch(depth: int = 3, h: int = 20, w: int = 24) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(1, 1, depth, h, w, generator=g),
        "label": torch.randint(0, 3, (1, depth, h, w), generator=g),
        "spacing": torch.tensor([[2.0, 1.0, 1.0]], dtype=torch.float64),
        "case": ["case7"],
        "index": torch.tensor([4]),
    }


def test_evaluation_settings_are_not_checkpoint_hyperparameters() -> None:
    model = _model(image_size=32, test_protocol="transunet", inference_batch_size=2)
    # saved: the training size (prediction needs it); not saved: evaluation settings, which
    # would otherwise override the command line of `test --ckpt_path`
    assert model.hparams.image_size == 32
    assert "test_protocol" not in model.hparams and "inference_batch_size" not in model.hparams
    assert model.test_evaluator.protocol == "transunet"


def test_test_step_scores_one_case_and_returns_the_prediction() -> None:
    model = _model(image_size=32, inference_batch_size=2)
    model.on_test_epoch_start()
    batch = _batch()
    with torch.no_grad():
        out = model.test_step(batch, 0)
    assert out["pred"].shape == (3, 20, 24) and out["pred"].dtype == torch.int64
    (result,) = model.test_evaluator.local
    assert (result.index, result.case) == (4, "case7")
    assert set(result.metrics) == {"dice", "iou", "hd95", "precision", "recall"}
    with torch.no_grad():
        pred = model.predict_step(batch, 0)
    assert pred["case"] == "case7" and pred["index"] == 4
    assert torch.equal(pred["pred"], out["pred"])


def test_test_step_rejects_batches_of_several_volumes() -> None:
    model = _model()
    batch = _batch()
    batch["image"] = batch["image"].expand(2, -1, -1, -1, -1)
    with pytest.raises(ValueError, match=r"one volume, image \(1, C, D, H, W\)"):
        model.test_step(batch, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_protocol": "nnunet"}, "protocol"),
        ({"inference_batch_size": 0}, "inference_batch_size"),
    ],
)
def test_bad_test_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)
