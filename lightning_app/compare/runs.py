"""One run of a comparison: its state on disk (done / fitted / resume / stale / new), the
fit + test subprocesses that bring it to ``done`` whatever launcher calls them, and the run's
description as JSON for jobs that run elsewhere (:mod:`lightning_app.compare.job`).

A run with ``per_case.csv`` is done and skipped; one whose fit completed (marker
``compare-fit.done``) is only tested; one with ``checkpoints/last.ckpt`` but no marker
continues with ``fit --ckpt_path=<last.ckpt>``; one that holds a config but no checkpoint (a fit
that died in its first epoch) is renamed ``<name>.stale-<time>`` and started again. Each run's
subprocess output is in ``<run dir>/compare.log``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from datamodules.atomic import atomic_write_text
from lightning_app.checkpoints import resume_checkpoint
from lightning_app.compare.interrupt import run_child
from lightning_app.compare.plan import (
    FIT_DONE,
    PER_CASE_FILE,
    Comparison,
    Entry,
    Runner,
    RunSpec,
)
from lightning_app.run_dir import RUN_NAME_ENV


# ---------------------------------------------------------------------- run states
def find_per_case_csv(run_dir: Path) -> Path | None:
    """``<run_dir>/per_case.csv``, else the newest ``per_case.csv`` below ``run_dir``."""
    direct = run_dir / PER_CASE_FILE
    if direct.is_file():
        return direct
    found = sorted(run_dir.glob(f"**/{PER_CASE_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_state(run_dir: Path) -> str:
    """``done`` (test outputs exist), ``fitted`` (fit finished, not tested), ``resume`` (a
    last.ckpt to continue from), ``stale`` (a config but no checkpoint) or ``new``."""
    if find_per_case_csv(run_dir) is not None:
        return "done"
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / FIT_DONE).is_file() and last.is_file():
        return "fitted"
    if resume_checkpoint(run_dir) is not None:
        return "resume"
    if (run_dir / "config.yaml").is_file():
        return "stale"
    return "new"


def _test_checkpoint(run_dir: Path, which: str) -> Path:
    if which == "best":
        best = sorted(
            (run_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if best:
            return best[-1]
        raise FileNotFoundError(f"No best-*.ckpt in {run_dir / 'checkpoints'} to test")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"No {last} to test (did the fit save checkpoints?)")
    return last


def subprocess_runner(cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run ``cmd``, appending its stdout and stderr to ``log_path``; return the exit status.
    A Ctrl-C of the grid sends it SIGTERM and waits for it (:mod:`lightning_app.compare.interrupt`)."""
    return run_child(cmd, log_path, env)


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _execute(
    comparison: Comparison, spec: RunSpec, runner: Runner, log: Callable[[str], None]
) -> None:
    """Bring one run of ``comparison`` to the ``done`` state (:func:`execute_run`)."""
    execute_run(spec, comparison.python, comparison.test_ckpt, runner, log)


def execute_run(
    spec: RunSpec,
    python: str,
    test_ckpt: str,
    runner: Runner,
    log: Callable[[str], None],
    env: dict[str, str] | None = None,
) -> None:
    """Bring one run to the ``done`` state (see :func:`run_state`): fit (new, or continued from
    :func:`resume_checkpoint`) unless fitted, then test ``test_ckpt`` (``last`` or ``best``).

    Args:
        env: extra environment of the subprocesses (a launcher's device and thread settings).

    Raises:
        RuntimeError: the fit or test exited non-zero (log path and last lines included).
    """
    state = run_state(spec.run_dir)
    if state == "done":
        log(f"  {spec.name}: finished, skipped")
        return
    if state == "stale":
        aside = spec.run_dir.with_name(f"{spec.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        spec.run_dir.rename(aside)
        log(f"  {spec.name}: no checkpoint from the last attempt, moved to {aside.name}")
        state = "new"
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = spec.run_dir / "compare.log"
    env = {**os.environ, **(env or {}), RUN_NAME_ENV: spec.name, "PYTHONUNBUFFERED": "1"}
    base = [python, "-m", "lightning_app"]
    if state in ("new", "resume"):
        cmd = [*base, "fit", *spec.args]
        how = "new"
        if state == "resume":
            ckpt = resume_checkpoint(spec.run_dir)
            cmd.append(f"--ckpt_path={ckpt}")
            how = f"continued from {ckpt.name}"
        log(f"  {spec.name}: fit ({how}), output in {log_path}")
        start = time.monotonic()
        if runner(cmd, log_path, env) != 0:
            raise RuntimeError(
                f"Fit of {spec.name} failed; log {log_path}, last lines:\n{_tail(log_path)}"
            )
        atomic_write_text(spec.run_dir / FIT_DONE, time.strftime("%Y-%m-%d %H:%M:%S\n"))
        log(f"  {spec.name}: fit done in {time.monotonic() - start:.0f} s")
    ckpt = _test_checkpoint(spec.run_dir, test_ckpt)
    start = time.monotonic()
    if runner([*base, "test", *spec.args, f"--ckpt_path={ckpt}"], log_path, env) != 0:
        raise RuntimeError(
            f"Test of {spec.name} failed; log {log_path}, last lines:\n{_tail(log_path)}"
        )
    if find_per_case_csv(spec.run_dir) is None:
        raise FileNotFoundError(
            f"The test of {spec.name} wrote no {PER_CASE_FILE} under {spec.run_dir}; log {log_path}"
        )
    log(f"  {spec.name}: test done in {time.monotonic() - start:.0f} s")


# ---------------------------------------------------------------------- specs on disk
def spec_to_json(spec: RunSpec, python: str, test_ckpt: str) -> str:
    """What a job on another machine needs to run ``spec`` (read back by :func:`spec_from_json`)."""
    entry = spec.entry
    return json.dumps(
        {
            "entry": [entry.label, entry.key, entry.loss, list(entry.extra_args)],
            "seed": spec.seed,
            "name": spec.name,
            "run_dir": str(spec.run_dir),
            "args": list(spec.args),
            "python": python,
            "test_ckpt": test_ckpt,
            "fold": spec.fold,
        },
        indent=1,
    )


def spec_from_json(text: str) -> tuple[RunSpec, str, str]:
    """``(spec, python, test_ckpt)`` written by :func:`spec_to_json`."""
    d = json.loads(text)
    label, key, loss, extra = d["entry"]
    entry = Entry(label, key, loss, tuple(extra))
    fold = d.get("fold")
    spec = RunSpec(
        entry,
        int(d["seed"]),
        d["name"],
        Path(d["run_dir"]),
        tuple(d["args"]),
        None if fold is None else int(fold),
    )
    return spec, d["python"], d["test_ckpt"]


def prepare_command(python: str, spec: RunSpec) -> list[str]:
    """The command that prepares the data of ``spec`` (``data_dir``) and nothing else."""
    return [python, "-m", "lightning_app.compare.job", "prepare", "--", *spec.args]
