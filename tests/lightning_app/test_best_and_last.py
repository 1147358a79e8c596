"""``BestAndLastCheckpoint``: last.ckpt holds the final epoch even when the score stopped
improving after the first epoch (the best checkpoint stays the first epoch's)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_app.callbacks import BestAndLastCheckpoint


class _Worsening(L.LightningModule):
    """A linear model whose logged validation score falls every epoch: 1, 0.5, 0.33, ..."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("score", 1.0 / (self.current_epoch + 1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("with_validation", [True, False])
def test_last_is_the_final_epoch_and_best_the_first(tmp_path: Path, with_validation: bool) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    checkpoint = BestAndLastCheckpoint(
        dirpath=tmp_path,
        monitor="score" if with_validation else None,
        mode="max",
        save_top_k=1,
        save_last=True,
        filename="best-{epoch}",
    )
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Worsening(), loader, loader if with_validation else None)
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    final = trainer.lightning_module.layer.weight.detach()
    torch.testing.assert_close(last["state_dict"]["layer.weight"], final)
    if with_validation:
        best = torch.load(tmp_path / "best-epoch=0.ckpt", map_location="cpu", weights_only=False)
        assert best["epoch"] == 0
