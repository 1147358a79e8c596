"""A non-finite training loss stops the run, names the step and the batch's cases, and leaves
the last good checkpoint intact (real Trainer fit on CPU, tiny in-test data)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from losses import build_loss
from models import SegmentationModel

NAN_SAMPLE = 6  # batch size 2, no shuffle: batch index 3, global step 3


class Slices(Dataset):
    """8 random 16x16 slices of 2 cases; sample ``NAN_SAMPLE`` holds a NaN pixel."""

    def __init__(self, with_case_ids: bool = True) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.rand(8, 1, 16, 16, generator=gen)
        self.images[NAN_SAMPLE, 0, 5, 7] = float("nan")
        self.labels = torch.randint(0, 3, (8, 16, 16), generator=gen)
        self.with_case_ids = with_case_ids

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        item = {"image": self.images[i], "label": self.labels[i]}
        if self.with_case_ids:
            item |= {"case": f"case000{i // 4 + 1}", "index": i % 4}
        return item


class Data(L.LightningDataModule):
    def __init__(self, with_case_ids: bool = True) -> None:
        super().__init__()
        self.with_case_ids = with_case_ids

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Slices(self.with_case_ids), batch_size=2, shuffle=False)


class RecordCheckpointBeforeBadStep(L.Callback):
    """Hash of last.ckpt as it stands when the bad batch starts."""

    def __init__(self, path: Path) -> None:
        self.path, self.digest = path, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == NAN_SAMPLE // 2:
            self.digest = hashlib.sha256(self.path.read_bytes()).hexdigest()


def fit(tmp_path: Path, loss, recorder: RecordCheckpointBeforeBadStep, with_case_ids=True) -> None:
    model = SegmentationModel(  # a small Unet: 3 encoder stages, thin decoder (fast checkpoints)
        loss=loss,
        in_channels=1,
        num_classes=3,
        image_size=16,
        model_kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 4)},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[
            ModelCheckpoint(dirpath=recorder.path.parent, save_last=True, every_n_train_steps=1),
            recorder,
        ],
    )
    trainer.fit(model, Data(with_case_ids))


def assert_last_checkpoint_good(recorder: RecordCheckpointBeforeBadStep) -> None:
    assert recorder.digest is not None  # the bad step was reached with a checkpoint on disk
    assert recorder.digest == hashlib.sha256(recorder.path.read_bytes()).hexdigest()
    ckpt = torch.load(recorder.path, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # the three good steps
    for name, value in ckpt["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    assert [p.name for p in recorder.path.parent.iterdir() if "step=3" not in p.name] == [
        "last.ckpt"
    ]  # no checkpoint written after the failure


def test_non_finite_loss_stops_the_run_naming_step_and_cases(tmp_path):
    # validate_args=False: the loss does not look at the logits, the model's guard must stop it
    recorder = RecordCheckpointBeforeBadStep(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(
        FloatingPointError,
        match=r"Non-finite training loss \(nan\) \[global step 3, epoch 0, batch 3, "
        r"cases \['case0002 slice 2', 'case0002 slice 3'\]\]",
    ):
        fit(tmp_path, build_loss("ce_topk_dice", validate_args=False), recorder)
    assert_last_checkpoint_good(recorder)


def test_loss_input_error_names_step_and_cases(tmp_path):
    # default validate_args: the loss rejects the NaN logits; the model adds the batch context
    recorder = RecordCheckpointBeforeBadStep(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(
        ValueError,
        match=r"`logits` to be finite.*\[global step 3, epoch 0, batch 3, cases \['case0002 slice 2'",
    ):
        fit(tmp_path, build_loss("ce_dice"), recorder)
    assert_last_checkpoint_good(recorder)


def test_message_says_when_the_loader_gives_no_case_ids(tmp_path):
    # a foreign loss (torch's CE) has no input checks: only the model's guard can stop it
    recorder = RecordCheckpointBeforeBadStep(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(
        FloatingPointError,
        match=r"global step 3, epoch 0, batch 3, case ids not in the batch \(keys: image, label\)",
    ):
        fit(tmp_path, torch.nn.CrossEntropyLoss(), recorder, with_case_ids=False)
    assert_last_checkpoint_good(recorder)
