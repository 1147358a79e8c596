"""``BestAndLastCheckpoint``: the best checkpoint(s) by the monitored score, and ``last.ckpt``
rewritten at the end of every validation (every epoch end when there is no validation loop).

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only at a step where a
top-k checkpoint is also saved: with ``save_top_k: 1`` it becomes a copy of the best model, so
the TransUNet protocol (test the final model) and a resume after the last improvement would
silently use an older model. This subclass adds the missing save and nothing else.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["BestAndLastCheckpoint"]


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the newest validated model."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer)
        due = due and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_missed(trainer, due)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer)
        due = due and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_missed(trainer, due)

    def _save_last_if_missed(self, trainer: L.Trainer, due: bool) -> None:
        # the parent saved last.ckpt only if it saved a top-k checkpoint at this step
        if due and self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
