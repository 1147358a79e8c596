"""How to run the plan, then report it.

Three launchers bring the missing runs of a plan to ``done``
(:func:`lightning_app.compare.runs.execute_run`):

- in-process (``launcher=None``): one run after another, stopping at the first failure;
- :class:`LocalPool` (``LAUNCHER=local JOBS=N``): N runs at once on the local host, each with its
  own slot: one visible GPU per run (``CUDA_VISIBLE_DEVICES``), ``runs_per_gpu`` runs packed on
  each GPU, or on CPU the cores divided between the runs (``OMP_NUM_THREADS``);
- :class:`lightning_app.compare.slurm.SlurmLauncher` (``LAUNCHER=slurm``): one SLURM job per run.

The local pool and SLURM prepare the data once (per fold) before they fan out (:func:`prepare_once`) and
carry on past a failed run: the report is written from the runs that finished, then the
failures are raised together, each with its log path and last lines.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lightning_app.compare.interrupt import STOP, Interrupted, stop_on_interrupt
from lightning_app.compare.per_case import read_per_case_csv
from lightning_app.compare.plan import PER_CASE_FILE, Comparison, Runner, RunSpec
from lightning_app.compare.report import write_outputs
from lightning_app.compare.runs import (
    _execute,
    _tail,
    execute_run,
    find_per_case_csv,
    prepare_command,
    run_state,
    subprocess_runner,
)

__all__ = [
    "LaunchResult",
    "Launcher",
    "LocalPool",
    "prepare_once",
    "run_comparison",
    "visible_gpus",
]


@dataclass
class LaunchResult:
    """What a launcher left behind: ``failures`` (one message per failed run, with its log
    path and last lines) and ``waiting`` (job ids still queued when it did not wait)."""

    failures: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


class Launcher(Protocol):
    def launch(
        self,
        comparison: Comparison,
        specs: Sequence[RunSpec],
        runner: Runner,
        log: Callable[[str], None],
    ) -> LaunchResult: ...


def prepare_once(
    comparison: Comparison, specs: Sequence[RunSpec], runner: Runner, log: Callable[[str], None]
) -> None:
    """Prepare the grid's data once per fold, before fanning out (every run of a fold shares
    the data settings: the common configs, ``ARGS`` and the fold). Skipped when every run is
    done.

    Raises:
        RuntimeError: the preparation failed (log path and last lines included).
    """
    first_of_fold: dict[int | None, RunSpec] = {}
    for spec in specs:
        if run_state(spec.run_dir) != "done":
            first_of_fold.setdefault(spec.fold, spec)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for fold, spec in first_of_fold.items():
        tag = "" if fold is None else f"-fold{fold}"
        log_path = comparison.runs_dir / f"prepare{tag}.log"
        start = time.monotonic()
        if runner(prepare_command(comparison.python, spec), log_path, env) != 0:
            raise RuntimeError(
                f"Preparing the data{'' if fold is None else f' of fold {fold}'} failed; log "
                f"{log_path}, last lines:\n{_tail(log_path)}"
            )
        where = "" if fold is None else f" of fold {fold}"
        log(f"data{where} prepared in {time.monotonic() - start:.0f} s (log {log_path})")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's
    entries when it is set, else ``0 .. torch.cuda.device_count()-1``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class LocalPool:
    """N runs at once on the local host.

    Attributes:
        jobs: runs at once; default: one per GPU slot (``len(gpus) * runs_per_gpu``), or 1
            without GPUs.
        runs_per_gpu: runs packed on each GPU (k >= 1).
        gpus: ``CUDA_VISIBLE_DEVICES`` entries to place runs on; ``None``: :func:`visible_gpus`.
        cpus: cores to divide between the runs; ``None``: this process's CPU affinity.
    """

    jobs: int | None = None
    runs_per_gpu: int = 1
    gpus: list[str] | None = None
    cpus: int | None = None

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"Expected argument `jobs` to be >= 1, but got {self.jobs}")
        if self.runs_per_gpu < 1:
            raise ValueError(
                f"Expected argument `runs_per_gpu` to be >= 1, but got {self.runs_per_gpu}"
            )

    def slots(self) -> list[dict[str, str]]:
        """The environment of each concurrent slot.

        GPUs: slot i sees one GPU, filled round-robin (``0, 1, .., 0, 1, ..``) so that ``jobs``
        below the slot count spreads the runs over the GPUs first; every slot gets
        ``cpus // jobs`` threads. CPU only: ``CUDA_VISIBLE_DEVICES=""`` and ``cpus // jobs``
        threads (at least 1) per run.

        Raises:
            ValueError: ``jobs`` above ``len(gpus) * runs_per_gpu``.
        """
        gpus = visible_gpus() if self.gpus is None else list(self.gpus)
        cpus = self.cpus or len(os.sched_getaffinity(0))
        if gpus:
            cells = [g for _ in range(self.runs_per_gpu) for g in gpus]
            jobs = self.jobs or len(cells)
            if jobs > len(cells):
                raise ValueError(
                    f"Expected argument `jobs` to be at most {len(cells)} "
                    f"({len(gpus)} GPUs x runs_per_gpu={self.runs_per_gpu}), but got {jobs}; "
                    "raise RUNS_PER_GPU to pack more runs on each GPU"
                )
            devices = cells[:jobs]
        else:
            jobs = self.jobs or 1
            devices = [""] * jobs
        threads = str(max(1, cpus // jobs))
        return [
            {"CUDA_VISIBLE_DEVICES": d, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            for d in devices
        ]

    def launch(
        self,
        comparison: Comparison,
        specs: Sequence[RunSpec],
        runner: Runner,
        log: Callable[[str], None],
    ) -> LaunchResult:
        slots = self.slots()
        todo = [s for s in specs if run_state(s.run_dir) != "done"]
        where = ", ".join(
            f"GPU {s['CUDA_VISIBLE_DEVICES']}" for s in slots if s["CUDA_VISIBLE_DEVICES"]
        )
        log(
            f"local: {len(todo)} of {len(specs)} runs to do, {len(slots)} at once "
            f"({where or 'CPU'}; {slots[0]['OMP_NUM_THREADS']} threads each)"
        )
        if not todo:
            return LaunchResult()
        prepare_once(comparison, todo, runner, log)
        free: queue.Queue[int] = queue.Queue()
        for i in range(len(slots)):
            free.put(i)
        failures: list[str] = []
        lock = threading.Lock()

        def one(spec: RunSpec) -> None:
            slot = free.get()
            if STOP.is_set():  # Ctrl-C: no new run
                free.put(slot)
                return
            try:
                execute_run(
                    spec,
                    comparison.python,
                    comparison.test_ckpt,
                    runner,
                    lambda s: log(f"[slot {slot}] {s.strip()}"),
                    slots[slot],
                )
            except (RuntimeError, FileNotFoundError) as err:
                if STOP.is_set():
                    log(
                        f"[slot {slot}] {spec.name}: interrupted (log {spec.run_dir / 'compare.log'})"
                    )
                    return
                with lock:
                    failures.append(str(err))
                log(f"[slot {slot}] {spec.name}: FAILED (log {spec.run_dir / 'compare.log'})")
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            for future in [pool.submit(one, s) for s in todo]:
                future.result()
        return LaunchResult(failures=failures)


def run_comparison(
    comparison: Comparison,
    runner: Runner = subprocess_runner,
    report_only: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    launcher: Launcher | None = None,
) -> dict[str, Path]:
    """Train and test every missing run, then write the outputs (:func:`write_outputs`).

    Args:
        comparison: what to run.
        runner: ``runner(cmd, log_path, env) -> exit status`` (tests pass a fake).
        report_only: launch nothing; tabulate the runs that are finished.
        dry_run: print the commands of the missing runs and stop (nothing is written).
        log: progress printer.
        launcher: ``None`` (in-process, one run after another) or a :class:`Launcher`.

    Returns:
        ``{output kind: path}`` of the files written (empty for a dry run, or when a launcher
        left its jobs queued without waiting).

    Raises:
        RuntimeError: a fit or test failed (its log path and last lines included); with a
            launcher, after the report of the runs that finished.
        FileNotFoundError: no run is finished (``report_only``) or a test wrote no per-case file.
    """
    overlay = None if dry_run else comparison.logger_overlay()
    specs = comparison.plan(overlay)
    folds = "" if comparison.folds is None else f" x {len(comparison.folds)} folds"
    log(
        f"{comparison.name}: {len(comparison.entries)} rows x {len(comparison.seeds)} seeds"
        f"{folds} on {comparison.data_name} -> {comparison.out_dir} (W&B group {comparison.group})"
    )
    if dry_run:
        for spec in specs:
            state = run_state(spec.run_dir)
            log(f"[{state}] {spec.name}")
            if state != "done":
                log(f"  {comparison.python} -m lightning_app fit {' '.join(spec.args)}")
        return {}
    with stop_on_interrupt() as stop:
        failures: list[str] = []
        if not report_only:
            if launcher is None:
                for i, spec in enumerate(specs, start=1):
                    if stop.is_set():
                        break
                    fold = "" if spec.fold is None else f", fold {spec.fold}"
                    log(f"[{i}/{len(specs)}] {spec.entry.label}, seed {spec.seed}{fold}")
                    try:
                        _execute(comparison, spec, runner, log)
                    except (RuntimeError, FileNotFoundError):
                        if not stop.is_set():
                            raise
                        log(f"  {spec.name}: interrupted (log {spec.run_dir / 'compare.log'})")
            else:
                result = launcher.launch(comparison, specs, runner, log)
                if result.waiting and not stop.is_set():
                    log(
                        f"{len(result.waiting)} job(s) queued ({' '.join(result.waiting)}); run "
                        "the same command again to follow them and write the table"
                    )
                    return {}
                failures = result.failures
        if stop.is_set():
            _report_interrupted(comparison, specs, log)
        return _report(comparison, specs, failures, log)


def _finished_runs(
    specs: Sequence[RunSpec], log: Callable[[str], None]
) -> list[tuple[RunSpec, object]]:
    finished = []
    for spec in specs:
        path = find_per_case_csv(spec.run_dir)
        if path is None:
            log(f"  missing: {spec.name} (not finished)")
            continue
        finished.append((spec, read_per_case_csv(path)))
    return finished


def _report_interrupted(
    comparison: Comparison, specs: Sequence[RunSpec], log: Callable[[str], None]
) -> None:
    """After Ctrl-C: the table of the runs finished so far (marked incomplete), the command
    that resumes the grid, then :class:`Interrupted` (exit 130)."""
    finished = _finished_runs(specs, log)
    if finished:
        paths = write_outputs(comparison, finished, log=log)
        log(f"\nINCOMPLETE ({len(finished)} of {len(specs)} runs finished): {paths['markdown']}")
        log(paths["markdown"].read_text())
    else:
        log(f"\nINCOMPLETE: none of the {len(specs)} runs finished; no table")
    log(
        "Interrupted. To resume (finished runs are skipped, stopped runs continue from their "
        f"checkpoints), run the same command again: {comparison.command}"
    )
    raise Interrupted()


def _report(
    comparison: Comparison,
    specs: Sequence[RunSpec],
    failures: list[str],
    log: Callable[[str], None],
) -> dict[str, Path]:
    finished = _finished_runs(specs, log)
    if not finished:
        if failures:
            raise RuntimeError(_failure_summary(failures))
        raise FileNotFoundError(
            f"No finished run of this comparison under {comparison.runs_dir} "
            f"(expected {specs[0].run_dir / PER_CASE_FILE} and the like)"
        )
    paths = write_outputs(comparison, finished, log=log)
    if failures:
        raise RuntimeError(_failure_summary(failures))
    return paths


def _failure_summary(failures: Sequence[str]) -> str:
    head = f"{len(failures)} run(s) failed (run the same command again to retry them):"
    return "\n\n".join([head, *failures])
