"""Callbacks of the application: W&B panels and the end-of-fit summary.

Both tolerate any logger set: without a W&B logger, :class:`WandbPanels` does nothing, and
:class:`RunSummary` prints what exists (checkpoints, CSV logs, config).
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_app.loggers import WandbLogger

__all__ = ["WandbPanels", "RunSummary", "find_wandb_logger"]


def find_wandb_logger(trainer: L.Trainer) -> _LightningWandbLogger | None:
    """The trainer's first W&B logger, or ``None`` (CSV-only runs)."""
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger):
            return logger
    return None


def _to_uint8_image(image: torch.Tensor) -> Any:
    """(C_in, H, W) float -> (H, W) or (H, W, 3) uint8 numpy, min-max scaled per image.

    One channel is shown as grey; 2 channels (e.g. MSSEG-2's time points) as the first one;
    3 or more as RGB of the first three.
    """
    img = image.detach().float().cpu()
    img = img[0] if img.shape[0] < 3 else img[:3].permute(1, 2, 0)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    return (img * 255).round().to(torch.uint8).numpy()


class WandbPanels(Callback):
    """W&B panels at the end of each ``every_n_epochs``-th validation epoch (rank 0 only).

    - ``val/scores``: a ``wandb.Table`` with columns epoch, class, dice, iou (one row per class,
      read from the ``val/dice/<class>`` / ``val/iou/<class>`` values just logged).
    - ``val/examples``: the first ``num_images`` slices of the first validation batch as
      ``wandb.Image`` with overlaid, class-named masks ``prediction`` and ``ground_truth``; for
      losses that select hard pixels (modules with ``hard_pixel_mask``, via
      ``pl_module.hard_pixel_masks``), one extra mask layer per such module showing the
      selected pixels (value 1, label ``hard``).

    Args:
        num_images: slices shown per epoch (>= 0; 0 disables the images, not the table).
        every_n_epochs: log every n-th validation epoch (>= 1).

    Raises:
        ValueError: on negative ``num_images`` or ``every_n_epochs < 1``.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        if num_images < 0:
            raise ValueError(f"Expected argument `num_images` to be >= 0, but got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(
                f"Expected argument `every_n_epochs` to be >= 1, but got {every_n_epochs}"
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self._pending: list[Any] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and trainer.is_global_zero
            and find_wandb_logger(trainer) is not None
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or self.num_images == 0 or not self._active(trainer):
            return
        if not isinstance(outputs, dict) or "logits" not in outputs:
            return
        import wandb

        logits = outputs["logits"][: self.num_images]
        image = batch["image"][: self.num_images]
        target = batch["label"][: self.num_images]
        pred = logits.argmax(dim=1)
        names = getattr(pl_module, "class_names", None) or [
            f"class_{i}" for i in range(logits.shape[1])
        ]
        class_labels = {i: str(n) for i, n in enumerate(names)}
        hard: dict[str, torch.Tensor] = {}
        if hasattr(pl_module, "hard_pixel_masks"):
            hard = pl_module.hard_pixel_masks(logits, target)
        self._pending = []
        for i in range(image.shape[0]):
            masks = {
                "prediction": {
                    "mask_data": pred[i].cpu().numpy().astype("uint8"),
                    "class_labels": class_labels,
                },
                "ground_truth": {
                    "mask_data": target[i].cpu().numpy().astype("uint8"),
                    "class_labels": class_labels,
                },
            }
            for key, mask in hard.items():
                masks[f"hard_pixels/{key}"] = {
                    "mask_data": mask[i].cpu().numpy().astype("uint8"),
                    "class_labels": {0: "easy", 1: "hard"},
                }
            self._pending.append(
                wandb.Image(_to_uint8_image(image[i]), masks=masks, caption=f"slice {i}")
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning has gathered the epoch's logged values into callback_metrics
        if not self._active(trainer):
            self._pending = []
            return
        import wandb

        logger = find_wandb_logger(trainer)
        assert logger is not None  # _active checked it
        keys = getattr(pl_module, "class_keys", None) or []
        metrics = trainer.callback_metrics
        rows = []
        for key in keys:
            dice, iou = metrics.get(f"val/dice/{key}"), metrics.get(f"val/iou/{key}")
            if dice is None or iou is None:
                continue
            rows.append([trainer.current_epoch, key, float(dice), float(iou)])
        payload: dict[str, Any] = {}
        if rows:
            payload["val/scores"] = wandb.Table(
                columns=["epoch", "class", "dice", "iou"],
                data=[
                    [e, k, None if math.isnan(d) else d, None if math.isnan(j) else j]
                    for e, k, d, j in rows
                ],
            )
        if self._pending:
            payload["val/examples"] = self._pending
        if payload:
            payload["trainer/global_step"] = trainer.global_step
            logger.experiment.log(payload)
        self._pending = []


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
        if wb is not None and wb._experiment is not None:
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
