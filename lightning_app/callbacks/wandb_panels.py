"""W&B panels at validation: a per-class score table and image overlays (rank 0 only)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_app.loggers import WandbLogger, find_wandb_logger

__all__ = ["WandbPanels"]


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
            and getattr(find_wandb_logger(trainer), "failed", None) is None
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
            if isinstance(logger, WandbLogger):
                logger.log_payload(payload)  # a W&B failure never stops the run
            else:
                logger.experiment.log(payload)
        self._pending = []
