"""Two epochs straight equal one epoch, then a resume for the second, with a loader worker;
and equal a fit stopped mid-epoch by a group SIGTERM, then resumed.

Real processes: ``python -m lightning_app fit`` of the tiny phantom with ``num_workers=1`` (the
configs' default) for 2 epochs in one run directory; the same fit in another run directory is
killed (SIGKILL to its process group, as a crash or an out-of-memory kill) once the first
epoch's ``last.ckpt`` is written, then continued with ``--config <run>/config.yaml --ckpt_path
last``. The second epoch's validation metrics (the CSV logger's ``metrics.csv``) agree to every
printed digit, and the final weights are equal: the shuffle order, the augmentation draws and
the random states after the resume are those the uninterrupted run had. A fit stopped by a
SIGTERM to its process group in the middle of its second epoch (``last.ckpt`` saved after step
6 of 8) and resumed trains the remaining steps only, on the batches and augmentation draws of
the uninterrupted run, and ends with its metrics and weights.
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from lightning_app.callbacks.exact_resume import (
    ExactResume,
    global_rng_states,
    set_global_rng_states,
)
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


def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    env.pop("SLURM_RESTART_COUNT", None)
    return env


def _fit(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), "-m", "lightning_app", "fit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=600,
        start_new_session=True,  # its own process group, which KillAfterEpoch kills
    )


TWO_EPOCHS = ["--data.num_workers=1", "--trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, run dir) of the uninterrupted 2-epoch fit."""
    tmp = tmp_path_factory.mktemp("straight")
    data, run = tmp / "phantom", tmp / "straight" / "run"
    done = _fit(tmp, tiny_args(run.parent, data_dir=data) + TWO_EPOCHS)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return data, run


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


def _assert_same_fit(straight: Path, split: Path) -> None:
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


def test_two_epochs_equal_one_epoch_then_a_resume(
    tmp_path: Path, straight: tuple[Path, Path]
) -> None:
    data, straight_run = straight
    split = tmp_path / "split" / "run"
    kill = [f"--trainer.callbacks+={__name__}.KillAfterEpoch", "--trainer.callbacks.epoch=0"]
    done = _fit(tmp_path, tiny_args(split.parent, data_dir=data) + TWO_EPOCHS + kill)
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-3000:]
    assert _val_rows(split).keys() == {0}
    assert (_last(split)["epoch"], _last(split)["global_step"]) == (0, 4)  # the epoch's end
    done = _fit(tmp_path, [f"--config={split / 'config.yaml'}", "--ckpt_path", "last"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_same_fit(straight_run, split)


def test_a_group_sigterm_mid_epoch_then_a_resume_loses_and_repeats_no_step(
    tmp_path: Path, straight: tuple[Path, Path]
) -> None:
    data, straight_run = straight
    split, ready = tmp_path / "split" / "run", tmp_path / "ready"
    hold = [
        "--trainer.callbacks+=tests.lightning_app.signal_helpers.HoldForSignal",
        "--trainer.callbacks.step=6",  # the second of the second epoch's 4 steps
        f"--trainer.callbacks.ready={ready}",
    ]  # in the resumed fit too (its config.yaml), which never ends a step 6
    args = tiny_args(split.parent, data_dir=data) + TWO_EPOCHS + hold
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "lightning_app", "fit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    state = _last(split)
    assert (state["epoch"], state["global_step"]) == (1, 6)  # mid-epoch
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 2}
    ]
    done = _fit(tmp_path, [f"--config={split / 'config.yaml'}", "--ckpt_path", "last"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_same_fit(straight_run, split)


def _draws() -> tuple[float, float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(())), float(np.random.randn())


def test_the_global_random_states_are_set_back_at_the_first_step() -> None:
    """The callback's state (saved in every checkpoint, loadable with ``weights_only=True``)
    holds Python's, NumPy's and torch's global random states; a resumed fit sets them back
    just before its first training step, once."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    buffer = io.BytesIO()
    torch.save(ExactResume().state_dict(), buffer)
    expected = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    resumed = ExactResume()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert _draws() != expected  # nothing is restored before the first step
    resumed.on_train_batch_start(None, None)  # type: ignore[arg-type]
    assert _draws() == expected
    resumed.on_train_batch_start(None, None)  # type: ignore[arg-type]
    assert _draws() != expected  # once only: the next steps continue the streams
    set_global_rng_states(global_rng_states())  # the pair round-trips
