"""nnU-Net v2 folds (datamodules.nnunet_splits) against nnunetv2's generate_crossval_split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nnunetv2.utilities.crossval_split import generate_crossval_split

from datamodules.nnunet_layout import DatasetError
from datamodules.nnunet_splits import default_splits, fold_cases, read_splits_file


@pytest.mark.parametrize("n", [5, 6, 7, 12, 30, 31])
def test_default_splits_match_nnunetv2(n: int) -> None:
    ids = [f"pat_{i}" for i in range(n)]  # plain string order: pat_10 before pat_2
    ref = generate_crossval_split(sorted(ids), seed=12345, n_splits=5)
    ours = default_splits(ids)
    assert ours == [
        {"train": [str(x) for x in f["train"]], "val": [str(x) for x in f["val"]]} for f in ref
    ]


def test_every_case_validated_once() -> None:
    ids = [f"c{i:02d}" for i in range(23)]
    vals = [c for f in default_splits(ids) for c in f["val"]]
    assert sorted(vals) == ids


def test_fold_all_and_bad_fold() -> None:
    ids = ["b", "a", "c", "d", "e"]
    assert fold_cases(ids, "all") == (["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e"])
    with pytest.raises(DatasetError, match="`fold`"):
        fold_cases(ids, 5)
    with pytest.raises(DatasetError, match="at least 5"):
        default_splits(["a", "b"])


def test_splits_file(tmp_path: Path) -> None:
    path = tmp_path / "splits_final.json"
    path.write_text(
        json.dumps([{"train": ["a", "b"], "val": ["c"]}, {"train": ["c"], "val": ["a", "b"]}])
    )
    splits = read_splits_file(path, ["a", "b", "c"])
    assert fold_cases(["a", "b", "c"], 1, splits) == (["c"], ["a", "b"])
    with pytest.raises(DatasetError, match=r"not training cases"):
        read_splits_file(path, ["a", "b"])
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(DatasetError, match="list of"):
        read_splits_file(path, ["a"])
