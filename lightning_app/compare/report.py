"""What to report: the comparison table (Markdown, CSV), the per-case CSV, the plots, and the
W&B run that logs them (statistics: :mod:`lightning_app.statistics`)."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_app.compare.plan import Comparison, RunSpec
from lightning_app.loggers import resolve_wandb_mode
from lightning_app.plots import plot_against, plot_columns, plot_curves, read_val_curve
from lightning_app.statistics import (
    PER_CASE_METRICS,
    RunScores,
    TableRow,
    as_mapping,
    comparison_rows,
    dataset_columns,
)


def _fmt(value: float, std: float, bold: bool) -> str:
    if math.isnan(value):
        return "–"
    text = f"{value:.2f}" if math.isnan(std) else f"{value:.2f} ± {std:.2f}"
    return f"**{text}**" if bold else text


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def markdown_table(rows: Sequence[TableRow], titles: Sequence[str], reference: str | None) -> str:
    """The comparison table in Markdown (percent; ``**`` marks the best mean per column)."""
    head = ["Loss functions", *titles]
    if reference is not None:
        head += [f"p vs {reference}", "pairs"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|",
    ]
    for row in rows:
        cells = [row.label] + [_fmt(row.mean[t], row.std[t], t in row.best) for t in titles]
        if reference is not None:
            if row.is_reference:
                cells += ["(reference)", "–"]
            else:
                cells += [_fmt_p(row.p_value), str(row.n_pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def write_outputs(
    comparison: Comparison,
    finished: Sequence[tuple[RunSpec, object]],
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write the table (md, csv), the per-case CSV and the plots; log them to W&B.

    Args:
        finished: ``(run spec, CaseTable)`` of every finished run.

    Returns:
        ``{"markdown", "csv", "per_case", "per_class_plot", "curves_plot"[, "k_plot"]: path}``.
    """
    out = comparison.out_dir
    assert out is not None
    out.mkdir(parents=True, exist_ok=True)
    stem = comparison.name
    runs = [RunScores(spec.entry.label, spec.seed, table, spec.run_dir) for spec, table in finished]
    columns = dataset_columns(comparison.dataset, runs[0].table.classes)
    labels = [e.label for e in comparison.entries]
    reference = comparison.reference
    rows = comparison_rows(runs, columns, labels, reference)
    reference_shown = reference if any(r.label == reference for r in rows) else None
    titles = [c.title for c in columns]
    paths: dict[str, Path] = {}

    # table CSV
    flat = [as_mapping(r) for r in rows]
    header = list(flat[0])
    paths["csv"] = out / f"{stem}.csv"
    _write_csv(paths["csv"], header, [[m[h] for h in header] for m in flat])

    # per-case CSV
    per_case_rows = []
    for spec, table in finished:
        for k, case in enumerate(table.cases):
            for c, cls in enumerate(table.classes):
                values = [
                    table.values[m][k, c] if m in table.values else math.nan
                    for m in PER_CASE_METRICS
                ]
                per_case_rows.append(
                    [spec.entry.label, spec.entry.key, spec.seed, spec.name, case, cls, *values]
                )
    paths["per_case"] = out / f"{stem}_per_case.csv"
    _write_csv(
        paths["per_case"],
        ["loss", "key", "seed", "run", "case", "class", *PER_CASE_METRICS],
        per_case_rows,
    )

    # plots
    where = f"{comparison.dataset}, {len(comparison.seeds)} seed(s)"
    bar_columns = [t for t in titles if t != "mIoU"] if comparison.dataset != "msseg2" else titles
    paths["per_class_plot"] = plot_columns(
        rows, bar_columns, out / f"{stem}_per_class_dice.png", f"Test scores ({where})"
    )
    curves = {
        label: [read_val_curve(spec.run_dir) for spec, _ in finished if spec.entry.label == label]
        for label in labels
        if any(spec.entry.label == label for spec, _ in finished)
    }
    curve_path = plot_curves(curves, out / f"{stem}_val_dice.png", f"Validation Dice ({where})")
    if curve_path is not None:
        paths["curves_plot"] = curve_path
    if comparison.mode == "sweepk":
        ks = [float(r.label.split("=", 1)[1]) for r in rows]
        paths["k_plot"] = plot_against(
            ks,
            rows,
            "mDice",
            out / f"{stem}_mdice_vs_k.png",
            f"CE + topK-Dice: mDice vs K ({where})",
        )

    # markdown
    table_md = markdown_table(rows, titles, reference_shown)
    paths["markdown"] = out / f"{stem}.md"
    paths["markdown"].write_text(
        _markdown_document(comparison, rows, table_md, reference_shown, paths, len(finished))
    )
    wandb_dir = log_to_wandb(comparison, header, flat, paths)
    for kind, path in paths.items():
        log(f"{kind:>15}: {path}")
    if wandb_dir is not None:
        log(f"{'W&B':>15}: {wandb_dir}")
    return paths


def _markdown_document(
    comparison: Comparison,
    rows: Sequence[TableRow],
    table_md: str,
    reference: str | None,
    paths: dict[str, Path],
    n_finished: int,
) -> str:
    seeds = ", ".join(map(str, comparison.seeds))
    title = "Loss comparison" if comparison.mode == "compare" else "CE + topK-Dice: sweep over K"
    expected = len(comparison.entries) * len(comparison.seeds)
    lines = [
        f"# {title} on {comparison.dataset}",
        "",
        f"Test-set scores in percent, mean ± standard deviation over the seeds ({seeds}); "
        "**bold**: the best mean of each column.",
    ]
    if reference is not None:
        lines.append(
            f"p: two-sided paired Wilcoxon signed-rank test (`scipy.stats.wilcoxon`) of each row "
            f"against {reference}, one pair per (seed, case) of per-case foreground-mean Dice; "
            "pairs: their number. The pairs share trained networks, so treat p as a screening "
            "statistic."
        )
    small = sorted({r.n_pairs for r in rows if 0 < r.n_pairs <= 5})
    if small:
        lines.append(
            f"With {' or '.join(map(str, small))} pairs a two-sided p cannot fall below "
            f"{2 / 2 ** max(small):.3g}: add seeds (`--seeds`) or test cases for a usable test."
        )
    if n_finished < expected:
        lines.append(f"\n**Incomplete: {n_finished} of {expected} runs finished.**")
    lines += ["", table_md, ""]
    for kind in ("per_class_plot", "curves_plot", "k_plot"):
        if kind in paths:
            lines.append(f"![{kind}]({paths[kind].name})")
    args = " ".join(comparison.user_args) or "(none)"
    lines += [""]
    if comparison.command:
        lines.append(f"- Command: `{comparison.command}`")
    lines += [
        f"- Overrides (ARGS): `{args}`",
        f"- Test checkpoint: {comparison.test_ckpt}; runs: `{comparison.runs_dir}/"
        f"{comparison.mode}-*` (W&B group `{comparison.group}`)",
        f"- Per-case scores: `{paths['per_case'].name}`; table: `{paths['csv'].name}`",
        f"- Written {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]
    return "\n".join(lines)


def log_to_wandb(
    comparison: Comparison,
    header: Sequence[str],
    flat: Sequence[dict],
    paths: dict[str, Path],
) -> str | None:
    """Log the table (``wandb.Table``) and the PNGs to a W&B run of their own, in the
    comparison's project and group (offline without credentials; nothing with
    ``WANDB_MODE=disabled``). Returns the run's local folder, or ``None`` when disabled."""
    mode = resolve_wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    data = [
        [None if isinstance(m[h], float) and math.isnan(m[h]) else m[h] for h in header]
        for m in flat
    ]
    run = wandb.init(
        project=f"topk-dice-{comparison.dataset}",
        group=comparison.group,
        job_type="comparison",
        name=f"{comparison.group}-{comparison.name}",
        dir=str(comparison.out_dir),
        mode=mode,
        config={
            "seeds": comparison.seeds,
            "args": comparison.user_args,
            "rows": [e.label for e in comparison.entries],
            "test_ckpt": comparison.test_ckpt,
        },
    )
    try:
        payload: dict[str, object] = {
            f"{comparison.name}/table": wandb.Table(columns=list(header), data=data)
        }
        for kind, path in paths.items():
            if path.suffix == ".png":
                payload[f"{comparison.name}/{kind}"] = wandb.Image(str(path))
        run.log(payload)
        return str(getattr(run.settings, "sync_dir", "") or comparison.out_dir)
    finally:
        run.finish()
