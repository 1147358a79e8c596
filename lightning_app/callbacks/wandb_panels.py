"""W&B panels at validation: a per-class score table and image overlays of fixed slices.

The example slices are chosen once, at the first validation this callback logs, from the
labels of every validation slice it sees (:func:`choose_slices`): the classes are taken
rarest first (fewest labelled pixels over the validation set), and for each class not yet
shown the slice where it has the most pixels is added; free places then go to the remaining
classes' own best slices. Every later validation shows the same (case, slice) pairs, so the
panels follow one set of structures, the smallest included, through training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_app.loggers import WandbLogger, find_wandb_logger

__all__ = ["WandbPanels", "choose_slices"]

#: (case id, slice index), or ("batch<index>", position) for batches without those keys
SliceKey = tuple[str, int]


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


def class_pixel_counts(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, num_classes) int64 pixel counts per slice and class (labels
    outside [0, num_classes), e.g. ``ignore_index``, are not counted)."""
    b = target.shape[0]
    valid = (target >= 0) & (target < num_classes)
    offset = torch.arange(b, device=target.device).view(b, *[1] * (target.ndim - 1)) * num_classes
    flat = (target + offset)[valid]
    return torch.bincount(flat, minlength=b * num_classes).view(b, num_classes).cpu()


def choose_slices(
    totals: Sequence[int],
    best: Mapping[int, SliceKey],
    counts: Mapping[SliceKey, Sequence[int]],
    num_images: int,
) -> list[SliceKey]:
    """The slices to show, at most ``num_images``.

    Args:
        totals: labelled pixels per class over the validation set (class 0 = background).
        best: for each class with pixels, the slice where it has the most.
        counts: pixels per class of each slice in ``best``.

    The foreground classes (background only when no other class has pixels) are taken
    rarest first, ties by class index; a class already present in a chosen slice is skipped,
    else its best slice is added. Free places then go to the skipped classes' best slices, in
    the same order. Returns the slices in the order they were chosen.
    """
    present = [c for c in range(1, len(totals)) if totals[c] > 0 and c in best]
    if not present and len(totals) and totals[0] > 0 and 0 in best:
        present = [0]
    order = sorted(present, key=lambda c: (totals[c], c))
    chosen: list[SliceKey] = []
    for c in order:
        if not any(counts[key][c] > 0 for key in chosen) and best[c] not in chosen:
            chosen.append(best[c])
    for c in order:
        if best[c] not in chosen:
            chosen.append(best[c])
    return chosen[:num_images]


@dataclass
class _Example:
    """One slice ready to draw: image (C_in, H, W), labels, prediction, hard-pixel maps."""

    case: str
    index: int
    image: torch.Tensor
    target: torch.Tensor
    pred: torch.Tensor
    hard: dict[str, torch.Tensor] = field(default_factory=dict)


def _slice_keys(batch: Any, batch_idx: int, size: int) -> list[SliceKey]:
    cases, slices = batch.get("case"), batch.get("slice")
    if cases is None or slices is None:
        return [(f"batch{batch_idx}", i) for i in range(size)]
    indices = slices.tolist() if isinstance(slices, torch.Tensor) else list(slices)
    return [(str(c), int(z)) for c, z in zip(cases, indices, strict=True)]


class WandbPanels(Callback):
    """W&B panels at the end of each ``every_n_epochs``-th validation epoch (rank 0 only).

    - ``val/scores``: a ``wandb.Table`` with columns epoch, class, dice, iou (one row per class,
      read from the ``val/dice/<class>`` / ``val/iou/<class>`` values just logged).
    - ``val/examples``: ``num_images`` fixed validation slices (module docstring; the choice
      is in :attr:`chosen`) as ``wandb.Image`` captioned ``<case> slice <z>: <classes>``, with
      overlaid, class-named masks ``prediction`` and ``ground_truth``; for losses that select
      hard pixels (modules with ``hard_pixel_mask``, via ``pl_module.hard_pixel_masks``), one
      extra mask layer per such module showing the selected pixels (value 1, label ``hard``),
      computed on the whole validation batch as the loss sees it.

    Slices are named by the batch's ``case`` and ``slice`` keys (``SliceDataset`` items), else
    by batch index and position. Under DDP the choice covers the slices of rank 0's share.

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
        #: the (case, slice) pairs shown, fixed at the first validation logged
        self.chosen: list[SliceKey] | None = None
        self._examples: dict[SliceKey, _Example] = {}
        # while choosing: labelled pixels per class, and each class's best slice so far
        self._totals: torch.Tensor | None = None
        self._best: dict[int, tuple[int, SliceKey]] = {}
        self._counts: dict[SliceKey, list[int]] = {}
        self._num_classes = 0

    def _active(self, trainer: L.Trainer) -> bool:
        logger = find_wandb_logger(trainer)
        return (
            not trainer.sanity_checking
            and trainer.is_global_zero
            and logger is not None
            and getattr(logger, "failed", None) is None
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a validation cut short before the choice was fixed leaves nothing half-counted
        self._examples = {}
        if self.chosen is None:
            self._totals, self._best, self._counts = None, {}, {}

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.num_images == 0 or not self._active(trainer):
            return
        if not isinstance(outputs, dict) or "logits" not in outputs or not isinstance(batch, dict):
            return
        logits, target = outputs["logits"], batch["label"]
        self._num_classes = logits.shape[1]
        if self.chosen is not None:
            wanted = self._find_chosen(batch, batch_idx, target.shape[0])
            if wanted:
                self._keep(pl_module, batch, logits, wanted)
            return
        wanted = self._update_candidates(batch, batch_idx, target, logits.shape[1])
        if wanted:
            self._keep(pl_module, batch, logits, wanted)
            live = {key for _, key in self._best.values()}  # drop the slices just outdone
            self._examples = {k: v for k, v in self._examples.items() if k in live}
            self._counts = {k: v for k, v in self._counts.items() if k in live}

    def _update_candidates(
        self, batch: dict, batch_idx: int, target: torch.Tensor, num_classes: int
    ) -> dict[int, SliceKey]:
        """Count the batch's labels; return ``{position: key}`` of the slices that became some
        class's best slice (strictly more pixels: the first slice wins ties)."""
        counts = class_pixel_counts(target, num_classes)
        if self._totals is None:
            self._totals = torch.zeros(num_classes, dtype=torch.int64)
        self._totals += counts.sum(0)
        keys = _slice_keys(batch, batch_idx, target.shape[0])
        wanted: dict[int, SliceKey] = {}
        for c in range(num_classes):
            i = int(counts[:, c].argmax())
            n = int(counts[i, c])
            if n > 0 and n > self._best.get(c, (0, None))[0]:
                self._best[c] = (n, keys[i])
                self._counts[keys[i]] = counts[i].tolist()
                wanted[i] = keys[i]
        return wanted

    def _find_chosen(self, batch: dict, batch_idx: int, size: int) -> dict[int, SliceKey]:
        assert self.chosen is not None
        cases = batch.get("case")
        if cases is not None and not any(case in cases for case, _ in self.chosen):
            return {}  # no chosen case in this batch: no need to read its slice indices
        chosen = set(self.chosen)
        keys = _slice_keys(batch, batch_idx, size)
        return {i: key for i, key in enumerate(keys) if key in chosen}

    def _keep(
        self,
        pl_module: L.LightningModule,
        batch: dict,
        logits: torch.Tensor,
        wanted: dict[int, SliceKey],
    ) -> None:
        target = batch["label"]
        hard: dict[str, torch.Tensor] = {}
        if hasattr(pl_module, "hard_pixel_masks"):
            hard = pl_module.hard_pixel_masks(logits, target)
        pred = logits.argmax(dim=1)
        for i, key in wanted.items():
            self._examples[key] = _Example(
                case=key[0],
                index=key[1],
                image=batch["image"][i].detach().cpu(),
                target=target[i].detach().to("cpu", torch.uint8),
                pred=pred[i].detach().to("cpu", torch.uint8),
                hard={k: m[i].detach().to("cpu", torch.uint8) for k, m in hard.items()},
            )

    def _finish_choice(self) -> None:
        """Fix :attr:`chosen` from the counts of the first validation; drop the others."""
        if self._totals is None:
            return  # no batch seen (e.g. no validation data): choose at the next validation
        best = {c: key for c, (_, key) in self._best.items()}
        self.chosen = choose_slices(self._totals.tolist(), best, self._counts, self.num_images)
        self._examples = {k: v for k, v in self._examples.items() if k in self.chosen}
        self._totals, self._best, self._counts = None, {}, {}

    def _images(self, class_names: Sequence[str]) -> list[Any]:
        import wandb

        class_labels = {i: str(n) for i, n in enumerate(class_names)}
        images = []
        for key in self.chosen or []:
            ex = self._examples.get(key)
            if ex is None:
                continue
            masks = {
                "prediction": {"mask_data": ex.pred.numpy(), "class_labels": class_labels},
                "ground_truth": {"mask_data": ex.target.numpy(), "class_labels": class_labels},
            }
            for name, mask in ex.hard.items():
                masks[f"hard_pixels/{name}"] = {
                    "mask_data": mask.numpy(),
                    "class_labels": {0: "easy", 1: "hard"},
                }
            shown = [class_labels.get(int(v), str(int(v))) for v in ex.target.unique() if v > 0]
            caption = f"{ex.case} slice {ex.index}: {', '.join(shown) or 'background only'}"
            images.append(wandb.Image(_to_uint8_image(ex.image), masks=masks, caption=caption))
        return images

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning has gathered the epoch's logged values into callback_metrics
        if not self._active(trainer):
            self._examples = {}
            return
        import wandb

        if self.num_images and self.chosen is None:
            self._finish_choice()
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
        if self._examples:
            names = getattr(pl_module, "class_names", None) or [
                f"class_{i}" for i in range(self._num_classes)
            ]
            payload["val/examples"] = self._images(names)
        if payload:
            payload["trainer/global_step"] = trainer.global_step
            if isinstance(logger, WandbLogger):
                logger.log_payload(payload)  # a W&B failure never stops the run
            else:
                logger.experiment.log(payload)
        self._examples = {}
