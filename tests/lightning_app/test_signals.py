"""A signal to the whole process group of a fit with loader workers saves and resumes.

Real processes: ``python -m lightning_app fit`` of the tiny phantom with one loader worker in
its own process group; the test sends SIGTERM (as SLURM does to every process of a job step) or
SIGINT (as a terminal's Ctrl-C does) to the process group while the fit holds after its first
step, then checks the exit status, that ``last.ckpt`` loads and is mid-epoch, and that
``--ckpt_path last`` finishes the run without redoing a step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lightning_app.checkpoints import FIT_COMPLETE
from tests.conftest import PYTHON, REPO, tiny_args

HOLD_AT_STEP = 2  # the fit stops at the end of this step: 2 of the tiny phantom's 4 per epoch


def _env(tmp_path: Path) -> dict[str, str]:
    # the fit imports the test helper callback from this checkout
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    env.pop("SLURM_RESTART_COUNT", None)
    return env


def _fit(tmp_path: Path, *extra: str, log: str) -> subprocess.Popen:
    args = tiny_args(tmp_path) + ["--data.num_workers=1", "--trainer.max_epochs=2", *extra]
    out = open(tmp_path / log, "w")
    return subprocess.Popen(
        [str(PYTHON), "-m", "lightning_app", "fit", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=_env(tmp_path),
        start_new_session=True,  # its own process group, as a SLURM step or a shell job
    )


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_group_signal_with_a_worker_saves_mid_epoch_and_resumes(
    tmp_path: Path, signum: int
) -> None:
    ready = tmp_path / "ready"
    hold = [
        "--trainer.callbacks+=tests.lightning_app.signal_helpers.HoldForSignal",
        f"--trainer.callbacks.step={HOLD_AT_STEP}",
        f"--trainer.callbacks.ready={ready}",
    ]
    proc = _fit(tmp_path, *hold, log="first.log")
    log = tmp_path / "first.log"
    _wait_for(ready, proc, log)
    workers = subprocess.run(
        ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(workers) >= 2, "the fit has no loader worker in its process group"
    os.killpg(proc.pid, signum)
    rc = proc.wait(timeout=300)
    text = log.read_text()
    assert rc == 128 + signum, text[-3000:]
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    assert "Resume with: python -m lightning_app fit --config" in text
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == HOLD_AT_STEP and state["epoch"] == 0  # mid-epoch
    assert not (run / FIT_COMPLETE).exists()
    assert [p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name] == []

    if signum != signal.SIGTERM:
        return  # the resume is the same after either signal
    done = subprocess.run(
        [str(PYTHON), "-m", "lightning_app", "fit", f"--config={run / 'config.yaml'}"]
        + ["--ckpt_path", "last"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 8  # 2 epochs x 4 steps, none redone
    assert (run / FIT_COMPLETE).is_file()


@pytest.mark.slow
def test_group_sigterm_under_ddp_saves_at_one_step_on_every_rank(tmp_path: Path) -> None:
    """Two CPU ranks (gloo), each with a loader worker, all in one process group: the ranks
    agree on the step to stop at, so the save (a collective) does not hang."""
    ready = tmp_path / "ready"
    hold = [
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--data.batch_size=2",  # 8 slices per rank: 4 steps per epoch
        "--trainer.callbacks+=tests.lightning_app.signal_helpers.HoldForSignal",
        "--trainer.callbacks.step=1",
        f"--trainer.callbacks.ready={ready}",
    ]
    proc = _fit(tmp_path, *hold, log="ddp.log")
    log = tmp_path / "ddp.log"
    _wait_for(ready, proc, log)
    os.killpg(proc.pid, signal.SIGTERM)
    rc = proc.wait(timeout=300)
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert 1 <= state["global_step"] <= 2 and state["epoch"] == 0  # mid-epoch
