"""A fit stopped by SIGTERM mid-epoch saves its state, and a SLURM restart resumes from it.

Real signal, real Trainer: the test sends SIGTERM to its own process during the fourth
training step of a tiny phantom fit, as ``scontrol requeue`` or a preemption would; SLURM's
restart is then reproduced by the variable SLURM sets in a requeued job
(``SLURM_RESTART_COUNT``), with the same command line and no ``--ckpt_path``.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch

from lightning_app.checkpoints import resume_checkpoint, slurm_restart_count
from lightning_app.cli import main
from models import SegmentationModel

STOP_AT_STEP = 3  # tiny phantom: 4 training steps per epoch, so this is mid-epoch


def _sigterm_at_step(module: SegmentationModel, outputs, batch, batch_idx) -> None:
    if module.global_step == STOP_AT_STEP:
        os.kill(os.getpid(), signal.SIGTERM)


def _logged_steps(csv_dir: Path) -> list[int]:
    with (csv_dir / "metrics.csv").open() as f:
        return sorted({int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")})


def test_sigterm_saves_mid_epoch_and_a_slurm_restart_resumes(
    tiny_cli_args, tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["fit", *tiny_cli_args(trainer__max_epochs=2)]
    run = tiny_env / "run"
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    with monkeypatch.context() as m:
        m.setattr(SegmentationModel, "on_train_batch_end", _sigterm_at_step, raising=False)
        with pytest.raises(SystemExit):  # Lightning's SIGTERMException
            main(args)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and not last.with_name("last.ckpt.tmp").exists()
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == STOP_AT_STEP and state["epoch"] == 0  # mid-epoch
    assert resume_checkpoint(run) == last

    # Without a restart the same command refuses to touch the run ...
    with pytest.raises(ValueError, match="already holds a run"):
        main(args)
    # ... and as a requeued SLURM job it continues it.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm_restart_count() == 1
    main(args)
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 8  # 2 epochs x 4 steps, none redone
    versions = sorted((run / "csv").glob("version_*"))
    assert len(versions) == 2  # two fit attempts in the same run directory
    assert sorted(p.name for p in (run / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    first, second = _logged_steps(versions[0]), _logged_steps(versions[1])
    assert max(first) < STOP_AT_STEP <= min(second)


def test_restart_without_checkpoint_starts_again(
    tiny_cli_args, tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job requeued before its first checkpoint restarts the run instead of failing."""
    run = tiny_env / "run"
    run.mkdir()
    (run / "config.yaml").write_text("# a fit that died before its first step\n")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    main(["fit", *tiny_cli_args()])
    assert resume_checkpoint(run) == run / "checkpoints" / "last.ckpt"


def test_slurm_restart_count_outside_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert slurm_restart_count() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "x")
    assert slurm_restart_count() == 0
