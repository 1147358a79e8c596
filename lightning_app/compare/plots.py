"""PNG figures of a comparison (matplotlib, Agg backend: no display needed).

- :func:`plot_columns`: one group of bars per table column (per-class Dice, mDice, ...), one bar
  per row (loss or K); bar = mean over seeds, error bar = standard deviation over seeds (with
  two seeds or more), dots = the individual seeds.
- :func:`plot_curves`: ``val/dice/mean`` (percent) against the epoch (counted from 1, whole
  epochs only), one line per row (mean over seeds) with a band from the lowest to the highest
  seed.
- :func:`plot_against`: one column (mDice) against a numeric parameter (K), mean and standard
  deviation over seeds.
- :func:`plot_differences`: each row's difference to the reference with its 95% CI.
- :func:`plot_rank_blobs`: each row's bootstrap rank distribution (challengeR's blob plot: a
  disc per rank, area = probability).
- :func:`read_val_curve`: a run's validation curve from its CSV logger files.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lightning_app.compare.columns import TableRow  # noqa: E402

__all__ = [
    "curves_figure",
    "plot_against",
    "plot_columns",
    "plot_curves",
    "plot_differences",
    "plot_rank_blobs",
    "read_val_curve",
]

_VERSION = re.compile(r"version_(\d+)$")


def read_val_curve(run_dir: str | Path, key: str = "val/dice/mean") -> dict[int, float]:
    """``{epoch: value}`` of ``key`` from ``<run_dir>/csv/version_*/metrics.csv``.

    Versions are read in numeric order (a resumed fit writes the next version), so a later
    version's value for an epoch replaces an earlier one. Rows without ``key`` (training steps,
    the test run) are ignored.

    Returns:
        an empty dict when the run has no CSV logs or never logged ``key``.

    Raises:
        ValueError: a metrics.csv holds ``key`` but no ``epoch`` column.
    """
    versions = []
    for path in Path(run_dir).glob("csv/version_*/metrics.csv"):
        match = _VERSION.search(path.parent.name)
        if match:
            versions.append((int(match.group(1)), path))
    curve: dict[int, float] = {}
    for _, path in sorted(versions):
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if key not in fields:
                continue
            if "epoch" not in fields:
                raise ValueError(f"Expected an `epoch` column in {path}, but got {fields}")
            for row in reader:
                value, epoch = row.get(key, ""), row.get("epoch", "")
                if value not in ("", None) and epoch not in ("", None):
                    curve[int(float(epoch))] = float(value)
    return dict(sorted(curve.items()))


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_columns(
    rows: Sequence[TableRow], columns: Sequence[str], path: str | Path, title: str
) -> Path:
    """Grouped bars of ``columns`` (percent), one bar per row; writes ``path`` (PNG).

    Raises:
        ValueError: no rows or no columns.
    """
    if not rows or not columns:
        raise ValueError("Expected at least one row and one column to plot, but got none")
    n_rows = len(rows)
    x = np.arange(len(columns))
    width = 0.8 / n_rows
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) * max(1, n_rows / 3)), 4.2))
    for i, (row, color) in enumerate(zip(rows, _colors(n_rows), strict=True)):
        offset = x - 0.4 + width * (i + 0.5)
        means = [row.mean[c] for c in columns]
        stds = [row.std[c] for c in columns]
        yerr = None if all(math.isnan(s) for s in stds) else np.nan_to_num(stds)
        ax.bar(offset, means, width, yerr=yerr, capsize=2, color=color, label=row.label)
        for j, c in enumerate(columns):
            seeds = row.per_seed[c]
            if len(seeds) > 1:
                ax.scatter([offset[j]] * len(seeds), seeds, s=6, color="black", zorder=3)
    ax.set_xticks(x, columns, rotation=30, ha="right")
    ax.set_ylabel("Dice (%)" if all("IoU" not in c for c in columns) else "score (%)")
    finite = [v for r in rows for c in columns for v in r.per_seed[c] if not math.isnan(v)]
    ax.set_ylim(0, max(100.0, max(finite, default=0.0) + 2))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(n_rows, 3), loc="lower right")
    return _save(fig, path)


def curves_figure(
    curves: Mapping[str, Sequence[Mapping[int, float]]],
    title: str,
    ylabel: str = "validation mDice (%)",
) -> plt.Figure | None:
    """The figure of :func:`plot_curves` (not saved, not closed), or ``None`` when no run
    logged a value. Epoch ``e`` (Lightning's 0-based index, the CSV's ``epoch`` column) is
    drawn at ``e + 1`` and a fraction ``v`` at ``100 * v``; the x ticks are whole epochs >= 1."""
    if not any(c for seeds in curves.values() for c in seeds):
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    last = 1
    for (label, seeds), color in zip(curves.items(), _colors(len(curves)), strict=True):
        epochs = sorted({e for c in seeds for e in c})
        if not epochs:
            continue
        values = [[100.0 * c[e] for c in seeds if e in c] for e in epochs]
        x = [e + 1 for e in epochs]
        last = max(last, x[-1])
        mean = [float(np.mean(v)) for v in values]
        ax.plot(x, mean, marker="o", ms=3, color=color, label=f"{label} (n={len(seeds)})")
        if len(seeds) > 1:
            ax.fill_between(
                x, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.2
            )
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_curves(
    curves: Mapping[str, Sequence[Mapping[int, float]]],
    path: str | Path,
    title: str,
    ylabel: str = "validation mDice (%)",
) -> Path | None:
    """Validation curves: ``curves[row label]`` = one ``{epoch: value}`` per seed (0-based
    epochs, values as fractions, as :func:`read_val_curve` gives them). Draws the mean over the
    seeds that logged each epoch and a min-max band, in percent against epochs counted from 1
    (:func:`curves_figure`); writes ``path`` (PNG).

    Returns:
        ``path``, or ``None`` (nothing written) when no run logged a value.
    """
    fig = curves_figure(curves, title, ylabel)
    return None if fig is None else _save(fig, path)


def plot_against(
    xs: Sequence[float],
    rows: Sequence[TableRow],
    column: str,
    path: str | Path,
    title: str,
    xlabel: str = "K (%)",
) -> Path:
    """``column`` (mean and std over seeds, percent) of each row against ``xs`` (same order),
    log-scaled x axis; writes ``path`` (PNG).

    Raises:
        ValueError: ``xs`` and ``rows`` differ in length, or are empty.
    """
    if len(xs) != len(rows) or not rows:
        raise ValueError(
            f"Expected one x value per row, but got {len(xs)} values for {len(rows)} rows"
        )
    order = np.argsort(xs)
    x = np.asarray(xs, dtype=float)[order]
    mean = np.asarray([rows[i].mean[column] for i in order])
    std = np.asarray([rows[i].std[column] for i in order])
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.errorbar(
        x, mean, yerr=None if np.isnan(std).all() else np.nan_to_num(std), marker="o", capsize=3
    )
    for i in order:
        seeds = rows[i].per_seed[column]
        if len(seeds) > 1:
            ax.scatter([xs[i]] * len(seeds), seeds, s=8, color="black", zorder=3)
    if (x > 0).all():
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{column} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_differences(stats_rows: Sequence[Mapping], path: str | Path, title: str) -> Path | None:
    """Forest plot of ``diff`` with ``[diff_ci_low, diff_ci_high]`` (Dice points) of every row
    of :func:`lightning_app.compare.statistics.compare_losses` that has one; a vertical line at 0.

    Returns:
        ``path``, or ``None`` (nothing written) when no row has a difference.
    """
    rows = [r for r in stats_rows if not math.isnan(r["diff"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    diff = np.array([r["diff"] for r in rows])
    low = np.array([r["diff_ci_low"] for r in rows])
    high = np.array([r["diff_ci_high"] for r in rows])
    ax.errorbar(diff, y, xerr=[diff - low, high - diff], fmt="o", capsize=3, color="black")
    ax.axvline(0.0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, [r["loss"] for r in rows])
    ax.set_xlabel("difference to the reference, Dice points (95% CI)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_rank_blobs(
    labels: Sequence[str], rank_probs: Sequence[Sequence[float]], path: str | Path, title: str
) -> Path:
    """Blob plot: for each row (x) a disc at each rank (y, 1 on top) with area proportional to
    the bootstrap probability of that rank, and the median rank marked.

    Raises:
        ValueError: no rows, or a probability row whose length is not the number of rows.
    """
    n = len(labels)
    probs = np.asarray(rank_probs, dtype=float)
    if n == 0 or probs.shape != (n, n):
        raise ValueError(f"Expected a {n} x {n} table of rank probabilities, got {probs.shape}")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * n + 1.5), 3.6))
    for i in range(n):
        ranks = np.arange(1, n + 1)
        keep = probs[i] > 0
        ax.scatter(
            np.full(keep.sum(), i), ranks[keep], s=600 * probs[i][keep], color="tab:blue",
            alpha=0.6,
        )  # fmt: skip
        median = int(np.searchsorted(np.cumsum(probs[i]), 0.5) + 1)
        ax.scatter([i], [median], marker="x", color="black", zorder=3)
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(1, n + 1))
    ax.set_ylim(n + 0.6, 0.4)
    ax.set_ylabel("rank (bootstrap)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)
