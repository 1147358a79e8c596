"""How to run the plan: the in-process launcher runs every missing run one after another,
then the report is written from the finished runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning_app.compare.plan import PER_CASE_FILE, Comparison, Runner
from lightning_app.compare.report import write_outputs
from lightning_app.compare.runs import _execute, find_per_case_csv, run_state, subprocess_runner
from lightning_app.statistics import read_per_case_csv


def run_comparison(
    comparison: Comparison,
    runner: Runner = subprocess_runner,
    report_only: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Train and test every missing run, then write the outputs (:func:`write_outputs`).

    Args:
        comparison: what to run.
        runner: ``runner(cmd, log_path, env) -> exit status`` (tests pass a fake).
        report_only: launch nothing; tabulate the runs that are finished.
        dry_run: print the commands of the missing runs and stop (nothing is written).
        log: progress printer.

    Returns:
        ``{output kind: path}`` of the files written (empty for a dry run).

    Raises:
        RuntimeError: a fit or test subprocess failed (its log path and last lines included).
        FileNotFoundError: no run is finished (``report_only``) or a test wrote no per-case file.
    """
    overlay = None if dry_run else comparison.logger_overlay()
    specs = comparison.plan(overlay)
    log(
        f"{comparison.name}: {len(comparison.entries)} rows x {len(comparison.seeds)} seeds on "
        f"{comparison.dataset} -> {comparison.out_dir} (W&B group {comparison.group})"
    )
    if dry_run:
        for spec in specs:
            state = run_state(spec.run_dir)
            log(f"[{state}] {spec.name}")
            if state != "done":
                log(f"  {comparison.python} -m lightning_app fit {' '.join(spec.args)}")
        return {}
    if not report_only:
        for i, spec in enumerate(specs, start=1):
            log(f"[{i}/{len(specs)}] {spec.entry.label}, seed {spec.seed}")
            _execute(comparison, spec, runner, log)
    finished = []
    for spec in specs:
        path = find_per_case_csv(spec.run_dir)
        if path is None:
            log(f"  missing: {spec.name} (not finished)")
            continue
        finished.append((spec, read_per_case_csv(path)))
    if not finished:
        raise FileNotFoundError(
            f"No finished run of this comparison under {comparison.runs_dir} "
            f"(expected {specs[0].run_dir / PER_CASE_FILE} and the like)"
        )
    return write_outputs(comparison, finished, log=log)
