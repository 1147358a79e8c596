"""ACDC on a fake release: Info.cfg frames, labels, split file, normalisation, orientation."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from datamodules import ACDCDataModule
from tests.datamodules.conftest import write_acdc_patient, write_split

SPLIT = Path(__file__).resolve().parents[2] / "configs" / "splits" / "acdc.yaml"


def test_shipped_split_70_10_20_stratified() -> None:
    split = yaml.safe_load(SPLIT.read_text())
    tr, va, te = split["train"], split["val"], split["test"]
    assert (len(tr), len(va), len(te)) == (70, 10, 20)
    everything = tr + va + te
    assert sorted(everything) == [f"patient{i:03d}" for i in range(1, 101)]  # disjoint, complete
    for g in range(5):  # 20 consecutive patients per pathology group
        group = {f"patient{i:03d}" for i in range(g * 20 + 1, g * 20 + 21)}
        assert (len(group & set(tr)), len(group & set(va)), len(group & set(te))) == (14, 2, 4)


def test_frames_labels_split_and_normalisation(tmp_path) -> None:
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    cases = {}
    for i, (ed, es) in enumerate([(1, 12), (1, 9), (3, 14)], start=1):
        cases.update(write_acdc_patient(raw, f"patient{i:03d}", rng, ed=ed, es=es))
    split = write_split(tmp_path / "s.yaml", ["patient001"], ["patient002"], ["patient003"])
    m = ACDCDataModule(
        data_dir=str(tmp_path / "h5"), raw_dir=str(raw), split_file=str(split), progress=False
    )
    assert m.class_names == ["background", "RV", "MYO", "LV"] and m.in_channels == 1
    m.prepare_data()
    expected = {
        "train": ["patient001_frame01", "patient001_frame12"],
        "val": ["patient002_frame01", "patient002_frame09"],
        "test": ["patient003_frame03", "patient003_frame14"],
    }
    for s, names in expected.items():
        with h5py.File(tmp_path / "h5" / f"{s}.h5", "r") as f:
            assert sorted(f.keys()) == names
            for name in names:
                img, lab = cases[name]
                # diag affine (RAS already): stored = raw transposed (x, y, z) -> (z, y, x)
                np.testing.assert_array_equal(f[name]["label"][...], lab.transpose(2, 1, 0))
                lo, hi = np.percentile(img, [0.5, 99.5])
                x = np.clip(img, lo, hi)
                ref = ((x - x.mean()) / x.std()).transpose(2, 1, 0)
                np.testing.assert_allclose(f[name]["image"][0], ref, rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(f[name].attrs["spacing"], [8.0, 1.5, 1.5])


def test_oblique_short_axis_keeps_slice_stack(tmp_path) -> None:
    """An oblique stack whose slice normal is closest to A (not S): D stays the raw slice axis."""
    c, s = np.cos(np.deg2rad(60)), np.sin(np.deg2rad(60))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # third axis mostly along -y... then y
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.5, 1.5, 8.0])
    rng = np.random.default_rng(6)
    for i in (1, 2, 3):
        write_acdc_patient(tmp_path / "raw", f"patient{i:03d}", rng, affine=affine)
    split = write_split(tmp_path / "s.yaml", ["patient001"], ["patient002"], ["patient003"])
    m = ACDCDataModule(
        data_dir=str(tmp_path / "h5"),
        raw_dir=str(tmp_path / "raw"),
        split_file=str(split),
        progress=False,
    )
    m.prepare_data()
    with h5py.File(tmp_path / "h5" / "train.h5", "r") as f:
        assert f["patient001_frame01"]["label"].shape[0] == 4  # the 4 acquired slices
        np.testing.assert_allclose(f["patient001_frame01"].attrs["spacing"][0], 8.0)


def test_bad_info_cfg_and_split_file(tmp_path) -> None:
    rng = np.random.default_rng(7)
    for i in (1, 2, 3):
        write_acdc_patient(tmp_path / "raw", f"patient{i:03d}", rng)
    split = write_split(tmp_path / "s.yaml", ["patient001"], ["patient002"], ["patient003"])
    kw = {"data_dir": str(tmp_path / "h5"), "raw_dir": str(tmp_path / "raw"), "progress": False}
    info = tmp_path / "raw" / "training" / "patient002" / "Info.cfg"
    info.write_text("Group: NOR\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(info))}.*'ED: <frame>'"):
        ACDCDataModule(split_file=str(split), **kw).prepare_data()
    info.unlink()
    with pytest.raises(FileNotFoundError, match=r"patient002/Info\.cfg not found"):
        ACDCDataModule(split_file=str(split), **kw).prepare_data()
    with pytest.raises(FileNotFoundError, match=r"Split file .*nope\.yaml not found"):
        ACDCDataModule(split_file=str(tmp_path / "nope.yaml"), **kw).prepare_data()
    bad = write_split(tmp_path / "b.yaml", ["patient001"], ["patient009"], ["patient003"])
    with pytest.raises(FileNotFoundError, match=r"patient009.*not found"):
        ACDCDataModule(split_file=str(bad), **kw).prepare_data()
