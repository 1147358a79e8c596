"""Checkpoints that survive an interrupted job: which one a run resumes from, and a save on SIGTERM.

A run directory holds up to two kinds of resumable checkpoint:

- ``checkpoints/last.ckpt``: written by ``ModelCheckpoint(save_last=True)`` at every epoch end,
  and by :class:`CheckpointOnTerminate` when the process receives SIGTERM mid-epoch
  (``scontrol requeue``, ``scancel``, a preemption, the end of a time limit without
  ``--signal``);
- ``hpc_ckpt_<n>.ckpt``: written by Lightning's own SLURM auto-requeue (``SLURMEnvironment``)
  when the job receives the signal of ``sbatch --signal=USR1@<seconds>``.

:func:`resume_checkpoint` picks the newest of them. The CLI resumes a requeued SLURM fit from it
(``SLURM_RESTART_COUNT`` > 0), and ``make compare``'s launchers resume interrupted runs with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["CheckpointOnTerminate", "resume_checkpoint", "slurm_restart_count"]

LAST_NAME = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION


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
    """Save ``last.ckpt`` when a fit stops on SIGTERM, so the requeued job loses no steps.

    Lightning turns SIGTERM into a ``SIGTERMException`` after the current training step (all
    processes of a DDP run together) and calls ``on_exception``; this callback then writes the
    trainer's full state (weights, optimizer, scheduler, loop progress) to the
    ``ModelCheckpoint``'s ``last.ckpt``, atomically (a temporary file moved into place), so a
    SIGKILL that follows never leaves a truncated checkpoint. Nothing is written before the
    first optimisation step, nor outside ``fit``.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return
        if trainer.global_step == 0:
            return
        path = os.path.join(checkpoint.dirpath, LAST_NAME)
        tmp = path + ".tmp"
        # recorded in the saved ModelCheckpoint state, so that after the restart it keeps
        # writing last.ckpt (an unknown last.ckpt would make it version the name: last-v1.ckpt)
        checkpoint.last_model_path = path
        trainer.save_checkpoint(tmp)  # every process takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, path)
            rank_zero_info(
                f"SIGTERM: saved {path} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch + 1}); the run resumes from it."
            )
