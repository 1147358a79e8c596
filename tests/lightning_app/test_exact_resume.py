"""Two epochs straight equal one epoch, then a resume for the second, with a loader worker.

Real processes: ``python -m lightning_app fit`` of the tiny phantom with ``num_workers=1`` (the
configs' default) for 2 epochs in one run directory; the same fit in another run directory is
killed (SIGKILL to its process group, as a crash or an out-of-memory kill) once the first
epoch's ``last.ckpt`` is written, then continued with ``--config <run>/config.yaml --ckpt_path
last``. The second epoch's validation metrics (the CSV logger's ``metrics.csv``) agree to every
printed digit, and the final weights are equal: the shuffle order, the augmentation draws and
the random states after the resume are those the uninterrupted run had.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tests.conftest import PYTHON, REPO, tiny_args


class KillAfterEpoch(L.Callback):
    """Kill the fit's whole process group (SIGKILL: nothing more is saved) once training
    epoch ``epoch`` (0-based) has ended and written ``last.ckpt``, as the next one starts; not
    in a fit that resumes from a checkpoint (the callback is in the run's ``config.yaml``)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch + 1 and trainer.ckpt_path is None:
            os.killpg(0, signal.SIGKILL)


def _fit(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    env.pop("SLURM_RESTART_COUNT", None)
    done = subprocess.run(
        [str(PYTHON), "-m", "lightning_app", "fit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        start_new_session=True,  # its own process group, which KillAfterEpoch kills
    )
    return done


def _val_rows(run: Path) -> dict[int, dict[str, str]]:
    """Epoch -> the logged ``val/*`` values of that epoch, over every CSV version of a run."""
    rows: dict[int, dict[str, str]] = {}
    for metrics in sorted((run / "csv").glob("version_*/metrics.csv")):
        with metrics.open() as f:
            for row in csv.DictReader(f):
                values = {k: v for k, v in row.items() if k.startswith("val/") and v}
                if values:
                    rows.setdefault(int(row["epoch"]), {}).update(values)
    return rows


def _last(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_two_epochs_equal_one_epoch_then_a_resume(tmp_path: Path) -> None:
    data = tmp_path / "phantom"
    two_epochs = ["--data.num_workers=1", "--trainer.max_epochs=2"]
    straight, split = tmp_path / "straight" / "run", tmp_path / "split" / "run"
    done = _fit(tmp_path, tiny_args(straight.parent, data_dir=data) + two_epochs)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    kill = [f"--trainer.callbacks+={__name__}.KillAfterEpoch", "--trainer.callbacks.epoch=0"]
    done = _fit(tmp_path, tiny_args(split.parent, data_dir=data) + two_epochs + kill)
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-3000:]
    assert _val_rows(split).keys() == {0}
    assert (_last(split)["epoch"], _last(split)["global_step"]) == (0, 4)  # the epoch's end
    done = _fit(tmp_path, [f"--config={split / 'config.yaml'}", "--ckpt_path", "last"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    expected, got = _val_rows(straight), _val_rows(split)
    assert expected.keys() == got.keys() == {0, 1}
    assert "val/dice/mean" in expected[1]
    assert got[0] == expected[0]  # the same first epoch: the comparison below is meaningful
    assert got[1] == expected[1]
    a, b = _last(straight), _last(split)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 8)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert differ == []
