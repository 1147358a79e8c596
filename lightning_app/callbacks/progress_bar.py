"""Progress display: rich bars on a terminal, plain timestamped lines in log files.

:class:`ProgressBar` shows Lightning's rich bars when stdout is a terminal and prints plain
progress lines when stdout is a file or pipe (SLURM, nohup, ``make train > log``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

__all__ = ["ProgressBar", "stdout_is_terminal"]


def stdout_is_terminal() -> bool:
    """True when stdout is an interactive terminal (not a file, pipe or batch log)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _clock(seconds: float) -> str:
    """Seconds as ``H:MM:SS`` (``M:SS`` under an hour)."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _nth(counts: Any, index: int) -> float:
    """``counts[index]`` of the trainer's per-dataloader batch counts (``nan`` if unknown)."""
    try:
        return float(counts[index])
    except (IndexError, TypeError):
        return math.nan


def _batch_size(batch: Any) -> int:
    """Samples in a batch (``batch["image"].shape[0]``, else the first tensor's, else 1)."""
    if isinstance(batch, dict):
        value = batch.get("image", next(iter(batch.values()), None))
    elif isinstance(batch, list | tuple) and batch:
        value = batch[0]
    else:
        value = batch
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.ndim else 1


class ProgressBar(RichProgressBar):
    """Rich progress bars on a terminal; plain progress lines in log files.

    On a terminal this is Lightning's ``RichProgressBar``, except that the training bar counts
    epochs from 1 (``Epoch 1/2`` ... ``Epoch 2/2`` for ``max_epochs=2``; checkpoint names and
    the CSV ``epoch`` column keep Lightning's 0-based index). When stdout is not a terminal
    (``plain=None``, the default, decides at setup), the bars are off and rank 0 prints
    lines like::

        [train] epoch 2/8 step 17/32 | loss 0.4312 | 41.2 slices/s | epoch ETA 0:09 | fit ETA 2:51
        [val]   epoch 2/8 | Dice mean 0.6123 | large_organ 0.97 | ... | 3.1 s
        [train] epoch 2/8 done in 0:21 | loss 0.4407 | 40.8 slices/s | fit ETA 2:30

    one ``[train]`` line at least every ``interval`` seconds during an epoch (the loss is the
    mean over the steps since the previous line), one ``[val]`` line after each validation with
    every class's Dice (``val/dice/<class>`` of the logged metrics), one line at the end of each
    epoch, and ``[test]`` / ``[predict]`` lines every ``interval`` seconds and at the end.
    Throughput counts samples (slices for training and validation, volumes for testing); the
    fit ETA extrapolates the mean wall time per step so far (validation included) to
    ``trainer.estimated_stepping_batches``.

    Args:
        plain: ``None``: plain lines exactly when stdout is not a terminal; ``True``/``False``
            force them on/off.
        interval: seconds between two progress lines inside an epoch (> 0).
        print_fn: where lines go (default ``print(..., flush=True)``).
        **kwargs: ``RichProgressBar`` arguments (``refresh_rate``, ``leave``, ``theme``, ...).

    Raises:
        ValueError: ``interval <= 0``.
    """

    def __init__(
        self,
        plain: bool | None = None,
        interval: float = 30.0,
        print_fn: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"Expected argument `interval` to be > 0, but got {interval}")
        super().__init__(**kwargs)
        self.plain_setting = plain
        self.interval = float(interval)
        self._plain = False
        self._print = print_fn or (lambda line: print(line, flush=True))
        self._fit_t0 = self._fit_step0 = 0.0
        self._epoch_t0 = self._last_line = 0.0
        self._epoch_batch0: int | None = None
        self._samples = 0
        self._loss_sum = 0.0
        self._loss_n = 0
        self._epoch_loss_sum = 0.0
        self._epoch_loss_n = 0
        self._eval_t0 = self._last_eval_line = 0.0
        self._eval_samples = 0

    # ------------------------------------------------------------------ mode
    @property
    def is_enabled(self) -> bool:
        return not self._plain and super().is_enabled

    @property
    def plain(self) -> bool:
        """Whether plain lines are printed (known after ``setup``)."""
        return self._plain

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        plain = not stdout_is_terminal() if self.plain_setting is None else self.plain_setting
        self._plain = bool(plain)

    def _emit(self, trainer: L.Trainer) -> bool:
        return self._plain and self._enabled and trainer.is_global_zero

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description

    def _epoch_text(self, trainer: L.Trainer) -> str:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {trainer.current_epoch + 1}/{total}"

    def _fit_eta(self, trainer: L.Trainer, now: float) -> float:
        done = trainer.global_step - self._fit_step0
        total = trainer.estimated_stepping_batches
        if done <= 0 or not math.isfinite(float(total)):
            return math.nan
        return (now - self._fit_t0) / done * max(0.0, float(total) - trainer.global_step)

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._fit_t0 = time.monotonic()
        self._fit_step0 = trainer.global_step
        self._start_epoch_clock()  # a fit resumed mid-epoch starts no epoch
        if self._emit(trainer):
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
            self._print(
                f"[train] start: epochs {trainer.current_epoch + 1}..{total}, "
                f"{self.total_train_batches} steps per epoch; a line at least every "
                f"{self.interval:g} s"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._start_epoch_clock()

    def _start_epoch_clock(self) -> None:
        """Rates and ETAs count the steps from here: an epoch's start, or the (re)start of a
        fit (which may resume in the middle of an epoch, at batch ``_epoch_batch0``)."""
        self._epoch_t0 = self._last_line = time.monotonic()
        self._epoch_batch0 = None
        self._samples = 0
        self._loss_sum, self._loss_n = 0.0, 0
        self._epoch_loss_sum, self._epoch_loss_n = 0.0, 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self._emit(trainer):
            return
        if self._epoch_batch0 is None:
            self._epoch_batch0 = batch_idx
        self._samples += _batch_size(batch)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            value = float(loss.detach())
            self._loss_sum += value
            self._loss_n += 1
            self._epoch_loss_sum += value
            self._epoch_loss_n += 1
        now = time.monotonic()
        if now - self._last_line < self.interval:
            return
        total = self.total_train_batches
        done = batch_idx + 1
        here = done - self._epoch_batch0  # steps since the epoch's clock started
        elapsed = now - self._epoch_t0
        epoch_eta = elapsed / here * (total - done) if isinstance(total, int) and here else math.nan
        total_text = total if isinstance(total, int) else "?"
        loss_text = f"{self._loss_sum / self._loss_n:.4f}" if self._loss_n else "n/a"
        self._print(
            f"[train] {self._epoch_text(trainer)} step {done}/{total_text} | loss {loss_text} | "
            f"{self._samples / max(elapsed, 1e-9):.1f} slices/s | epoch ETA {_clock(epoch_eta)} "
            f"| fit ETA {_clock(self._fit_eta(trainer, now))}"
        )
        self._last_line = now
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._emit(trainer):
            return
        now = time.monotonic()
        elapsed = now - self._epoch_t0
        loss_text = (
            f"{self._epoch_loss_sum / self._epoch_loss_n:.4f}" if self._epoch_loss_n else "n/a"
        )
        self._print(
            f"[train] {self._epoch_text(trainer)} done in {_clock(elapsed)} | loss {loss_text} "
            f"| {self._samples / max(elapsed, 1e-9):.1f} slices/s | fit ETA "
            f"{_clock(self._fit_eta(trainer, now))}"
        )

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, trainer: L.Trainer) -> None:
        self._eval_t0 = self._last_eval_line = time.monotonic()
        self._eval_samples = 0

    def _eval_batch(self, trainer: L.Trainer, tag: str, batch: Any, done: int, total: Any) -> None:
        if not self._emit(trainer) or trainer.sanity_checking:
            return
        self._eval_samples += _batch_size(batch)
        now = time.monotonic()
        if now - self._last_eval_line < self.interval:
            return
        elapsed = now - self._eval_t0
        known = isinstance(total, int | float) and math.isfinite(total)
        total_text = int(total) if known else "?"
        eta = elapsed / done * (total - done) if known else math.nan
        self._print(
            f"[{tag}] batch {done}/{total_text} | {self._eval_samples / max(elapsed, 1e-9):.1f} "
            f"samples/s | ETA {_clock(eta)}"
        )
        self._last_eval_line = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._eval_start(trainer)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_validation_batch_end(
            trainer, pl_module, outputs, batch, batch_idx, dataloader_idx
        )
        total = _nth(trainer.num_val_batches, dataloader_idx)
        self._eval_batch(trainer, "val", batch, batch_idx + 1, total)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._emit(trainer) or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = []
        mean = metrics.get("val/dice/mean")
        if mean is not None:
            parts.append(f"Dice mean {float(mean):.4f}")
        for key in getattr(pl_module, "class_keys", None) or []:
            value = metrics.get(f"val/dice/{key}")
            if value is not None:
                parts.append(f"{key} {float(value):.3f}")
        where = self._epoch_text(trainer) if trainer.state.fn == "fit" else "validate"
        elapsed = time.monotonic() - self._eval_t0
        self._print(" | ".join([f"[val]   {where}", *parts, f"{elapsed:.1f} s"]))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_start(trainer, pl_module)
        self._eval_start(trainer)
        if self._emit(trainer):
            total = sum(int(n) for n in trainer.num_test_batches if math.isfinite(n))
            self._print(f"[test] start: {total} batches")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        total = _nth(trainer.num_test_batches, dataloader_idx)
        self._eval_batch(trainer, "test", batch, batch_idx + 1, total)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        if self._emit(trainer):
            self._print(f"[test] done in {_clock(time.monotonic() - self._eval_t0)}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._eval_start(trainer)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        total = _nth(trainer.num_predict_batches, dataloader_idx)
        self._eval_batch(trainer, "predict", batch, batch_idx + 1, total)
