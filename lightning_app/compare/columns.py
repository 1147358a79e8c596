"""The poster's columns of a comparison table: per-run values, then mean and standard
deviation over seeds (percent), on the analysis cells of
:func:`lightning_app.compare.per_case.analysis_table`.

Per run: ``S[m, c] = mean over cases k of x[k, m, c]`` over the cells with a non-empty ground
truth, and the foreground mean ``S[m] = mean over classes of S[m, c]`` (TransUNet's order, cases
first; :func:`models.metrics.aggregate_case_metrics`). A cell: mean and sample standard
deviation (``ddof=1``) over seeds; NaN (printed as nothing) with a single seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_app.compare.per_case import CaseTable, Column, analysis_table, run_column_value

__all__ = ["TableRow", "column_rows"]


@dataclass
class TableRow:
    """Seed-level summary of one row: ``mean``, ``std``: ``{column title: percent}``;
    ``per_seed``: ``{column title: [percent per seed]}``."""

    label: str
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    per_seed: dict[str, list[float]]


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _nanstd(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def column_rows(
    groups: Mapping[str, Mapping[int, CaseTable]], columns: Sequence[Column]
) -> list[TableRow]:
    """One :class:`TableRow` per loss of ``groups`` (``{loss: {seed: CaseTable}}``), in order."""
    rows = []
    for label, runs in groups.items():
        tables = [analysis_table(t) for t in runs.values()]
        per_seed = {c.title: [100.0 * run_column_value(t, c) for t in tables] for c in columns}
        mean = {t: _nanmean(v) for t, v in per_seed.items()}
        std = {t: _nanstd(v) for t, v in per_seed.items()}
        rows.append(TableRow(label, list(runs), mean, std, per_seed))
    return rows
