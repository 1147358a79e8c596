"""The analysis of a comparison from its per-case CSV alone: ``comparison.md``,
``comparison.csv`` and the plots (``python -m lightning_app.compare analyze``; ``make compare``
and ``make sweep-k`` call :func:`analyze_rows` too).

Default reference (:func:`default_reference`): CE + topK-Dice when it is a row, else K=100
(the sweep), else the first row. Statistics: :mod:`lightning_app.compare.statistics`; power:
:mod:`lightning_app.compare.power`; the poster's columns: :mod:`lightning_app.compare.columns`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.compare.columns import TableRow, column_rows
from lightning_app.compare.markdown import analysis_markdown
from lightning_app.compare.per_case import dataset_columns, group_comparison_rows, infer_dataset
from lightning_app.compare.plots import (
    plot_against,
    plot_columns,
    plot_differences,
    plot_rank_blobs,
)
from lightning_app.compare.power import minimal_detectable_difference, pilot_components
from lightning_app.compare.statistics import CSV_COLUMNS, compare_losses, loss_scores

__all__ = ["Analysis", "analyze_rows", "default_reference", "read_rows", "write_csv"]

PROPOSAL = "CE + topK-Dice"
EXTRA_COLUMNS = (
    "seeds", "mdice_per_seed", "n_seeds", "diff_se", "diff_df", "conditional", "wilcoxon_n",
    "wilcoxon_method", "both_empty", "fp_on_empty", "missed",
)  # fmt: skip


def default_reference(labels: Sequence[str]) -> str | None:
    """CE + topK-Dice if present, else K=100 if present, else the first label."""
    for name in (PROPOSAL, "K=100"):
        if name in labels:
            return name
    return labels[0] if labels else None


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a per-case CSV as ``csv.DictReader`` gives them.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No per-case CSV {path} (written by make compare)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Mapping[str, object]]) -> Path:
    """CSV with ``header``; NaN as an empty cell, lists space-separated."""

    def cell(v: object) -> object:
        if isinstance(v, float) and math.isnan(v):
            return ""
        if isinstance(v, list):
            return " ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v)
        return v

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([cell(row.get(h, "")) for h in header])
    return path


@dataclass
class Analysis:
    """What :func:`analyze_rows` computed and wrote."""

    stats: list[dict]
    columns: list[TableRow]
    titles: list[str]
    reference: str | None
    mdd: float
    n_seeds: int
    n_units: int
    dropped_units: list[str]
    paths: dict[str, Path] = field(default_factory=dict)


def analyze_rows(
    rows: Sequence[Mapping[str, str]],
    out: Path,
    stem: str = "comparison",
    reference: str | None = None,
    dataset: str | None = None,
    title: str | None = None,
    sweep: bool | None = None,
    notes: Sequence[str] = (),
    plots: Mapping[str, Path] | None = None,
    seed: int = 0,
) -> Analysis:
    """Analyse the per-case ``rows`` and write ``<stem>.md``, ``<stem>.csv`` and the plots
    into ``out``.

    Args:
        reference: row name; ``None``: :func:`default_reference`.
        dataset: picks the poster's columns; ``None``: inferred from the class names.
        sweep: rows are ``K=<k>``: also plot mDice against K (``None``: when every row is).
        notes: Markdown lines appended under the plots (command, runs, ...).
        plots: more figures to show, ``{kind: path}`` (e.g. the validation curves).

    Raises:
        ValueError: malformed rows, or ``reference`` is not a row.
    """
    groups = group_comparison_rows(rows)
    labels = list(groups)
    reference = reference if reference is not None else default_reference(labels)
    if reference not in labels:
        raise ValueError(f"Expected `reference` to be one of {labels}, but got {reference!r}")
    first = next(iter(next(iter(groups.values())).values()))
    dataset = dataset or infer_dataset(first.classes)
    columns = dataset_columns(dataset, first.classes)
    stats = compare_losses(rows, reference, seed=seed)
    scores, dropped = loss_scores(groups)
    n_units = next(iter(scores.values())).x.shape[1]
    if n_units >= 2:
        comps = pilot_components(scores, reference)
        mdd = minimal_detectable_difference(comps, comps.n_seeds, comps.n_units)
    else:
        mdd = math.nan
    result = Analysis(
        stats=stats,
        columns=column_rows(groups, columns),
        titles=[c.title for c in columns],
        reference=reference,
        mdd=mdd,
        n_seeds=round(sum(len(v) for v in groups.values()) / len(groups)),
        n_units=n_units,
        dropped_units=dropped,
    )
    out.mkdir(parents=True, exist_ok=True)
    by_label = {r.label: r for r in result.columns}
    flat = []
    for row in stats:
        seed_row = by_label[row["loss"]]
        extra = {}
        for t in result.titles:
            extra[t], extra[f"{t} std"] = seed_row.mean[t], seed_row.std[t]
        flat.append({**row, **extra})
    header = [*CSV_COLUMNS, *EXTRA_COLUMNS]
    for t in result.titles:
        header += [t, f"{t} std"]
    paths = result.paths
    paths["csv"] = write_csv(out / f"{stem}.csv", header, flat)
    where = f"{len(labels)} rows, {result.n_seeds} seed(s), {n_units} cases"
    bar_titles = [t for t in result.titles if t != "mIoU" or dataset == "msseg2"]
    paths["per_class_plot"] = plot_columns(
        result.columns, bar_titles, out / f"{stem}_per_class_dice.png", f"Test scores ({where})"
    )
    diff_plot = plot_differences(
        stats, out / f"{stem}_differences.png", f"Row minus {reference} ({where})"
    )
    if diff_plot is not None:
        paths["diff_plot"] = diff_plot
    paths["rank_plot"] = plot_rank_blobs(
        labels, [r["rank_probs"] for r in stats], out / f"{stem}_ranks.png", "Bootstrap ranks"
    )
    if sweep is None:
        sweep = all(re.fullmatch(r"K=[0-9.eE+-]+", label) for label in labels)
    if sweep:
        ks = [float(label.split("=", 1)[1]) for label in labels]
        paths["k_plot"] = plot_against(
            ks, result.columns, "mDice", out / f"{stem}_mdice_vs_k.png", f"mDice vs K ({where})"
        )
    paths.update(plots or {})
    paths["markdown"] = out / f"{stem}.md"
    text = analysis_markdown(result, title or f"Loss comparison on {dataset}", notes)
    paths["markdown"].write_text(text)
    return result
