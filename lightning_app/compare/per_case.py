"""Per-case tables: one run's ``per_case.csv``, the comparison's ``<name>_per_case.csv``, the
table columns, and the cells the comparison's statistics use.

``per_case.csv`` (written by ``python -m lightning_app test``, :mod:`lightning_app.reports`):
one row per case and foreground class, columns ``case`` (or ``case_id``), ``class`` (or
``class_name``), ``dice, iou, precision, recall`` (fractions; empty / ``nan`` = undefined),
optional ``hd95``, ``gt_empty``, ``pred_empty``; rows of ``background``, ``mean``, ``all`` are
skipped. The comparison's per-case CSV adds ``loss, key, seed, run, fold`` in front
(:data:`COMPARISON_PER_CASE_COLUMNS`; ``fold`` empty without cross-validation). The rows of one
(loss, seed) form one case set: with folds, the held-out cases of all its folds, each once.

Analysis cells (:func:`analysis_table`): the (case, class) cells whose ground truth is not
empty (``gt_empty`` false), the same for every run since the runs share the test set (MONAI's
``DiceMetric(ignore_empty=True)`` keeps the same cells). On them Dice, IoU and recall are always
defined; precision is undefined only for a missed structure and is scored 0 there, as the
``transunet`` protocol scores it. Cells with an empty ground truth are counted, not averaged
(:func:`empty_counts`): absent-and-empty, and false positives.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lightning_app.reports import DEFAULT_LAYOUT, POSTER_LAYOUTS
from models.metrics import aggregate_case_metrics

__all__ = [
    "COMPARISON_PER_CASE_COLUMNS",
    "PER_CASE_METRICS",
    "POSTER_COLUMNS",
    "CaseTable",
    "Column",
    "analysis_table",
    "case_table_from_rows",
    "dataset_columns",
    "empty_counts",
    "group_comparison_rows",
    "gt_present",
    "infer_dataset",
    "per_case_rows",
    "read_per_case_csv",
    "run_column_value",
    "unit_of",
]

#: Metric columns of ``per_case.csv`` (``hd95`` is optional).
PER_CASE_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95")
FLAGS: tuple[str, ...] = ("gt_empty", "pred_empty")
#: Columns of the comparison's ``<name>_per_case.csv``.
COMPARISON_PER_CASE_COLUMNS: tuple[str, ...] = (
    "loss",
    "key",
    "seed",
    "run",
    "fold",
    "case",
    "class",
    *PER_CASE_METRICS,
    *FLAGS,
)
_REQUIRED_METRICS = ("dice", "iou", "precision", "recall")
_CASE_COLUMNS = ("case", "case_id")
_CLASS_COLUMNS = ("class", "class_name")
_SKIPPED_CLASSES = {"background", "mean", "all"}
_KEY = re.compile(r"[^a-z0-9]+")
_ACDC_FRAME = re.compile(r"^(patient\d+)_frame\d+$")


def _norm(name: str) -> str:
    """``"Kidney left"``/``"left_kidney"`` style names compared case- and separator-blind."""
    return _KEY.sub("", name.lower())


def unit_of(case: str) -> str:
    """The statistical unit of a test case: the patient for an ACDC frame
    (``patient101_frame01`` -> ``patient101``, its ED and ES frames are averaged), else the case."""
    match = _ACDC_FRAME.match(case)
    return match.group(1) if match else case


@dataclass(frozen=True)
class Column:
    """One table column: ``title`` (as in the poster), ``metric`` (``dice``, ``iou``,
    ``precision``, ``recall``) and ``cls`` (a class name, or ``None`` for the foreground mean)."""

    title: str
    metric: str
    cls: str | None = None


def _poster_columns() -> dict[str, tuple[Column, ...]]:
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
        cases: ``n`` case identifiers, in file order. classes: ``m`` foreground class names.
        values: ``{metric: float64 (n, m)}``, NaN where undefined or absent from the file.
        flags: ``{"gt_empty" | "pred_empty": float64 (n, m)}``: 1 true, 0 false, NaN unknown.
        path: where the rows came from (for messages).
    """

    cases: tuple[str, ...]
    classes: tuple[str, ...]
    values: dict[str, np.ndarray]
    path: Path | str | None = None
    flags: dict[str, np.ndarray] | None = None

    def class_index(self, name: str) -> int:
        """Index of class ``name`` (case- and separator-blind).

        Raises:
            ValueError: no such class in the table.
        """
        wanted = _norm(name)
        for i, cls in enumerate(self.classes):
            if _norm(cls) == wanted:
                return i
        raise ValueError(
            f"Expected class {name!r} in {self.path or 'the per-case table'}, "
            f"but it has only {list(self.classes)}"
        )

    def flag(self, name: str) -> np.ndarray:
        """``flags[name]``, all NaN when the file had no such column."""
        shape = (len(self.cases), len(self.classes))
        return (self.flags or {}).get(name, np.full(shape, np.nan))


def _parse_float(text: str, where: str) -> float:
    text = text.strip()
    if text == "" or text.lower() in ("nan", "none", "null"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"Expected a number or empty cell in {where}, but got {text!r}") from None


def _parse_flag(text: str, where: str) -> float:
    text = text.strip().lower()
    if text in ("", "nan"):
        return math.nan
    if text in ("true", "1", "1.0"):
        return 1.0
    if text in ("false", "0", "0.0"):
        return 0.0
    raise ValueError(f"Expected True, False or an empty cell in {where}, but got {text!r}")


def _pick(header: Sequence[str], names: Sequence[str], where: str) -> str:
    for name in names:
        if name in header:
            return name
    raise ValueError(
        f"Expected a column named {' or '.join(names)} in {where}, but the header is "
        f"{list(header)} (expected layout: one row per case and class with columns case, class, "
        "dice, iou, precision, recall[, hd95, gt_empty, pred_empty])"
    )


def case_table_from_rows(
    rows: Iterable[tuple[int, Mapping[str, str]]], header: Sequence[str], where: str
) -> CaseTable:
    """A :class:`CaseTable` from ``(line number, csv row)`` pairs with columns ``header``.

    Raises:
        ValueError: a required column is missing, a cell is not a number, a (case, class)
            pair appears twice, or there is no foreground row.
    """
    case_col = _pick(header, _CASE_COLUMNS, where)
    class_col = _pick(header, _CLASS_COLUMNS, where)
    for metric in _REQUIRED_METRICS:
        _pick(header, (metric,), where)
    metrics = [m for m in PER_CASE_METRICS if m in header]
    flags = [f for f in FLAGS if f in header]
    cases: dict[str, int] = {}
    classes: dict[str, int] = {}
    cells: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    for line, row in rows:
        case, cls = (row.get(case_col) or "").strip(), (row.get(class_col) or "").strip()
        if not case or not cls:
            raise ValueError(f"Expected a case and a class in {where} line {line}, got {row}")
        if cls.lower() in _SKIPPED_CLASSES:
            continue
        k = cases.setdefault(case, len(cases))
        c = classes.setdefault(cls, len(classes))
        if (k, c) in cells:
            raise ValueError(f"Duplicate row for case {case!r}, class {cls!r} in {where}")
        at = f"{where} line {line} column"
        cells[(k, c)] = (
            [_parse_float(row.get(m) or "", f"{at} {m}") for m in metrics],
            [_parse_flag(row.get(f) or "", f"{at} {f}") for f in flags],
        )
    if not cells:
        raise ValueError(f"Expected at least one foreground row in {where}, but found none")
    shape = (len(cases), len(classes))
    values = {m: np.full(shape, np.nan) for m in metrics}
    flag_values = {f: np.full(shape, np.nan) for f in flags}
    for (k, c), (metric_values, flag_row) in cells.items():
        for m, v in zip(metrics, metric_values, strict=True):
            values[m][k, c] = v
        for f, v in zip(flags, flag_row, strict=True):
            flag_values[f][k, c] = v
    return CaseTable(tuple(cases), tuple(classes), values, where, flag_values)


def read_per_case_csv(path: str | Path) -> CaseTable:
    """Read one run's ``per_case.csv`` (layout in the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: see :func:`case_table_from_rows`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No per-case metrics file {path} (written by the test run)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        table = case_table_from_rows(enumerate(reader, start=2), header, str(path))
    return replace(table, path=path)


def per_case_rows(
    loss: str, key: str, seed: int, run: str, table: CaseTable, fold: int | None = None
) -> list[dict]:
    """One run's rows of the comparison's per-case CSV (:data:`COMPARISON_PER_CASE_COLUMNS`;
    full float precision, empty where undefined or unknown)."""
    out = []
    for k, case in enumerate(table.cases):
        for c, cls in enumerate(table.classes):
            row: dict[str, object] = {"loss": loss, "key": key, "seed": seed, "run": run}
            row["fold"] = "" if fold is None else fold
            row.update({"case": case, "class": cls})
            for m in PER_CASE_METRICS:
                v = table.values[m][k, c] if m in table.values else math.nan
                row[m] = "" if math.isnan(v) else repr(float(v))
            for f in FLAGS:
                v = table.flag(f)[k, c]
                row[f] = "" if math.isnan(v) else str(bool(v))
            out.append(row)
    return out


def group_comparison_rows(
    rows: Iterable[Mapping[str, str]], where: str = "the per-case rows"
) -> dict[str, dict[int, CaseTable]]:
    """``{loss: {seed: CaseTable}}`` from the comparison's per-case rows (as ``csv.DictReader``
    gives them), losses in order of first appearance, seeds sorted; the rows of all folds of a
    (loss, seed) form one table (a ``fold`` column names each case's fold).

    Raises:
        ValueError: no rows, a missing ``loss``/``seed`` column or value, a seed that is not an
            integer, a case tested by two folds of one seed, or a table error
            (:func:`case_table_from_rows`).
    """
    groups: dict[str, dict[int, list[tuple[int, Mapping[str, str]]]]] = {}
    fold_of: dict[tuple[str, int, str], str] = {}
    header: list[str] | None = None
    for line, row in enumerate(rows, start=2):
        if header is None:
            header = [h.strip() for h in row]
            for col in ("loss", "seed"):
                _pick(header, (col,), where)
        loss, seed_text = (row.get("loss") or "").strip(), (row.get("seed") or "").strip()
        if not loss or not seed_text:
            raise ValueError(f"Expected a loss and a seed in {where} line {line}, got {row}")
        try:
            seed = int(float(seed_text))
        except ValueError:
            raise ValueError(
                f"Expected an integer seed in {where} line {line}, but got {seed_text!r}"
            ) from None
        fold = (row.get("fold") or "").strip()
        case = (row.get("case") or row.get("case_id") or "").strip()
        first = fold_of.setdefault((loss, seed, case), fold)
        if first != fold:
            raise ValueError(
                f"Case {case!r} is tested by folds {first} and {fold} of {loss!r}, seed {seed} "
                f"in {where} (line {line}); each case must be tested once, by the fold that "
                "held it out (--data.test_split=held_out)"
            )
        groups.setdefault(loss, {}).setdefault(seed, []).append((line, row))
    if header is None:
        raise ValueError(f"Expected at least one row in {where}, but found none")
    return {
        loss: {
            seed: case_table_from_rows(lines, header, f"{where} ({loss}, seed {seed})")
            for seed, lines in sorted(by_seed.items())
        }
        for loss, by_seed in groups.items()
    }


def gt_present(table: CaseTable) -> np.ndarray:
    """bool (n, m): the ground truth of the cell is not empty. From ``gt_empty`` when the file
    has it, else inferred from recall (undefined exactly when the ground truth is empty under
    the default protocol; under ``transunet`` every cell then counts as present)."""
    gt_empty = table.flag("gt_empty")
    inferred = np.isnan(table.values["recall"])
    return np.where(np.isnan(gt_empty), ~inferred, gt_empty == 0)


def analysis_table(table: CaseTable) -> CaseTable:
    """``table`` restricted to the analysis cells (module docstring): cells with an empty ground
    truth become NaN; an undefined metric on the other cells (a missed structure) becomes 0.
    ``hd95`` is left as it is."""
    present = gt_present(table)
    values = {}
    for name, arr in table.values.items():
        if name == "hd95":
            values[name] = arr.copy()
            continue
        values[name] = np.where(present, np.nan_to_num(arr, nan=0.0), np.nan)
    return replace(table, values=values)


def empty_counts(table: CaseTable) -> dict[str, int]:
    """Cells with an empty ground truth or prediction: ``both_empty`` (absent-and-empty),
    ``fp_on_empty`` (a prediction where the ground truth is empty), ``missed`` (an empty
    prediction where it is not). Unknown flags (no column) count as false."""
    gt = table.flag("gt_empty") == 1
    pred = table.flag("pred_empty") == 1
    return {
        "both_empty": int((gt & pred).sum()),
        "fp_on_empty": int((gt & (table.flag("pred_empty") == 0)).sum()),
        "missed": int(((table.flag("gt_empty") == 0) & pred).sum()),
    }


def dataset_columns(dataset: str, classes: Sequence[str]) -> tuple[Column, ...]:
    """The table's columns: the poster's for synapse / acdc / msseg2, else mDice, mIoU and the
    Dice of every class in ``classes`` order."""
    if dataset in POSTER_COLUMNS:
        return POSTER_COLUMNS[dataset]
    means = tuple(Column(title, metric) for title, metric in DEFAULT_LAYOUT.means)
    return (*means, *(Column(str(c), "dice", str(c)) for c in classes))


def infer_dataset(classes: Sequence[str]) -> str:
    """The poster dataset whose class names are exactly ``classes`` (any order), else
    ``"other"`` (the default layout)."""
    names = {_norm(c) for c in classes}
    for dataset, layout in POSTER_LAYOUTS.items():
        if layout.classes and names == {_norm(cls) for _, cls in layout.classes}:
            return dataset
    if names == {"lesion"} or names == {"newlesion"} or names == {"newlesions"}:
        return "msseg2"
    return "other"


def run_column_value(table: CaseTable, column: Column) -> float:
    """The value (fraction) of ``column`` for one run: the nanmean over cases of the class's
    metric, or the foreground mean (nanmean over classes of those per-class means)."""
    per_class, mean = aggregate_case_metrics(
        [{column.metric: table.values[column.metric][k]} for k in range(len(table.cases))]
    )
    if column.cls is None:
        return mean[column.metric]
    return float(per_class[column.metric][table.class_index(column.cls)])
