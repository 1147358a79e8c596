"""Tables and paired tests for loss comparisons, from the per-case CSVs of finished test runs.

Input (one file per run, written by ``python -m lightning_app test``, see
:mod:`lightning_app.reports`): ``per_case.csv`` with one row per case and foreground class and
these columns (any order; others, such as ``index``, ``label``, ``gt_empty``, are ignored)::

    case       case identifier (e.g. case0001)            -- also accepted: case_id
    class      class name (e.g. liver)                    -- also accepted: class_name
    dice, iou, precision, recall   fractions in [0, 1]; empty / nan = undefined (NaN)
    hd95       optional (mm, or voxels under the transunet protocol)

Rows whose class is ``background`` or an aggregate (``mean``, ``all``) are skipped. Values are
fractions; the tables print them in percent, as the poster does.

Reductions (per run, then over seeds):

- per-class score of one run: ``S[m, c] = nanmean over cases k of x[k, m, c]``;
  foreground mean ``S[m] = nanmean over classes c of S[m, c]`` (TransUNet's order, cases first;
  :func:`models.metrics.aggregate_case_metrics` does it, so the table agrees with the run's own
  ``summary.md``);
- a table cell: mean and sample standard deviation (``ddof=1``) of the per-run values over the
  seeds; the standard deviation is NaN (printed as nothing) with a single seed.

Paired test against a reference row (:func:`wilcoxon_vs_reference`). The pair unit is one
``(seed, case)``: ``d(seed, case) = nanmean over classes of dice[case, class]`` (the per-case
foreground-mean Dice) for the row and for the reference trained with the same seed and tested on
the same case; pairs where either side is NaN (no foreground in the case and the prediction) are
dropped. The p-value is ``scipy.stats.wilcoxon(row, reference)`` with scipy's defaults
(two-sided, ``zero_method="wilcox"``: zero differences are discarded; exact distribution for
small samples). Why this unit: seeds alone give 1-5 pairs (no test can reach significance) and
cases alone would ignore the seed-to-seed variation; pairing by (seed, case) uses every test
prediction while keeping each pair's two members identical in everything but the loss. The pairs
are not independent (cases share a trained network per seed, seeds share cases), so read the
p-value as a screening statistic, not a confirmatory test.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from lightning_app.reports import DEFAULT_LAYOUT, POSTER_LAYOUTS
from models.metrics import aggregate_case_metrics

__all__ = [
    "PER_CASE_METRICS",
    "POSTER_COLUMNS",
    "CaseTable",
    "Column",
    "RunScores",
    "TableRow",
    "as_mapping",
    "best_columns",
    "case_mean_dice",
    "comparison_rows",
    "dataset_columns",
    "read_per_case_csv",
    "run_column_value",
    "wilcoxon_vs_reference",
]

#: Metric columns of ``per_case.csv`` (``hd95`` is optional).
PER_CASE_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95")
_REQUIRED_METRICS = ("dice", "iou", "precision", "recall")
_CASE_COLUMNS = ("case", "case_id")
_CLASS_COLUMNS = ("class", "class_name")
_SKIPPED_CLASSES = {"background", "mean", "all"}
_KEY = re.compile(r"[^a-z0-9]+")


def _norm(name: str) -> str:
    """``"Kidney left"``/``"left_kidney"`` style names compared case- and separator-blind."""
    return _KEY.sub("", name.lower())


@dataclass(frozen=True)
class Column:
    """One table column: ``title`` (as in the poster), ``metric`` (``dice``, ``iou``,
    ``precision``, ``recall``) and ``cls`` (a class name, or ``None`` for the foreground mean)."""

    title: str
    metric: str
    cls: str | None = None


def _poster_columns() -> dict[str, tuple[Column, ...]]:
    """The poster layouts of :mod:`lightning_app.reports` (the single source of the column
    titles and order) as :class:`Column` tuples."""
    out = {}
    for dataset, layout in POSTER_LAYOUTS.items():
        means = tuple(Column(title, metric) for title, metric in layout.means)
        classes = tuple(Column(title, "dice", cls) for title, cls in layout.classes or ())
        out[dataset] = (*means, *classes)
    return out


#: The poster's columns, in its order, with the datamodules' class names (from
#: ``lightning_app.reports.POSTER_LAYOUTS``).
POSTER_COLUMNS: dict[str, tuple[Column, ...]] = _poster_columns()


@dataclass(frozen=True)
class CaseTable:
    """Per-case metrics of one run.

    Attributes:
        cases: ``n`` case identifiers, in file order.
        classes: ``m`` foreground class names, in file order.
        values: ``{metric: float64 (n, m)}``, NaN where undefined or absent from the file.
        path: the file read.
    """

    cases: tuple[str, ...]
    classes: tuple[str, ...]
    values: dict[str, np.ndarray]
    path: Path | None = None

    def class_index(self, name: str) -> int:
        """Index of class ``name`` (case- and separator-blind).

        Raises:
            ValueError: no such class in the file.
        """
        wanted = _norm(name)
        for i, cls in enumerate(self.classes):
            if _norm(cls) == wanted:
                return i
        raise ValueError(
            f"Expected class {name!r} in {self.path or 'the per-case table'}, "
            f"but it has only {list(self.classes)}"
        )


def _parse_float(text: str, where: str) -> float:
    text = text.strip()
    if text == "" or text.lower() in ("nan", "none", "null"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"Expected a number or empty cell in {where}, but got {text!r}") from None


def _pick(header: Sequence[str], names: Sequence[str], path: Path) -> str:
    for name in names:
        if name in header:
            return name
    raise ValueError(
        f"Expected a column named {' or '.join(names)} in {path}, but the header is {list(header)}"
        " (expected layout: one row per case and class with columns case, class, dice, iou,"
        " precision, recall[, hd95])"
    )


def read_per_case_csv(path: str | Path) -> CaseTable:
    """Read one run's ``per_case.csv`` (layout in the module docstring).

    Returns:
        the :class:`CaseTable`; a (case, class) pair missing from the file is NaN.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a required column is missing, a cell is not a number, a (case, class) pair
            appears twice, or the file has no foreground rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No per-case metrics file {path} (written by the test run)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        case_col = _pick(header, _CASE_COLUMNS, path)
        class_col = _pick(header, _CLASS_COLUMNS, path)
        for metric in _REQUIRED_METRICS:
            _pick(header, (metric,), path)
        metrics = [m for m in PER_CASE_METRICS if m in header]
        cases: dict[str, int] = {}
        classes: dict[str, int] = {}
        cells: dict[tuple[int, int], list[float]] = {}
        for line, row in enumerate(reader, start=2):
            case, cls = (row.get(case_col) or "").strip(), (row.get(class_col) or "").strip()
            if not case or not cls:
                raise ValueError(f"Expected a case and a class in {path} line {line}, got {row}")
            if cls.lower() in _SKIPPED_CLASSES:
                continue
            k = cases.setdefault(case, len(cases))
            c = classes.setdefault(cls, len(classes))
            if (k, c) in cells:
                raise ValueError(f"Duplicate row for case {case!r}, class {cls!r} in {path}")
            cells[(k, c)] = [
                _parse_float(row.get(m) or "", f"{path} line {line} column {m}") for m in metrics
            ]
    if not cells:
        raise ValueError(f"Expected at least one foreground row in {path}, but found none")
    values = {m: np.full((len(cases), len(classes)), np.nan) for m in metrics}
    for (k, c), row_values in cells.items():
        for m, v in zip(metrics, row_values, strict=True):
            values[m][k, c] = v
    return CaseTable(tuple(cases), tuple(classes), values, path)


def dataset_columns(dataset: str, classes: Sequence[str]) -> tuple[Column, ...]:
    """The table's columns: the poster's for synapse / acdc / msseg2, else mDice, mIoU and the
    Dice of every class in ``classes`` order."""
    if dataset in POSTER_COLUMNS:
        return POSTER_COLUMNS[dataset]
    means = tuple(Column(title, metric) for title, metric in DEFAULT_LAYOUT.means)
    return (*means, *(Column(str(c), "dice", str(c)) for c in classes))


@dataclass(frozen=True)
class RunScores:
    """One finished run: its row ``label`` (e.g. ``"CE + Dice"`` or ``"K=5"``), ``seed`` and
    per-case metrics."""

    label: str
    seed: int
    table: CaseTable
    run_dir: Path | None = None


def run_column_value(table: CaseTable, column: Column) -> float:
    """The value (fraction) of ``column`` for one run: the nanmean over cases of the class's
    metric, or the foreground mean (nanmean over classes of those per-class means)."""
    per_class, mean = aggregate_case_metrics(
        [{column.metric: table.values[column.metric][k]} for k in range(len(table.cases))]
    )
    if column.cls is None:
        return mean[column.metric]
    return float(per_class[column.metric][table.class_index(column.cls)])


def case_mean_dice(table: CaseTable) -> dict[str, float]:
    """``{case: nanmean over classes of dice[case, class]}`` (NaN if every class is NaN)."""
    out = {}
    for k, case in enumerate(table.cases):
        row = table.values["dice"][k]
        valid = ~np.isnan(row)
        out[case] = float(row[valid].mean()) if valid.any() else math.nan
    return out


def wilcoxon_vs_reference(
    runs: Sequence[RunScores], reference: Sequence[RunScores]
) -> tuple[float, int]:
    """Paired Wilcoxon signed-rank test of per-case foreground-mean Dice, pairs = (seed, case).

    ``x = [case_mean_dice(run)[case] for seeds in both, cases in both, both values finite]``,
    ``y`` likewise for the reference, and ``p = scipy.stats.wilcoxon(x, y).pvalue`` (two-sided).

    Returns:
        ``(p, n_pairs)``; ``(nan, 0)`` when no pair exists.

    Raises:
        ValueError: a seed appears twice among ``runs`` or among ``reference``.
    """
    by_seed = [_by_seed(runs), _by_seed(reference)]
    x, y = [], []
    for seed in sorted(set(by_seed[0]) & set(by_seed[1])):
        a, b = case_mean_dice(by_seed[0][seed].table), case_mean_dice(by_seed[1][seed].table)
        for case in a:
            if case in b and math.isfinite(a[case]) and math.isfinite(b[case]):
                x.append(a[case])
                y.append(b[case])
    if not x:
        return math.nan, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns for n < 10 (normal approx.) or ties
        p = float(wilcoxon(x, y).pvalue)
    return p, len(x)


def _by_seed(runs: Sequence[RunScores]) -> dict[int, RunScores]:
    out: dict[int, RunScores] = {}
    for run in runs:
        if run.seed in out:
            raise ValueError(
                f"Expected one run per seed for {run.label!r}, but seed {run.seed} repeats"
            )
        out[run.seed] = run
    return out


@dataclass
class TableRow:
    """One row of the comparison table.

    Attributes:
        label: row title. seeds: the seeds found. mean, std: ``{column title: percent}``
        (std NaN with one seed). per_seed: ``{column title: [percent per seed]}``.
        p_value, n_pairs: Wilcoxon against the reference row (NaN, 0 for the reference itself
        or when there is none). best: titles of the columns where this row has the best mean.
    """

    label: str
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    per_seed: dict[str, list[float]]
    p_value: float = math.nan
    n_pairs: int = 0
    is_reference: bool = False
    best: list[str] = field(default_factory=list)


def comparison_rows(
    runs: Sequence[RunScores],
    columns: Sequence[Column],
    labels: Sequence[str],
    reference: str | None = None,
) -> list[TableRow]:
    """Aggregate finished runs into table rows (percent), in ``labels`` order.

    Args:
        runs: every finished run (any order; several seeds per label).
        columns: the table's columns (:func:`dataset_columns`).
        labels: row titles, in table order; labels without runs are left out.
        reference: the row the others are tested against (``None``: no test).

    Returns:
        the rows, with ``best`` filled (:func:`best_columns`).
    """
    grouped: dict[str, list[RunScores]] = {}
    for run in runs:
        grouped.setdefault(run.label, []).append(run)
    rows = []
    for label in labels:
        group = sorted(grouped.get(label, []), key=lambda r: r.seed)
        if not group:
            continue
        per_seed = {
            col.title: [100.0 * run_column_value(r.table, col) for r in group] for col in columns
        }
        mean = {t: _nanmean(v) for t, v in per_seed.items()}
        std = {t: _nanstd(v) for t, v in per_seed.items()}
        row = TableRow(label, [r.seed for r in group], mean, std, per_seed)
        if reference is not None and label == reference:
            row.is_reference = True
        elif reference is not None and reference in grouped:
            row.p_value, row.n_pairs = wilcoxon_vs_reference(group, grouped[reference])
        rows.append(row)
    best = best_columns(rows, [c.title for c in columns])
    for row in rows:
        row.best = best[row.label]
    return rows


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _nanstd(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def best_columns(rows: Sequence[TableRow], titles: Sequence[str]) -> dict[str, list[str]]:
    """``{row label: [column titles where the row's mean is the highest]}`` (every metric here is
    higher-is-better; ties, compared after rounding to the printed 2 decimals, mark every tied
    row; NaN never wins)."""
    out: dict[str, list[str]] = {row.label: [] for row in rows}
    for title in titles:
        values = [round(row.mean[title], 2) for row in rows if not math.isnan(row.mean[title])]
        if not values:
            continue
        top = max(values)
        for row in rows:
            if not math.isnan(row.mean[title]) and round(row.mean[title], 2) == top:
                out[row.label].append(title)
    return out


def as_mapping(row: TableRow) -> Mapping[str, object]:
    """A flat ``{csv column: value}`` view of one row (see :func:`comparison_rows`)."""
    out: dict[str, object] = {"loss": row.label, "seeds": " ".join(map(str, row.seeds))}
    for title in row.mean:
        out[title] = row.mean[title]
        out[f"{title} std"] = row.std[title]
    out["wilcoxon p"] = row.p_value
    out["wilcoxon pairs"] = row.n_pairs
    out["reference"] = row.is_reference
    out["best"] = ";".join(row.best)
    return out
