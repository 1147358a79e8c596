"""SegmentationModel: construction errors, schedule, loss hooks, logging keys, bf16."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from losses import build_loss
from models import SegmentationModel, metric_key
from tests.conftest import RandomSliceDataModule


class SpyLoss(nn.Module):
    """CE that records the steps it is given, the dtype it sees, and exposes two terms."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.dtypes: list[torch.dtype] = []
        self.last_values: dict[str, torch.Tensor] = {}

    def set_step(self, step: int) -> None:
        self.steps.append(step)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.dtypes.append(logits.dtype)
        ce = nn.functional.cross_entropy(logits, target)
        self.last_values = {"ce": ce.detach(), "twice ce": 2 * ce.detach()}
        return ce


def make_model(dm: RandomSliceDataModule, loss: nn.Module | None = None, **kw) -> SegmentationModel:
    return SegmentationModel(
        loss=loss if loss is not None else nn.CrossEntropyLoss(),
        in_channels=dm.in_channels,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        **kw,
    )


def trainer(**kw) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kw})


class LrRecorder(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_transunet_defaults_and_poly_schedule(random_dm: RandomSliceDataModule) -> None:
    model = make_model(random_dm)  # optimizer=None, scheduler=None -> TransUNet recipe
    rec = LrRecorder()
    tr = trainer(max_epochs=2, limit_val_batches=0, callbacks=[rec])
    tr.fit(model, random_dm)
    opt = tr.optimizers[0]
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)
    total = 4  # 8 samples / batch 4 x 2 epochs
    expected = [0.01 * (1 - t / total) ** 0.9 for t in range(total)]  # TransUNet, by hand
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-6)


def test_set_step_terms_and_float32_under_bf16(random_dm: RandomSliceDataModule) -> None:
    spy = SpyLoss()
    model = make_model(random_dm, loss=spy)
    tr = trainer(max_steps=2, limit_val_batches=1, precision="bf16-mixed", log_every_n_steps=1)
    tr.fit(model, random_dm)
    assert spy.steps == [0, 1]
    assert set(spy.dtypes) == {torch.float32}
    metrics = tr.callback_metrics
    assert {"train/loss", "train/loss/ce", "train/loss/twice_ce"} <= set(metrics)
    assert torch.isfinite(metrics["train/loss"])


def test_validation_keys_and_pooled_values(random_dm: RandomSliceDataModule) -> None:
    model = make_model(random_dm)
    tr = trainer()
    tr.validate(model, random_dm, verbose=False)
    metrics = tr.callback_metrics
    # independent reference: numpy confusion counts over the whole validation set
    model.eval()
    tp = np.zeros(3)
    fp = np.zeros(3)
    fn = np.zeros(3)
    with torch.no_grad():
        for batch in random_dm.val_dataloader():
            pred = model(batch["image"]).argmax(1).numpy()
            tgt = batch["label"].numpy()
            for c in range(3):
                tp[c] += np.sum((pred == c) & (tgt == c))
                fp[c] += np.sum((pred == c) & (tgt != c))
                fn[c] += np.sum((pred != c) & (tgt == c))
    dice = 2 * tp / (2 * tp + fp + fn)
    iou = tp / (tp + fp + fn)
    for c, name in enumerate(["background", "organ_1", "organ_2"]):
        assert metrics[f"val/dice/{name}"].item() == pytest.approx(dice[c], abs=1e-6)
        assert metrics[f"val/iou/{name}"].item() == pytest.approx(iou[c], abs=1e-6)
    assert metrics["val/dice/mean"].item() == pytest.approx(dice[1:].mean(), abs=1e-6)
    assert metrics["val/iou/mean"].item() == pytest.approx(iou[1:].mean(), abs=1e-6)
    assert "val/loss" in metrics


def test_hard_pixel_masks(random_dm: RandomSliceDataModule) -> None:
    model = make_model(random_dm, loss=build_loss("ce_topk_dice"))
    logits = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    masks = model.hard_pixel_masks(logits, target)
    assert len(masks) == 1
    ((name, mask),) = masks.items()
    assert "topk_dice" in name and mask.shape == (2, 32, 32) and mask.dtype == torch.bool
    # k = 10%: about a tenth of the pixels is selected per image
    assert 0 < mask.sum().item() <= 0.11 * mask.numel()
    assert make_model(random_dm).hard_pixel_masks(logits, target) == {}


def test_custom_optimizer_and_scheduler_factories(random_dm: RandomSliceDataModule) -> None:
    seen = {}

    def sched(optimizer, total_steps):
        seen["total"] = total_steps
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)

    model = make_model(
        random_dm, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), scheduler=sched
    )
    tr = trainer(max_steps=3, limit_val_batches=0)
    tr.fit(model, random_dm)
    assert isinstance(tr.optimizers[0], torch.optim.AdamW)
    assert seen["total"] == 3


@pytest.mark.parametrize("arch", ["FPN", "UnetPlusPlus"])
def test_other_architectures_forward(arch: str, random_dm: RandomSliceDataModule) -> None:
    model = make_model(random_dm, arch=arch)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_metric_key() -> None:
    assert metric_key("right kidney") == "right_kidney"
    assert metric_key("a/b") == "a_b"
    assert metric_key("LV") == "LV"


def test_bad_arguments(random_dm: RandomSliceDataModule) -> None:
    with pytest.raises(TypeError, match="`loss` to be a torch.nn.Module"):
        SegmentationModel(loss="ce", in_channels=1, num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_classes` to be an int >= 2"):
        SegmentationModel(loss=nn.CrossEntropyLoss(), in_channels=1, num_classes=1)
    with pytest.raises(ValueError, match="`in_channels` to be a positive int"):
        SegmentationModel(loss=nn.CrossEntropyLoss(), in_channels=0, num_classes=3)
    with pytest.raises(ValueError, match="`class_names` to have num_classes=3 entries"):
        SegmentationModel(
            loss=nn.CrossEntropyLoss(), in_channels=1, num_classes=3, class_names=["bg", "a"]
        )
    with pytest.raises(ValueError, match="distinct as metric keys"):
        SegmentationModel(
            loss=nn.CrossEntropyLoss(),
            in_channels=1,
            num_classes=3,
            class_names=["bg", "a b", "a/b"],
        )
    with pytest.raises(ValueError, match="`arch` to be a segmentation_models_pytorch architecture"):
        make_model(random_dm, arch="NoSuchNet")
    model = make_model(random_dm)
    tr = trainer(max_epochs=-1, max_steps=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match="finite fit length"):
        tr.fit(model, random_dm)


def test_fit_outside_the_cli_adopts_the_datamodule_image_size(tmp_path) -> None:
    # Trainer.fit(model, datamodule) with a logger merges both hparams: no clash on image_size
    import lightning as L

    from datamodules import PhantomDataModule
    from losses import build_loss

    dm = PhantomDataModule(
        data_dir=str(tmp_path / "phantom"), num_train=1, num_val=1, num_test=1,
        volume_shape=(4, 32, 32), image_size=32, batch_size=2, num_workers=0, progress=False,
    )  # fmt: skip
    model = SegmentationModel(
        loss=build_loss("ce_dice"), in_channels=dm.in_channels, num_classes=dm.num_classes,
        class_names=dm.class_names, model_kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 4)},
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        logger=L.pytorch.loggers.CSVLogger(str(tmp_path / "logs")),
    )  # fmt: skip
    trainer.fit(model, dm)
    assert model.hparams.image_size == 32
