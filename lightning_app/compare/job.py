"""What a launched job runs (``python -m lightning_app.compare.job``)::

    python -m lightning_app.compare.job prepare -- <the run's CLI arguments>
    python -m lightning_app.compare.job run <runs/slurm/<run name>.json>

``prepare`` builds the run's datamodule from its arguments (``SegmentationCLI(run=False)``) and
calls ``prepare_data``: the launchers call it once before they fan out, so the grid's runs find
the data prepared (``prepare_data`` is also safe under concurrency: :mod:`datamodules.locking`).

``run`` brings one run to ``done`` (:func:`lightning_app.compare.runs.execute_run`): a new or
continued fit, then the test. As the body of a SLURM job it survives requeues: the same command
finds the run's checkpoints and continues (same run directory, same W&B run id). SIGUSR1
(``sbatch --signal=B:USR1@<s>``) and SIGTERM are forwarded to the fit, where Lightning's
``SLURMEnvironment`` saves ``hpc_ckpt_<n>.ckpt`` and requeues the job. Without a thread count
in the environment, the job uses ``$SLURM_CPUS_PER_TASK`` threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from lightning_app.compare.runs import execute_run, spec_from_json

__all__ = ["ForwardingRunner", "main", "prepare"]


class ForwardingRunner:
    """A runner (``runner(cmd, log_path, env) -> exit status``) that forwards the signals the
    job receives to the subprocess it is running."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None
        self._lock = threading.Lock()
        #: set by SIGTERM (a requeue, preemption or cancel): the step's exit status no longer
        #: says that it finished (Lightning stops a fit gracefully on SIGTERM and exits 0)
        self.terminated = False

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._forward)

    def _forward(self, signum: int, frame: object) -> None:
        with self._lock:
            child = self._child
            if signum == signal.SIGTERM:
                self.terminated = True
        print(f"job: received signal {signum}, forwarding it to the running step", flush=True)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def __call__(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            with self._lock:
                self._child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                status = self._child.wait()
                return 128 + signal.SIGTERM if self.terminated else status
            finally:
                with self._lock:
                    self._child = None


def prepare(cli_args: Sequence[str]) -> None:
    """Prepare the data of a run given by its CLI arguments (loggers off, nothing written to
    the run directory)."""
    from lightning_app.cli import SegmentationCLI

    with tempfile.TemporaryDirectory(prefix="compare-prepare-") as scratch:
        args = [*cli_args, "--trainer.logger=false", f"--trainer.default_root_dir={scratch}"]
        sys.argv = sys.argv[:1]  # the arguments are given explicitly (LightningCLI warns otherwise)
        cli = SegmentationCLI(args=args, run=False)
        cli.datamodule.prepare_data()
        print(f"prepared: {getattr(cli.datamodule, 'data_dir', '?')}", flush=True)


def _thread_env() -> dict[str, str]:
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in os.environ:
        return {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        rest = argv[1:]
        prepare(rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m lightning_app.compare.job {prepare -- ARGS | run SPEC.json}")
        return 2
    spec, python, test_ckpt = spec_from_json(Path(argv[1]).read_text())
    job = os.environ.get("SLURM_JOB_ID", "-")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"job {job} (restart {restarts}): {spec.name} in {spec.run_dir}", flush=True)
    runner = ForwardingRunner()
    runner.install()
    try:
        execute_run(spec, python, test_ckpt, runner, lambda s: print(s, flush=True), _thread_env())
    except (RuntimeError, FileNotFoundError) as err:
        if runner.terminated:
            print(
                f"job {job}: terminated (requeue, preemption, time limit or cancel); a restart "
                "continues from the run's newest checkpoint",
                flush=True,
            )
            return 128 + signal.SIGTERM
        print(f"job {job}: FAILED: {err}", flush=True)
        return 1
    print(f"job {job}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
