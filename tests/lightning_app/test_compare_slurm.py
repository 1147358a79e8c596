"""The comparison grid on a real single-node SLURM (issue 10); ``make test-slurm``.

The module starts SLURM with ``scripts/slurm_local.sh up`` (root; installs the Debian packages
if missing) unless one already answers ``sinfo``, and stops what it started at the end. The
trainings are tiny (8x64x64 phantom volumes, 1-3 epochs, one thread per run). The signal tests
(``scancel --signal=TERM --full``, ``scontrol requeue``, a time limit with
``--signal=B:USR1@<s>``) run the fit with a loader worker and hold it mid-epoch
(``tests.lightning_app.signal_helpers.HoldForSignal``) until the signal has arrived.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_app.compare.slurm import TERMINAL, queue_states
from tests.conftest import CONFIGS, REPO

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "scripts" / "slurm_local.sh"


#: the signal tests hold their fit at this global step, mid-way through epoch 1 (8 steps each)
HOLD_AT_STEP = 10


def _tiny(data_dir: Path, epochs: int, num_train: int = 2, num_workers: int = 0) -> list[str]:
    return [
        f"--data.num_train={num_train}",
        "--data.num_val=1",
        "--data.num_test=2",
        "--data.volume_shape=[8,64,64]",
        "--data.image_size=64",
        "--data.batch_size=4",
        f"--data.num_workers={num_workers}",
        "--data.progress=false",
        f"--data.data_dir={data_dir}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
    ]


def _sinfo_ok() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A SLURM to submit to: the one that answers, else ``scripts/slurm_local.sh up``."""
    saved = os.environ.get("SLURM_CONF")
    started = False
    if not _sinfo_ok():
        if os.geteuid() != 0 and shutil.which("slurmctld") is None:
            pytest.skip("no SLURM answers and installing one needs root")
        out = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
        started = True
        if out.returncode != 0:
            subprocess.run([str(SCRIPT), "down"], capture_output=True)
            pytest.fail(f"slurm_local.sh up failed:\n{out.stdout}\n{out.stderr}")
        conf = [ln.split("=", 1)[1] for ln in out.stdout.splitlines() if "SLURM_CONF=" in ln]
        os.environ["SLURM_CONF"] = conf[-1]
    try:
        yield
    finally:
        if started:
            subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=120)
            if saved is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = saved


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return dict(os.environ)


def _compare(out: Path, args: list[str], *options: str, losses=("ce_dice",), seeds=1):
    cmd = [sys.executable, "-m", "lightning_app.compare", "losses", "--dataset", "phantom",
           "--losses", *losses, "--seeds", str(seeds), "--out", str(out), *options, "--", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_make_compare_on_slurm_equals_local(slurm: None, env: dict, tmp_path: Path) -> None:
    """2 losses x 2 seeds through `make compare LAUNCHER=slurm`, then the same runs with
    LAUNCHER=local JOBS=2: the same table and per-case scores (one thread per run on both)."""
    args = " ".join(_tiny(tmp_path / "data", epochs=1))
    common = ["DATASET=phantom", "SEEDS=2", "LOSSES=ce_dice ce_topk_dice", f"ARGS={args}"]
    slurm_out, local_out = tmp_path / "slurm", tmp_path / "local"
    run = subprocess.run(
        ["make", "--no-print-directory", "compare", *common, "LAUNCHER=slurm",
         "SBATCH=--cpus-per-task=1 --mem=1G", f"OPTS=--out {slurm_out} --poll 2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "data prepared" in run.stdout
    assert len([ln for ln in run.stdout.splitlines() if "slurm: submitted" in ln]) == 4
    assert "0 pending, 0 running, 4 done" in run.stdout
    jobs = list((slurm_out / "runs" / "slurm").glob("*.jobid"))
    assert len(jobs) == 4
    run = subprocess.run(
        ["make", "--no-print-directory", "compare", *common, "LAUNCHER=local", "JOBS=2",
         f"OPTS=--out {local_out}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "local: 4 of 4 runs to do, 2 at once (CPU; 1 threads each)" in run.stdout
    assert _rows(slurm_out / "comparison.csv") == _rows(local_out / "comparison.csv")
    assert _rows(slurm_out / "comparison_per_case.csv") == _rows(
        local_out / "comparison_per_case.csv"
    )
    assert (
        len(_rows(slurm_out / "comparison_per_case.csv")) == 2 * 2 * 2 * 5
    )  # runs x cases x classes


def _held(data_dir: Path, ready: Path) -> list[str]:
    """Tiny 3-epoch fit arguments with a loader worker, held at :data:`HOLD_AT_STEP` until a
    signal arrives (``ready`` is touched then)."""
    return [
        *_tiny(data_dir, epochs=3, num_train=4, num_workers=1),
        "--trainer.callbacks+=tests.lightning_app.signal_helpers.HoldForSignal",
        f"--trainer.callbacks.step={HOLD_AT_STEP}",
        f"--trainer.callbacks.ready={ready}",
        "--trainer.callbacks.timeout=600",
    ]


def _submit_and_wait_until_held(out: Path, args: list[str], ready: Path, *sbatch: str):
    """Submit one tiny run without waiting; return its job id and run directory once the fit
    holds mid-epoch (with its loader worker)."""
    options = " ".join(["--cpus-per-task=1", *sbatch])
    sub = _compare(out, args, "--launcher", "slurm", f"--sbatch={options}", "--no-wait")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "run the same command again" in sub.stdout
    job = next((out / "runs" / "slurm").glob("*.jobid")).read_text().strip()
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert time.monotonic() < deadline, f"the fit did not reach step {HOLD_AT_STEP} in 300 s"
        time.sleep(0.5)
    (run_dir,) = [p for p in (out / "runs").iterdir() if p.is_dir() and p.name != "slurm"]
    return job, run_dir


def _saved_mid_epoch(run_dir: Path) -> str:
    """The fit's log, after checking that a SIGTERM saved last.ckpt at the held step with the
    loader worker alive (no worker killed under it, no traceback)."""
    fit_log = (run_dir / "compare.log").read_text()
    assert f"SIGTERM: saved {run_dir / 'checkpoints' / 'last.ckpt'} at global step " in fit_log
    step = int(fit_log.split("SIGTERM: saved")[1].split("at global step ")[1].split()[0])
    assert step == HOLD_AT_STEP, fit_log[-3000:]
    assert "killed by signal" not in fit_log and "Traceback" not in fit_log, fit_log[-3000:]
    return fit_log


def _fit_epochs(run_dir: Path) -> list[list[int]]:
    """The epochs each fit attempt trained (one CSV version per attempt)."""
    epochs = []
    for version in sorted((run_dir / "csv").glob("version_*")):
        rows = _rows(version / "metrics.csv")
        if any("train/loss" in r and r["train/loss"] for r in rows):  # a fit attempt
            epochs.append(sorted({int(r["epoch"]) for r in rows if r.get("train/loss")}))
    return epochs


def _job_logs(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "runs" / "slurm").glob("*.out")))


def _only_run_dir(out: Path) -> list[str]:
    return [p.name for p in (out / "runs").iterdir() if p.is_dir() and p.name != "slurm"]


def test_requeued_job_resumes_from_its_checkpoint(slurm: None, env: dict, tmp_path: Path) -> None:
    """`scontrol requeue` mid-epoch: SLURM sends SIGTERM to every process of the job (the loader
    worker too); the fit saves last.ckpt at its step, the job runs again and continues the same
    run directory from it (a second fit attempt whose epochs continue), then the table
    completes."""
    args, out = _held(tmp_path / "data", tmp_path / "ready"), tmp_path / "out"
    job, run_dir = _submit_and_wait_until_held(out, args, tmp_path / "ready")
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    again = _compare(out, args, "--launcher", "slurm", "--poll", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "still queued" in again.stdout and "1 done" in again.stdout
    _saved_mid_epoch(run_dir)
    log = next((out / "runs" / "slurm").glob(f"*-{job}.out")).read_text()
    assert "restart 1" in log and "fit (continued from last.ckpt)" in log, log
    assert _only_run_dir(out) == [run_dir.name]  # the same run directory, nothing set aside
    epochs = _fit_epochs(run_dir)
    assert len(epochs) == 2 and epochs[0] == [0, 1] and epochs[1] == [1, 2], epochs
    assert (out / "comparison.md").is_file() and (run_dir / "per_case.csv").is_file()


def test_scancel_term_full_saves_and_a_resubmission_resumes(
    slurm: None, env: dict, tmp_path: Path
) -> None:
    """`scancel --signal=TERM --full`: every process of the job, the batch script, the fit and
    its loader worker, gets SIGTERM; the fit saves last.ckpt at its step and the job ends
    without a requeue. The same `make compare` command then resubmits the run, which continues
    from that checkpoint."""
    args, out = _held(tmp_path / "data", tmp_path / "ready"), tmp_path / "out"
    job, run_dir = _submit_and_wait_until_held(out, args, tmp_path / "ready")
    subprocess.run(["scancel", "--signal=TERM", "--full", job], check=True, timeout=30)
    deadline = time.monotonic() + 120
    while queue_states([job]).get(job, "gone") not in TERMINAL | {"gone"}:
        assert time.monotonic() < deadline, "the job did not end 120 s after SIGTERM"
        time.sleep(0.5)
    _saved_mid_epoch(run_dir)
    first = next((out / "runs" / "slurm").glob(f"*-{job}.out")).read_text()
    assert "received signal 15" in first and "terminated" in first, first
    assert not (run_dir / "per_case.csv").exists()
    again = _compare(out, args, "--launcher", "slurm", "--poll", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "slurm: submitted" in again.stdout and "1 done" in again.stdout
    assert "fit (continued from last.ckpt)" in _job_logs(out)
    assert _only_run_dir(out) == [run_dir.name]
    epochs = _fit_epochs(run_dir)
    assert len(epochs) == 2 and epochs[0] == [0, 1] and epochs[1] == [1, 2], epochs
    assert (run_dir / "per_case.csv").is_file()


def test_srun_ddp_fit_two_tasks(slurm: None, env: dict, tmp_path: Path) -> None:
    """The README's srun recipe: 2 tasks on one node, CPU gloo DDP, one run directory."""
    run_dir = tmp_path / "ddp"
    fit = [
        sys.executable, "-m", "lightning_app", "fit",
        f"--config={CONFIGS / 'base.yaml'}", f"--config={CONFIGS / 'data' / 'phantom.yaml'}",
        f"--config={CONFIGS / 'loss' / 'ce_topk_dice.yaml'}",
        *_tiny(tmp_path / "data", epochs=1),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.num_nodes=1",
        "--trainer.strategy=ddp", f"--trainer.default_root_dir={run_dir}",
    ]  # fmt: skip
    wrap = "srun " + " ".join(fit)
    log = tmp_path / "ddp-%j.out"
    job = subprocess.run(
        ["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={log}",
         f"--chdir={REPO}", "--job-name=ddp-test", f"--wrap={wrap}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    text = "\n".join(p.read_text() for p in tmp_path.glob("ddp-*.out"))
    assert job.returncode == 0, job.stdout + job.stderr + text[-4000:]
    assert "MEMBER: 1/2" in text and "MEMBER: 2/2" in text, text[-4000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()


def test_time_limit_usr1_auto_requeue_resumes_from_the_newest_checkpoint(
    slurm: None, env: dict, tmp_path: Path
) -> None:
    """A real time limit: with `sbatch --time=10 --signal=B:USR1@300` SLURM sends USR1 to the
    batch step 4.5 to 5 minutes after the start (slurmctld looks every 30 s), while the fit
    holds mid-epoch: the job forwards it to the fit, Lightning's SLURMEnvironment saves
    hpc_ckpt_1.ckpt into the run directory and requeues the job itself; the requeue's SIGTERM
    reaches every process of the job (the loader worker too) and the fit saves last.ckpt at the
    same step (CheckpointOnTerminate); the restarted job continues the run from the newer of
    the two."""
    args, out = _held(tmp_path / "data", tmp_path / "ready"), tmp_path / "out"
    job, run_dir = _submit_and_wait_until_held(
        out, args, tmp_path / "ready", "--time=10", "--signal=B:USR1@300"
    )
    deadline = time.monotonic() + 420
    while not (run_dir / "hpc_ckpt_1.ckpt").is_file():
        assert time.monotonic() < deadline, "no hpc_ckpt_1.ckpt 420 s after the fit held"
        time.sleep(0.5)
    again = _compare(out, args, "--launcher", "slurm", "--poll", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 done" in again.stdout
    log = next((out / "runs" / "slurm").glob(f"*-{job}.out")).read_text()
    assert "received signal 10" in log, log  # USR1 reached the job and was forwarded
    fit_log = _saved_mid_epoch(run_dir)
    # Lightning handled it: the hpc checkpoint, then its own `scontrol requeue`
    assert "Handling auto-requeue signal: 10" in fit_log, fit_log[-3000:]
    assert f"Requeued SLURM job: {job}" in fit_log, fit_log[-3000:]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert hpc["global_step"] == HOLD_AT_STEP
    assert "restart 1" in log and "fit (continued from " in log, log
    assert _only_run_dir(out) == [run_dir.name]
    epochs = _fit_epochs(run_dir)  # a slow restart may meet the time limit once more
    assert epochs[0] == [0, 1] and epochs[1][0] == 1 and epochs[-1][-1] == 2, epochs
    assert (run_dir / "per_case.csv").is_file()


def test_usr1_while_the_fit_starts_is_handed_to_lightning(
    slurm: None, env: dict, tmp_path: Path
) -> None:
    """`scancel --signal=USR1 --batch` while the job's fit is still importing (as soon as it
    holds SIGUSR1, lightning_app.early_signals): the job forwards it, the fit records it
    instead of dying, gives it to Lightning's SLURMEnvironment once training starts (hpc
    checkpoint, `scontrol requeue`), and the requeued job finishes the run."""
    from tests.lightning_app.test_early_signals import _catches_usr1

    args, out = _tiny(tmp_path / "data", epochs=2, num_train=4, num_workers=1), tmp_path / "out"
    sub = _compare(out, args, "--launcher", "slurm", "--sbatch=--cpus-per-task=1", "--no-wait")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job = next((out / "runs" / "slurm").glob("*.jobid")).read_text().strip()
    deadline = time.monotonic() + 300
    while True:  # the job's fit process, once it holds SIGUSR1
        found = subprocess.run(
            ["pgrep", "-f", "--", f"-m lightning_app fit .*{out}"], capture_output=True, text=True
        ).stdout.split()
        if found and _catches_usr1(int(found[0])):
            break
        assert time.monotonic() < deadline, "the job's fit did not start in 300 s"
        time.sleep(0.005)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    again = _compare(out, args, "--launcher", "slurm", "--poll", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 done" in again.stdout
    log = next((out / "runs" / "slurm").glob(f"*-{job}.out")).read_text()
    assert "received signal 10" in log and "restart 1" in log, log
    (run_dir,) = [p for p in (out / "runs").iterdir() if p.is_dir() and p.name != "slurm"]
    fit_log = (run_dir / "compare.log").read_text()
    assert "SIGUSR1 (SLURM's requeue signal) received while starting" in fit_log, fit_log[-3000:]
    assert "Handling auto-requeue signal: 10" in fit_log, fit_log[-3000:]
    # Lightning's own `scontrol requeue` (which SLURM's SIGTERM to the job may interrupt once
    # the requeue is under way: "failed with error code -15")
    assert f"requeing job {job}..." in fit_log, fit_log[-3000:]
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file() and (run_dir / "per_case.csv").is_file()
