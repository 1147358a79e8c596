"""Launcher planning without SLURM (issue 10): local pool slots and fan-out, the job's spec
file, the SLURM job script and options, requeue checkpoints, and the job's signal handling.
The real SLURM runs are in test_compare_slurm.py (marker ``slurm``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from lightning_app.compare import run_comparison
from lightning_app.compare.command import build_launcher
from lightning_app.compare.job import ForwardingRunner
from lightning_app.compare.job import main as job_main
from lightning_app.compare.launchers import LocalPool, visible_gpus
from lightning_app.compare.runs import (
    resume_checkpoint,
    run_state,
    spec_from_json,
    spec_to_json,
)
from lightning_app.compare.slurm import SlurmLauncher, job_script
from tests.conftest import CONFIGS
from tests.lightning_app.test_compare import FakeCLI, make_comparison


@pytest.mark.parametrize(
    ("gpus", "per_gpu", "jobs", "devices"),
    [
        (["0", "1"], 1, None, ["0", "1"]),  # one run per visible GPU by default
        (["0", "1"], 2, None, ["0", "1", "0", "1"]),  # RUNS_PER_GPU=2 packs two on each
        (["0", "1"], 2, 3, ["0", "1", "0"]),  # fewer jobs: spread over the GPUs first
        (["3", "5"], 1, 1, ["3"]),  # CUDA_VISIBLE_DEVICES entries are kept as they are
    ],
)
def test_local_pool_places_runs_on_gpus(gpus, per_gpu, jobs, devices) -> None:
    slots = LocalPool(jobs=jobs, runs_per_gpu=per_gpu, gpus=gpus, cpus=16).slots()
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == devices
    assert {s["OMP_NUM_THREADS"] for s in slots} == {str(16 // len(devices))}


@pytest.mark.parametrize(
    ("cpus", "jobs", "threads"), [(2, 2, "1"), (2, 1, "2"), (8, 3, "2"), (2, 4, "1")]
)
def test_local_pool_divides_cores_without_gpus(cpus: int, jobs: int, threads: str) -> None:
    slots = LocalPool(jobs=jobs, gpus=[], cpus=cpus).slots()
    assert len(slots) == jobs
    assert all(s == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads,
                     "MKL_NUM_THREADS": threads} for s in slots)  # fmt: skip
    assert len(LocalPool(gpus=[], cpus=cpus).slots()) == 1  # CPU default: one run at a time


def test_local_pool_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`jobs` to be >= 1, but got 0"):
        LocalPool(jobs=0)
    with pytest.raises(ValueError, match=r"`runs_per_gpu` to be >= 1, but got 0"):
        LocalPool(runs_per_gpu=0)
    with pytest.raises(ValueError, match=r"`jobs` to be at most 2 .*RUNS_PER_GPU"):
        LocalPool(jobs=3, gpus=["0", "1"]).slots()


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


class SlowFake:
    """FakeCLI behind a delay, recording the data preparation, each step's environment and
    the number of steps running at once."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fake = FakeCLI(fail_on=fail_on)
        self.prepared: list[list[str]] = []
        self.envs: dict[str, set[str]] = {}
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
        if cmd[1:4] == ["-m", "lightning_app.compare.job", "prepare"]:
            assert not self.fake.calls, "the data must be prepared before the fan-out"
            self.prepared.append(cmd)
            return 0
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.envs.setdefault(env["LIGHTNING_APP_RUN_NAME"], set()).add(
                f"{env['CUDA_VISIBLE_DEVICES']}/{env['OMP_NUM_THREADS']}"
            )
        time.sleep(0.2)
        try:
            with self.lock:
                return self.fake(cmd, log_path, env)
        finally:
            with self.lock:
                self.running -= 1


def test_local_pool_runs_the_grid_concurrently(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    comparison = make_comparison(tmp_path / "out")
    runner = SlowFake()
    pool = LocalPool(jobs=2, gpus=["0", "1"], cpus=4)
    paths = run_comparison(comparison, runner=runner, log=lambda s: None, launcher=pool)
    assert len(runner.prepared) == 1  # once, before the four runs
    assert runner.peak == 2
    assert len(runner.envs) == 4
    for envs in runner.envs.values():  # fit and test of a run share one slot: one GPU
        assert len(envs) == 1 and envs.pop() in {"0/2", "1/2"}
    assert paths["markdown"].is_file()
    # everything done: nothing is prepared or run again
    again = SlowFake()
    run_comparison(comparison, runner=again, log=lambda s: None, launcher=pool)
    assert again.prepared == [] and again.fake.calls == []


def test_local_pool_reports_failures_after_the_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    comparison = make_comparison(tmp_path / "out")
    runner = SlowFake(fail_on="compare-ce-seed2")
    pool = LocalPool(jobs=2, gpus=[], cpus=2)
    with pytest.raises(
        RuntimeError, match=r"(?s)1 run\(s\) failed.*Fit of compare-ce-seed2-.*compare\.log"
    ):
        run_comparison(comparison, runner=runner, log=lambda s: None, launcher=pool)
    assert (tmp_path / "out" / "comparison.md").is_file()  # the other three runs are tabulated
    assert "Incomplete: 3 of 4" in (tmp_path / "out" / "comparison.md").read_text()


def test_spec_json_round_trip(tmp_path: Path) -> None:
    comparison = make_comparison(tmp_path / "out", user_args=["--trainer.max_epochs=1"])
    for spec in comparison.plan(None):
        back, python, test_ckpt = spec_from_json(spec_to_json(spec, "/venv/python", "best"))
        assert (back, python, test_ckpt) == (spec, "/venv/python", "best")


def test_resume_checkpoint_takes_the_newest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert resume_checkpoint(run) is None and run_state(run) == "new"
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    hpc = run / "hpc_ckpt_1.ckpt"  # Lightning's SLURM auto-requeue checkpoint
    hpc.write_bytes(b"x")
    os.utime(last, (1000, 1000))
    os.utime(hpc, (2000, 2000))
    assert resume_checkpoint(run) == hpc and run_state(run) == "resume"
    os.utime(last, (3000, 3000))
    assert resume_checkpoint(run) == last


def test_job_script_and_sbatch_options(tmp_path: Path) -> None:
    text = job_script(
        tmp_path / "a b.json", tmp_path / "r-%j.out", "r", "/venv/bin/python", tmp_path
    )
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --job-name=r" in lines and "#SBATCH --open-mode=append" in lines
    assert f"#SBATCH --output={tmp_path / 'r-%j.out'}" in lines
    assert (
        lines[-1]
        == f"exec /venv/bin/python -m lightning_app.compare.job run '{tmp_path / 'a b.json'}'"
    )
    opts = argparse.Namespace(
        launcher="slurm", sbatch="--cpus-per-task=1 --mem=6G --comment='a b'", no_wait=True,
        poll=None, jobs=None, runs_per_gpu=None,
    )  # fmt: skip
    launcher = build_launcher(opts, CONFIGS)
    assert isinstance(launcher, SlurmLauncher) and not launcher.wait
    # configs/launcher/slurm.yaml first, the user's options after them (sbatch: later wins)
    assert launcher.sbatch_args[:3] == ["--ntasks=1", "--requeue", "--signal=B:USR1@120"]
    assert launcher.sbatch_args[3:] == ["--cpus-per-task=1", "--mem=6G", "--comment=a b"]
    assert launcher.poll_seconds == 30
    local = build_launcher(argparse.Namespace(launcher="local", jobs=3, runs_per_gpu=None), CONFIGS)
    assert isinstance(local, LocalPool) and (local.jobs, local.runs_per_gpu) == (3, 1)
    assert build_launcher(argparse.Namespace(launcher="inprocess"), CONFIGS) is None


def test_forwarding_runner_marks_a_terminated_step(tmp_path: Path) -> None:
    """SIGTERM (a requeue) reaches the step, and the step then counts as interrupted even when
    it exits 0 (Lightning stops a fit gracefully on SIGTERM)."""
    runner = ForwardingRunner()
    old = {s: signal.getsignal(s) for s in runner.SIGNALS}
    runner.install()
    try:
        child = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "print('ready', flush=True)\ntime.sleep(30)\n"
        )
        log = tmp_path / "step.log"
        timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timer.start()
        start = time.monotonic()
        status = runner([sys.executable, "-c", child], log, dict(os.environ))
        assert time.monotonic() - start < 20
        assert status == 128 + signal.SIGTERM and runner.terminated
        assert "ready" in log.read_text()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_job_usage_message(capsys: pytest.CaptureFixture) -> None:
    assert job_main(["bogus"]) == 2
    assert "usage" in capsys.readouterr().out
