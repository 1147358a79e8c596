"""``LAUNCHER=slurm``: one SLURM job per (row, seed) run, submitted with plain ``sbatch``.

Each run that is not done becomes a job whose script is ``exec <python> -m
lightning_app.compare.job run <runs/slurm/<run name>.json>`` (:mod:`lightning_app.compare.job`):
the job finds the run's state on disk, so a requeued job (``scontrol requeue``, a preemption,
the ``--signal`` before a time limit) continues the fit from its checkpoint in the same run
directory. The job's output goes to ``runs/slurm/<run name>-<job id>.out`` (appended across
requeues), the fit's and test's to ``<run dir>/compare.log``.

The launcher only needs ``sbatch`` and ``squeue`` on PATH (no accounting database): a job that
left the queue is done when its run has ``per_case.csv``, else failed. The job id of each run is
kept in ``runs/slurm/<run name>.jobid``, so the same command run again follows jobs still queued,
tabulates what finished, and resubmits what failed or never ran. Ctrl-C submits nothing more,
cancels the pending jobs and sends SIGTERM to the running ones, then waits for them to save.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.compare.interrupt import STOP
from lightning_app.compare.launchers import LaunchResult, prepare_once
from lightning_app.compare.plan import Comparison, Runner, RunSpec
from lightning_app.compare.runs import find_per_case_csv, run_state, spec_to_json

__all__ = ["SlurmLauncher", "job_script", "queue_states"]

#: squeue states after which a job will not run again.
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """``{job id: squeue state}`` of the given jobs that the controller still knows
    (``squeue -t all``: finished jobs stay listed for ``MinJobAge`` seconds)."""
    if not job_ids:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T"], capture_output=True, text=True, check=True
    ).stdout
    wanted = set(job_ids)
    states = {}
    for line in out.splitlines():
        job, _, state = line.strip().partition("|")
        if job in wanted:
            states[job] = state
    return states


def job_script(spec_file: Path, log_pattern: Path, name: str, python: str, workdir: Path) -> str:
    """The batch script of one run; its ``#SBATCH`` lines yield to options given to ``sbatch``."""
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name={name}",
            f"#SBATCH --output={log_pattern}",
            "#SBATCH --open-mode=append",
            f"#SBATCH --chdir={workdir}",
            "# written by lightning_app.compare (LAUNCHER=slurm); requeue-safe: the job continues",
            "# the run from its newest checkpoint",
            f"exec {shlex.quote(python)} -m lightning_app.compare.job run {shlex.quote(str(spec_file))}",
            "",
        ]
    )


@dataclass
class SlurmLauncher:
    """Submit the missing runs as SLURM jobs and (by default) wait for them.

    Attributes:
        sbatch_args: options for every ``sbatch`` (``configs/launcher/slurm.yaml``'s defaults,
            then the user's ``SBATCH``; later ones win).
        wait: follow the jobs until they leave the queue (else return after submitting).
        poll_seconds: seconds between two ``squeue`` calls.
    """

    sbatch_args: list[str] = field(default_factory=list)
    wait: bool = True
    poll_seconds: float = 30.0

    def _submit(self, comparison: Comparison, spec: RunSpec, jobs_dir: Path) -> str:
        spec_file = jobs_dir / f"{spec.name}.json"
        spec_file.write_text(spec_to_json(spec, comparison.python, comparison.test_ckpt))
        script = jobs_dir / f"{spec.name}.sh"
        pattern = jobs_dir / f"{spec.name}-%j.out"
        script.write_text(
            job_script(spec_file, pattern, spec.name, comparison.python, Path.cwd().absolute())
        )
        cmd = ["sbatch", "--parsable", *self.sbatch_args, str(script)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"sbatch failed for {spec.name} (exit {proc.returncode}): {shlex.join(cmd)}\n"
                f"{proc.stderr.strip()}"
            )
        job = proc.stdout.strip().split(";")[0]
        (jobs_dir / f"{spec.name}.jobid").write_text(job + "\n")
        return job

    def launch(
        self,
        comparison: Comparison,
        specs: Sequence[RunSpec],
        runner: Runner,
        log: Callable[[str], None],
    ) -> LaunchResult:
        jobs_dir = (comparison.runs_dir / "slurm").absolute()
        jobs_dir.mkdir(parents=True, exist_ok=True)
        todo = [s for s in specs if run_state(s.run_dir) != "done"]
        log(f"slurm: {len(specs) - len(todo)} of {len(specs)} runs done, {len(todo)} to run")
        if not todo:
            return LaunchResult()
        known = {}
        for spec in todo:
            record = jobs_dir / f"{spec.name}.jobid"
            if record.is_file():
                known[spec.name] = record.read_text().strip()
        states = queue_states(list(known.values()))
        jobs: dict[str, str] = {}  # run name -> job id
        fresh = []
        for spec in todo:
            job = known.get(spec.name)
            if job is not None and job in states and states[job] not in TERMINAL:
                jobs[spec.name] = job
                log(f"slurm: {spec.name}: job {job} still queued ({states[job]}), followed")
            else:
                fresh.append(spec)
        if fresh:
            prepare_once(comparison, fresh, runner, log)
        for spec in fresh:
            if STOP.is_set():  # Ctrl-C: submit nothing more
                break
            job = self._submit(comparison, spec, jobs_dir)
            jobs[spec.name] = job
            log(f"slurm: submitted {spec.name}: job {job}")
        if not self.wait:
            return LaunchResult(waiting=list(jobs.values()))
        return self._follow(specs, jobs, jobs_dir, log)

    def _follow(
        self,
        specs: Sequence[RunSpec],
        jobs: dict[str, str],
        jobs_dir: Path,
        log: Callable[[str], None],
    ) -> LaunchResult:
        by_name = {s.name: s for s in specs}
        shown = ""
        last_shown = 0.0
        signalled = False
        while True:
            states = queue_states(list(jobs.values()))
            groups: dict[str, list[str]] = {"pending": [], "running": [], "done": [], "failed": []}
            for name, job in jobs.items():
                state = states.get(job)
                if state is not None and state not in TERMINAL:
                    groups["running" if state in RUNNING else "pending"].append(job)
                elif find_per_case_csv(by_name[name].run_dir) is not None:
                    groups["done"].append(job)
                else:
                    groups["failed"].append(job)
            line = "slurm: " + ", ".join(
                f"{len(ids)} {kind}" + (f" ({' '.join(ids)})" if ids else "")
                for kind, ids in groups.items()
            )
            if line != shown or time.monotonic() - last_shown > 600:
                log(line)
                shown, last_shown = line, time.monotonic()
            if not groups["pending"] and not groups["running"]:
                break
            if STOP.is_set() and not signalled:
                _stop_jobs(groups["pending"], groups["running"], log)
                signalled = True
            if signalled:
                time.sleep(min(self.poll_seconds, 2.0))  # interrupted: follow the jobs closely
            else:
                STOP.wait(self.poll_seconds)  # a Ctrl-C ends the wait
        failures = []
        for name, job in jobs.items():
            if job in groups["failed"]:
                out = jobs_dir / f"{name}-{job}.out"
                tail = _tail_lines(out, 20)
                state = states.get(job, "left the queue")
                failures.append(
                    f"SLURM job {job} ({name}, {state}) failed; log {out}, last lines:\n{tail}\n"
                    f"run output: {by_name[name].run_dir / 'compare.log'}"
                )
        return LaunchResult(failures=failures)


def _stop_jobs(pending: list[str], running: list[str], log: Callable[[str], None]) -> None:
    """Ctrl-C: cancel the jobs not started; send SIGTERM to every process of the running ones
    (``scancel --signal=TERM --full``), whose fits then save their checkpoints and exit."""
    if pending:
        subprocess.run(["scancel", *pending], capture_output=True)
        log(f"slurm: cancelled the pending jobs {' '.join(pending)}")
    if running:
        subprocess.run(["scancel", "--signal=TERM", "--full", *running], capture_output=True)
        log(f"slurm: sent SIGTERM to the running jobs {' '.join(running)}; waiting for them")


def _tail_lines(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"
