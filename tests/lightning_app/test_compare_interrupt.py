"""Ctrl-C on a real grid process: no new runs, the running run saves, the table so far, exit 130.

``python -m lightning_app.compare losses`` of two tiny phantom runs in its own process group, with the
loader worker of the default config; the second run holds mid-epoch (a test callback) until a
signal arrives, and the test then sends SIGINT to the whole process group, as a terminal's
Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lightning_app.compare.interrupt import Interrupted
from tests.conftest import CONFIGS, PYTHON, REPO, TINY_PHANTOM


def _grid(tmp_path: Path, launcher: str, hold_in: str) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / "ready"
    tiny = {**TINY_PHANTOM, "num_workers": 1, "data_dir": tmp_path / "phantom"}
    overrides = [f"--data.{k}={v}" for k, v in tiny.items()] + [
        f"--config={CONFIGS / 'trainer' / 'cpu.yaml'}",
        "--trainer.max_epochs=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=tests.lightning_app.signal_helpers.HoldForSignal",
        "--trainer.callbacks.step=2",
        f"--trainer.callbacks.ready={ready}",
        f"--trainer.callbacks.only={hold_in}",
    ]
    cmd = [str(PYTHON), "-m", "lightning_app.compare", "losses", "--dataset", "phantom"]
    cmd += ["--losses", "ce", "ce_dice", "--seeds", "1", "--out", str(tmp_path / "results")]
    cmd += ["--launcher", launcher, "--jobs", "1"] if launcher == "local" else []
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    log = tmp_path / "grid.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "--", *overrides],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 400
    while not ready.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return proc, log


@pytest.mark.parametrize(
    ("launcher", "hold_in", "finished"),
    [("inprocess", "-ce-", 0), pytest.param("local", "-ce_dice-", 1, marks=pytest.mark.slow)],
)
def test_ctrl_c_stops_the_grid(tmp_path: Path, launcher: str, hold_in: str, finished: int) -> None:
    proc, log = _grid(tmp_path, launcher, hold_in)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "Ctrl-C: no new runs" in text
    assert "run the same command again: python -m lightning_app.compare losses" in text
    runs = tmp_path / "results" / "runs"
    held = [d for d in runs.iterdir() if hold_in in d.name]
    assert len(held) == 1
    state = torch.load(
        held[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert state["global_step"] == 2 and state["epoch"] == 0  # saved mid-epoch
    if finished:
        assert "INCOMPLETE (1 of 2 runs finished)" in text and "| CE |" in text
    else:  # the run after the held one never started
        assert "INCOMPLETE: none of the 2 runs finished" in text
        assert [d.name for d in runs.iterdir() if "seed" in d.name] == [held[0].name]


def test_interrupted_is_a_quiet_exit_130() -> None:
    assert isinstance(Interrupted(), SystemExit) and Interrupted().code == 130
