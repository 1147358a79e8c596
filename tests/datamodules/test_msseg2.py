"""MSSEG-2 on a fake release: two FLAIR channels, binary new-lesion label, splits."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamodules import MSSEG2DataModule
from tests.datamodules.conftest import expected_dhw, write_msseg2_case


def test_channels_label_normalisation(tmp_path) -> None:
    rng = np.random.default_rng(8)
    raw = tmp_path / "raw"
    cases = {c: write_msseg2_case(raw, c, rng) for c in ("013", "015", "016")}
    m = MSSEG2DataModule(
        data_dir=str(tmp_path / "h5"),
        raw_dir=str(raw),
        train_cases=["013"],
        val_cases=["015"],
        test_cases=["016"],
        progress=False,
    )
    assert m.class_names == ["background", "new_lesion"] and m.in_channels == 2
    m.prepare_data()
    with h5py.File(tmp_path / "h5" / "train.h5", "r") as f:
        img, lab = f["013"]["image"][...], f["013"]["label"][...]
    t1, t2, gt = cases["013"]
    np.testing.assert_array_equal(lab, expected_dhw(gt))
    for c, raw_c in enumerate((t1, t2)):
        lo, hi = np.percentile(raw_c, [0.5, 99.5])
        x = np.clip(raw_c, lo, hi)
        np.testing.assert_allclose(img[c], expected_dhw((x - x.mean()) / x.std()), atol=1e-4)


def test_default_split_is_seeded_and_disjoint(tmp_path) -> None:
    rng = np.random.default_rng(9)
    names = [f"{i:03d}" for i in range(1, 11)]
    for c in names:
        write_msseg2_case(tmp_path / "raw", c, rng)
    kw = {"data_dir": str(tmp_path / "h5"), "raw_dir": str(tmp_path / "raw"), "progress": False}
    a = MSSEG2DataModule(**kw).split_cases(names)
    assert a == MSSEG2DataModule(**kw).split_cases(names)  # deterministic
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (7, 1, 2)  # 20 % / 10 % of 10
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    b = MSSEG2DataModule(seed=99, **kw).split_cases(names)
    assert b != a
    m = MSSEG2DataModule(**kw)
    m.prepare_data()
    with h5py.File(tmp_path / "h5" / "test.h5", "r") as f:
        assert sorted(f.keys()) == a["test"]
    explicit = MSSEG2DataModule(test_cases=["001", "002"], **kw).split_cases(names)
    assert explicit["test"] == ["001", "002"] and not {"001", "002"} & set(explicit["train"])


def test_missing_flair(tmp_path) -> None:
    rng = np.random.default_rng(10)
    for c in ("013", "015", "016"):
        write_msseg2_case(tmp_path / "raw", c, rng)
    (tmp_path / "raw" / "015" / "flair_time02_on_middle_space.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"Case 015: .*flair_time02_on_middle_space"):
        MSSEG2DataModule(
            data_dir=str(tmp_path / "h5"),
            raw_dir=str(tmp_path / "raw"),
            train_cases=["013"],
            val_cases=["015"],
            test_cases=["016"],
            progress=False,
        ).prepare_data()
