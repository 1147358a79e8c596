"""Cross-validation folds as nnU-Net v2 makes them.

Default: the 5-fold split of nnU-Net v2's ``generate_crossval_split(ids, seed=12345,
n_splits=5)`` on the identifiers in plain string order (``pat_10`` before ``pat_7``): the
indices 0..n-1 are shuffled by ``numpy.random.RandomState(seed).shuffle``; fold k validates on
the k-th consecutive chunk (the first ``n % 5`` chunks one longer), each list sorted by index.
A ``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``) overrides it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.nnunet_layout import DatasetError

__all__ = ["default_splits", "fold_cases", "read_splits_file"]


def default_splits(
    identifiers: Sequence[str], seed: int = 12345, n_splits: int = 5
) -> list[dict[str, list[str]]]:
    """nnU-Net v2's default folds of ``identifiers`` (see the module docstring)."""
    ids = sorted(identifiers)
    n = len(ids)
    if n < n_splits:
        raise DatasetError(
            f"{n_splits}-fold cross-validation needs at least {n_splits} cases, got {n}"
        )
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_splits, n // n_splits)
    sizes[: n % n_splits] += 1
    splits, start = [], 0
    for size in sizes:
        val = np.zeros(n, dtype=bool)
        val[order[start : start + size]] = True
        start += size
        splits.append(
            {
                "train": [ids[i] for i in np.flatnonzero(~val)],
                "val": [ids[i] for i in np.flatnonzero(val)],
            }
        )
    return splits


def read_splits_file(path: str | Path, identifiers: Sequence[str]) -> list[dict[str, list[str]]]:
    """Read and check a ``splits_final.json`` against the training identifiers.

    Raises:
        DatasetError: unreadable file, wrong structure, or an id that is not a training case.
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Cannot read splits file {path} ({exc})") from exc
    if not isinstance(splits, list) or not splits:
        raise DatasetError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} folds")
    known = set(identifiers)
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            raise DatasetError(f"{path}: fold {k} must hold `train` and `val` lists")
        unknown = sorted({str(c) for c in (*fold["train"], *fold["val"])} - known)
        if unknown:
            raise DatasetError(
                f"{path}: fold {k} names cases {unknown[:5]} that are not training cases"
            )
    return [
        {"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in splits
    ]


def fold_cases(
    identifiers: Sequence[str], fold: int | str, splits: list[dict[str, list[str]]] | None = None
) -> tuple[list[str], list[str]]:
    """``(train ids, val ids)`` of ``fold`` (an index, or ``"all"``: every case in both).

    Raises:
        DatasetError: a fold index outside the splits.
    """
    if fold == "all":
        ids = sorted(identifiers)
        return ids, list(ids)
    splits = default_splits(identifiers) if splits is None else splits
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(splits):
        raise DatasetError(
            f"Expected argument `fold` to be 0..{len(splits) - 1} or 'all', got {fold!r}"
        )
    return list(splits[fold]["train"]), list(splits[fold]["val"])
