"""Checkpoints that survive an interrupted job: which one a run resumes from, and a save on SIGTERM.

A run directory holds up to two kinds of resumable checkpoint:

- ``checkpoints/last.ckpt``: written by :class:`lightning_app.callbacks.BestAndLastCheckpoint`
  at every epoch end,
  and by :class:`CheckpointOnTerminate` when the process receives SIGTERM or SIGINT mid-epoch
  (``scontrol requeue``, ``scancel``, a preemption, the end of a time limit without
  ``--signal``);
- ``hpc_ckpt_<n>.ckpt``: written by Lightning's own SLURM auto-requeue (``SLURMEnvironment``)
  when the job receives the signal of ``sbatch --signal=USR1@<seconds>``.

:func:`resume_checkpoint` picks the newest of them. The CLI resumes a requeued SLURM fit from it
(``SLURM_RESTART_COUNT`` > 0), and ``make compare``'s launchers resume interrupted runs with it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from datamodules.atomic import atomic_write_text
from lightning_app import early_signals

__all__ = [
    "FIT_COMPLETE",
    "CheckpointOnTerminate",
    "resume_checkpoint",
    "slurm_restart_count",
    "write_fit_complete",
]

LAST_NAME = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
#: Written into the run directory when a fit ends normally (not on a signal or an error).
FIT_COMPLETE = "fit_complete.json"


def resume_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest of ``<run_dir>/checkpoints/last.ckpt`` and ``<run_dir>/hpc_ckpt_<n>.ckpt``,
    or ``None`` when the run has neither (it died before its first checkpoint)."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if p.is_file()]
    last = run_dir / "checkpoints" / LAST_NAME
    if last.is_file():
        found.append(last)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def slurm_restart_count() -> int:
    """How often SLURM has restarted this job (``$SLURM_RESTART_COUNT``; 0 outside SLURM or on
    the first start)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


class CheckpointOnTerminate(Callback):
    """Save ``last.ckpt`` when a fit is stopped by SIGTERM or Ctrl-C, and mark a finished fit.

    While training, SIGTERM and the first SIGINT set Lightning's stop flag (a second SIGINT
    stops at once, a second SIGTERM is ignored); under DDP the processes first agree on it
    after each training step (one boolean all-reduce), so all ranks stop at the same step.
    At the end of the step Lightning raises its ``SIGTERMException``; :meth:`on_exception` then writes the
    trainer's full state (weights, optimizer, scheduler, loop progress) to the
    ``ModelCheckpoint``'s ``last.ckpt`` (atomically: a temporary file renamed into place), prints how to resume, and the process exits with
    ``128 + signal`` (143 for SIGTERM, 130 for SIGINT) and no traceback. Loader workers leave
    both signals to the main process (:mod:`datamodules.loader`), so a signal sent to the whole
    process group (SLURM, ``kill -- -PGID``, Ctrl-C) stops the run the same way. Nothing is
    written before the first optimisation step, nor outside ``fit``. A SLURM requeue signal
    (SIGUSR1) that arrives while the run starts is held and handed to Lightning's requeue
    handler once training (or testing) starts (:mod:`lightning_app.early_signals`).

    A fit that ends normally writes ``<run dir>/fit_complete.json`` (:data:`FIT_COMPLETE`:
    epochs, global step, image size, finish time), which ``make eval`` / ``make predict`` with
    ``CKPT=last`` look for (:mod:`lightning_app.finished_runs`).
    """

    def __init__(self) -> None:
        self._pending: int | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ SIGUSR1 at start-up
    # (lightning_app.early_signals: held from the process's start, given back before Lightning
    # installs its requeue handler, replayed to that handler once the run is under way)
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            early_signals.release()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        early_signals.release()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        early_signals.replay()

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._pending is None:
            self._pending = signum
            name = signal.Signals(signum).name
            print(f"{name}: stopping after the current step to save last.ckpt", flush=True)
            if self._trainer is not None and self._trainer.world_size == 1:
                self._stop(self._trainer)  # alone: no other process to agree with
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own handlers (registered at the start of the run, restored by the
        # trainer's teardown): no collective in a signal handler, one decision per step instead
        if threading.current_thread() is not threading.main_thread():
            return
        self._pending, self._trainer = None, trainer
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        early_signals.replay()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self._pending is not None, all=False)
        if stop:
            if self._pending is None:
                self._pending = signal.SIGTERM  # another rank received it
            self._stop(trainer)

    @staticmethod
    def _stop(trainer: L.Trainer) -> None:
        # Lightning's own flag: its loops raise SIGTERMException at the end of the step
        trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if trainer.is_global_zero and not trainer.fast_dev_run:  # fast_dev_run saves nothing
            write_fit_complete(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        self._trainer = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    # ------------------------------------------------------------------ the save
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        signum = self._pending or signal.SIGTERM
        self._restore_handlers()
        exception.code = 128 + signum
        name = signal.Signals(signum).name
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return
        if trainer.global_step == 0:
            rank_zero_info(f"{name}: stopped before the first step; nothing to save.")
            return
        path = os.path.join(checkpoint.dirpath, LAST_NAME)
        # recorded in the saved ModelCheckpoint state, so that after the restart it keeps
        # writing last.ckpt (an unknown last.ckpt would make it version the name: last-v1.ckpt)
        checkpoint.last_model_path = path
        tmp = path + ".tmp"  # atomic whatever the trainer's checkpoint IO
        trainer.save_checkpoint(tmp)  # every process takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, path)
        run_dir = trainer.default_root_dir
        rank_zero_info(
            f"{name}: saved {path} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch + 1}). Resume with: python -m lightning_app fit "
            f"--config {os.path.join(run_dir, 'config.yaml')} --ckpt_path last"
        )


def write_fit_complete(trainer: L.Trainer) -> Path:
    """Write ``<trainer.default_root_dir>/fit_complete.json`` atomically: ``{"epochs",
    "global_step", "image_size", "finished"}`` (``image_size`` from the datamodule, or null)."""
    datamodule = getattr(trainer, "datamodule", None)
    record = {
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "image_size": getattr(datamodule, "image_size", None),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(trainer.default_root_dir) / FIT_COMPLETE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path
