"""A SLURM requeue signal (SIGUSR1) that arrives while a run starts is held, not fatal.

In-process: :mod:`lightning_app.early_signals` records the signal, gives SIGUSR1 back to its
default for Lightning, and replays it to the handler installed since. A real process: a tiny
``python -m lightning_app fit`` receives SIGUSR1 during its imports (as soon as it has a
handler for it, read from ``/proc/<pid>/status``) and finishes; without the hold, Python's
default action would end it with status -10.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_app import early_signals
from tests.conftest import PYTHON, REPO, tiny_args


@pytest.fixture
def usr1_default() -> Iterator[None]:
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    early_signals._received = False
    yield
    signal.signal(signal.SIGUSR1, previous)
    early_signals._received = False


def test_hold_release_replay(usr1_default: None) -> None:
    early_signals.hold()
    os.kill(os.getpid(), signal.SIGUSR1)  # recorded, the process lives on
    early_signals.release()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # for Lightning to take
    received = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    assert early_signals.replay() is True
    assert received == [signal.SIGUSR1]
    assert early_signals.replay() is False  # once
    assert received == [signal.SIGUSR1]


def test_hold_keeps_a_handler_it_finds_and_replay_needs_one(
    usr1_default: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGUSR1, mine)
    early_signals.hold()
    assert signal.getsignal(signal.SIGUSR1) is mine
    early_signals.release()
    assert signal.getsignal(signal.SIGUSR1) is mine
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    early_signals.hold()
    os.kill(os.getpid(), signal.SIGUSR1)
    early_signals.release()
    assert early_signals.replay() is False  # no requeue handler: reported, not raised
    assert "SIGUSR1 ignored: no requeue handler" in capsys.readouterr().out


def _catches_usr1(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught >> (signal.SIGUSR1 - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_a_fit_signalled_while_it_starts_finishes(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "lightning_app", "fit", *tiny_args(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not _catches_usr1(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGUSR1 (SLURM's requeue signal) received while starting" in out
    assert "SIGUSR1 ignored: no requeue handler" in out  # not a SLURM job
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
