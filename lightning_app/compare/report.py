"""What ``make compare`` / ``make sweep-k`` report: the per-case CSV of the finished runs, then
the analysis of that CSV alone (:func:`lightning_app.compare.analysis.analyze_rows`, the same
code as ``python -m lightning_app.compare analyze``), the validation curves, and the W&B run
that logs the table and the plots. That run's id is :func:`comparison_run_id`, a digest of the
plan (dataset, rows with their loss configs, seeds, overrides), so a rerun of the same plan
updates one W&B run and another plan opens its own."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_app.compare.analysis import analyze_rows, default_reference, read_rows, write_csv
from lightning_app.compare.per_case import COMPARISON_PER_CASE_COLUMNS, CaseTable, per_case_rows
from lightning_app.compare.plan import Comparison, RunSpec
from lightning_app.compare.plots import plot_curves, read_val_curve
from lightning_app.loggers import resolve_wandb_mode


def write_outputs(
    comparison: Comparison,
    finished: Sequence[tuple[RunSpec, CaseTable]],
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write the per-case CSV, then analyse it (table md + csv, plots); log them to W&B.

    Args:
        finished: ``(run spec, CaseTable)`` of every finished run.

    Returns:
        ``{"markdown", "csv", "per_case", "per_class_plot", "rank_plot"[, "diff_plot",
        "curves_plot", "k_plot"]: path}``.
    """
    out = comparison.out_dir
    assert out is not None
    out.mkdir(parents=True, exist_ok=True)
    stem = comparison.name
    per_case = [
        row
        for spec, table in finished
        for row in per_case_rows(
            spec.entry.label, spec.entry.key, spec.seed, spec.name, table, spec.fold
        )
    ]
    per_case_path = write_csv(out / f"{stem}_per_case.csv", COMPARISON_PER_CASE_COLUMNS, per_case)
    rows = read_rows(per_case_path)  # the analysis sees exactly what `analyze` would read

    labels = [e.label for e in comparison.entries]
    done = [label for label in labels if any(s.entry.label == label for s, _ in finished)]
    reference = comparison.reference
    if reference not in done:
        fallback = default_reference(done)
        if reference is not None:
            log(f"note: no finished run of the reference {reference!r}; reference: {fallback!r}")
        reference = fallback
    curves = {
        label: [read_val_curve(spec.run_dir) for spec, _ in finished if spec.entry.label == label]
        for label in done
    }
    plots = {}
    where = f"{comparison.data_name}, {len(comparison.seeds)} seed(s)"
    curve_path = plot_curves(curves, out / f"{stem}_val_dice.png", f"Validation Dice ({where})")
    if curve_path is not None:
        plots["curves_plot"] = curve_path
    title = (
        f"Loss comparison on {comparison.data_name}"
        if comparison.mode == "compare"
        else f"CE + topK-Dice: sweep over K on {comparison.data_name}"
    )
    result = analyze_rows(
        rows,
        out,
        stem=stem,
        reference=reference,
        dataset=comparison.dataset,
        title=title,
        sweep=comparison.mode == "sweepk",
        notes=_notes(comparison, per_case_path, len(finished)),
        plots=plots,
    )
    paths = {**result.paths, "per_case": per_case_path}
    wandb_dir = log_to_wandb(comparison, paths)
    for kind, path in paths.items():
        log(f"{kind:>15}: {path}")
    if wandb_dir is not None:
        log(f"{'W&B':>15}: {wandb_dir}")
    return paths


def _notes(comparison: Comparison, per_case: Path, n_finished: int) -> list[str]:
    expected = comparison.n_runs
    lines = []
    if n_finished < expected:
        lines.append(f"**Incomplete: {n_finished} of {expected} runs finished.**\n")
    if comparison.command:
        lines.append(f"- Command: `{comparison.command}`")
    lines += [
        f"- Seeds: {', '.join(map(str, comparison.seeds))}",
        *(
            [
                f"- Folds: {', '.join(map(str, comparison.folds))} (each case tested once, by "
                "the fold that held it out; a seed's case set pools its folds)"
            ]
            if comparison.folds
            else []
        ),
        f"- Overrides (ARGS): `{' '.join(comparison.user_args) or '(none)'}`",
        f"- Test checkpoint: {comparison.test_ckpt}; runs: `{comparison.runs_dir}/"
        f"{comparison.mode}-*` (W&B group `{comparison.group}`)",
        f"- Per-case scores: `{per_case.name}` (`python -m lightning_app.compare analyze "
        f"--per-case {per_case.name}` rebuilds this report from it)",
        f"- Written {time.strftime('%Y-%m-%d %H:%M')}",
    ]
    return lines


def comparison_run_id(comparison: Comparison) -> str:
    """W&B run id of a comparison's report: ``<name>-<dataset>-<12 hex digits>``, the digits
    of the SHA-1 of the plan: mode, dataset, the settings hash of the shared configs, overrides
    and test checkpoint (:meth:`Comparison.settings_hash`), each row's key, loss preset, extra
    arguments and settings hash, and the seeds. The same plan gives the same id; the reference
    row, the output folder and the time do not enter it."""
    plan = {
        "mode": comparison.mode,
        "dataset": comparison.dataset,
        "settings": comparison.settings_hash(),
        "rows": [
            [e.key, e.loss, list(e.extra_args), comparison.settings_hash(e)]
            for e in comparison.entries
        ],
        "seeds": list(comparison.seeds),
    }
    digest = hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{comparison.name}-{comparison.dataset}")
    return f"{prefix[:40]}-{digest}"


def log_to_wandb(comparison: Comparison, paths: dict[str, Path]) -> str | None:
    """Log the table (``wandb.Table`` of ``<name>.csv``) and the PNGs to a W&B run of their
    own, in the comparison's project and group (offline without credentials; nothing with
    ``WANDB_MODE=disabled``). The run's id is :func:`comparison_run_id` with
    ``resume="allow"``: a rerun of the same plan updates that run (its summary holds the latest
    table and plots). Returns the run's local folder, or ``None`` when disabled."""
    mode = resolve_wandb_mode()
    if mode == "disabled":
        return None
    import csv

    import wandb

    with paths["csv"].open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        data = _typed_columns(list(reader))
    run = wandb.init(
        project=f"topk-dice-{comparison.data_name}",
        group=comparison.group,
        job_type="comparison",
        id=comparison_run_id(comparison),
        resume="allow",
        name=f"{comparison.group}-{comparison.name}",
        dir=str(comparison.out_dir),
        mode=mode,
        config={
            "seeds": comparison.seeds,
            "args": comparison.user_args,
            "rows": [e.label for e in comparison.entries],
            "test_ckpt": comparison.test_ckpt,
            "reference": comparison.reference,
        },
    )
    try:
        payload: dict[str, object] = {
            f"{comparison.name}/table": wandb.Table(columns=header, data=data)
        }
        for kind, path in paths.items():
            if path.suffix == ".png":
                payload[f"{comparison.name}/{kind}"] = wandb.Image(str(path))
        run.log(payload)
        return str(getattr(run.settings, "sync_dir", "") or comparison.out_dir)
    finally:
        run.finish()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _typed_columns(rows: list[list[str]]) -> list[list[object]]:
    """CSV cells for a W&B table, one type per column: numbers where every non-empty cell of
    the column parses (empty: ``None``), else the text."""
    numeric = [
        all(v == "" or _number(v) is not None for v in column) for column in zip(*rows, strict=True)
    ]
    return [
        [
            (_number(v) if v != "" else None) if num else v
            for v, num in zip(row, numeric, strict=True)
        ]
        for row in rows
    ]
