"""End-of-fit summary: where the run's checkpoints, config, CSV metrics and W&B run are."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_app.loggers import WandbLogger, find_wandb_logger

__all__ = ["RunSummary"]


class RunSummary(Callback):
    """Prints, at the end of ``fit`` on rank 0, where the run's outputs are: best and last
    checkpoints, run directory and saved config, CSV metrics, and the W&B run (URL when online;
    local folder plus the ``wandb sync`` command when offline).

    It prints from ``teardown`` (after the progress bar has closed) and finishes the W&B run
    first, so that these lines are the last output of ``make train``.
    """

    def summary_lines(self, trainer: L.Trainer) -> list[str]:
        """The lines :meth:`on_fit_end` prints (also used by tests)."""
        lines = []
        root = trainer.default_root_dir
        lines.append(f"run directory : {os.path.abspath(root)}")
        config = os.path.join(root, "config.yaml")
        if os.path.isfile(config):
            lines.append(f"config        : {os.path.abspath(config)}  (repeat: --config <this>)")
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path:
                    score = cb.best_model_score
                    score_txt = f" ({cb.monitor}={float(score):.4f})" if score is not None else ""
                    lines.append(
                        f"best ckpt     : {os.path.abspath(cb.best_model_path)}{score_txt}"
                    )
                if cb.last_model_path:
                    lines.append(f"last ckpt     : {os.path.abspath(cb.last_model_path)}")
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                path = os.path.join(logger.log_dir, "metrics.csv")
                lines.append(f"CSV metrics   : {os.path.abspath(path)}")
        wb = find_wandb_logger(trainer)
        if wb is not None and getattr(wb, "failed", None):
            lines.append(f"W&B           : stopped after an error ({wb.failed}); the CSV has all")
        elif wb is not None and wb._experiment is not None:
            run = wb.experiment
            sync_dir = getattr(run.settings, "sync_dir", None)
            sync_dir = os.path.abspath(sync_dir) if sync_dir else sync_dir
            mode = getattr(wb, "mode", None) or getattr(run.settings, "mode", "")
            if mode == "offline" or getattr(run, "offline", False):
                lines.append(f"W&B (offline) : {sync_dir}")
                lines.append(f"                upload with: wandb sync {sync_dir}")
            else:
                lines.append(f"W&B run       : {getattr(run, 'url', None) or sync_dir}")
        else:
            lines.append("W&B           : off (CSV only)")
        return lines

    @rank_zero_only
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        lines = self.summary_lines(trainer)
        wb = find_wandb_logger(trainer)
        if isinstance(wb, WandbLogger):  # ours finishes its run in finalize
            wb.finalize("success" if not trainer.interrupted else "failed")
        status = "interrupted" if trainer.interrupted else "finished"
        print("\n".join(["", f"Run {status}.", *lines]), flush=True)
