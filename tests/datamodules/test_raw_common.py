"""Behaviour shared by the raw-data datamodules (Synapse, ACDC, MSSEG-2), on fake raw releases:
the re-run no-op, the rebuild on change, atomic writes, every bad input, loaders."""

from __future__ import annotations

import json
import os
import re
import time

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.hdf5 import VolumeDataset
from datamodules.nifti import canonical_to_raw
from datamodules.synapse import _LUT as BTCV_LUT
from tests.datamodules.conftest import RAW_SHAPE, Fake, write_nifti

SPLITS = ("train", "val", "test")


def snapshot(fake: Fake) -> dict[str, tuple[int, int, str]]:
    out = {}
    for s in SPLITS:
        p = fake.data_dir / f"{s}.h5"
        st = p.stat()
        with h5py.File(p, "r") as f:
            out[s] = (st.st_mtime_ns, st.st_ino, str(f.attrs["fingerprint"]))
    return out


def assert_no_tmp(fake: Fake) -> None:
    assert not list(fake.data_dir.glob("*.tmp")), list(fake.data_dir.iterdir())


def test_layout_and_attributes(fake: Fake) -> None:
    dm = fake.dm()
    dm.prepare_data()
    for s in SPLITS:
        with h5py.File(fake.data_dir / f"{s}.h5", "r") as f:
            assert json.loads(f.attrs["class_names"])[0] == "background"
            assert json.loads(f.attrs["class_names"]) == dm.class_names
            assert len(json.loads(f.attrs["channel_names"])) == dm.in_channels
            assert int(f.attrs["format_version"]) == 2
            assert len(f.attrs["fingerprint"]) == 64
            for case in f:
                img, lab = f[case]["image"], f[case]["label"]
                assert img.dtype == np.float32 and lab.dtype == np.uint8
                c, d, h, w = img.shape
                assert (c, d, h, w) == (dm.in_channels, RAW_SHAPE[2], 32, 32)
                assert lab.shape == (d, h, w)
                assert img.chunks == (c, 1, h, w) and lab.chunks == (1, h, w)
                assert f[case].attrs["spacing"].shape == (3,)
                assert f[case].attrs["affine"].shape == (4, 4)
    with h5py.File(fake.data_dir / "train.h5", "r") as f:
        assert fake.case in f


def test_rerun_is_noop(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = fake.dm()
    dm.prepare_data()
    before = snapshot(fake)

    def boom(*args, **kwargs):
        raise AssertionError("a case was reloaded although nothing changed")

    monkeypatch.setattr(type(dm), "_load_case", boom)
    fake.dm().prepare_data()
    assert snapshot(fake) == before


def test_rebuild_on_changed_raw_file(fake: Fake) -> None:
    dm = fake.dm()
    dm.prepare_data()
    before = snapshot(fake)
    # rewrite the case's label with a new content (one more voxel of class 1)
    lab = np.asarray(nib.load(str(fake.label)).dataobj).copy()
    lab[:] = 0
    lab[0, 0, 0] = 1
    old_mtime = fake.label.stat().st_mtime_ns
    write_nifti(fake.label, lab, nib.load(str(fake.label)).affine)
    # a coarse file-system clock may keep the mtime: move it on explicitly
    os.utime(fake.label, ns=(old_mtime + 10**9, old_mtime + 10**9))
    fake.dm().prepare_data()
    after = snapshot(fake)
    assert after["train"][2] != before["train"][2]
    with h5py.File(fake.data_dir / "train.h5", "r") as f:
        assert int((f[fake.case]["label"][...] > 0).sum()) == 1


def test_rebuild_on_changed_settings(fake: Fake) -> None:
    fake.dm().prepare_data()
    before = snapshot(fake)
    fake.dm(compression="lzf").prepare_data()
    after = snapshot(fake)
    assert all(after[s][2] != before[s][2] for s in SPLITS)
    with h5py.File(fake.data_dir / "train.h5", "r") as f:
        assert f[fake.case]["image"].compression == "lzf"


def test_missing_raw_dir(fake: Fake) -> None:
    missing = fake.raw_dir.parent / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"raw_dir .*nowhere does not exist(.|\n)*Expected"):
        fake.dm(raw_dir=str(missing)).prepare_data()


def test_image_without_label(fake: Fake) -> None:
    fake.label.unlink()
    with pytest.raises(FileNotFoundError, match=rf"no label(.|\n)*{re.escape(fake.label.name)}"):
        fake.dm().prepare_data()


def test_empty_split(fake: Fake) -> None:
    with pytest.raises(ValueError, match="'val' split is empty"):
        fake.dm(**fake.empty_val).prepare_data()


def _shape_mismatch(fake: Fake) -> None:
    write_nifti(fake.label, np.zeros((32, 30, 4), np.uint8), nib.load(str(fake.label)).affine)


def _affine_mismatch(fake: Fake) -> None:
    lab = np.asarray(nib.load(str(fake.label)).dataobj)
    write_nifti(fake.label, lab, np.diag([1.0, 1.0, 1.0, 1.0]))


def _label_out_of_set(fake: Fake) -> None:
    img = nib.load(str(fake.label))
    lab = np.asarray(img.dataobj).copy()
    lab[1, 1, 1] = fake.num_label_values + 3
    write_nifti(fake.label, lab, img.affine)


def _truncated(fake: Fake) -> None:
    data = fake.images[0].read_bytes()
    fake.images[0].write_bytes(data[: len(data) // 2])


def _nan(fake: Fake) -> None:
    img = nib.load(str(fake.images[0]))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 4, 1] = np.nan
    write_nifti(fake.images[0], data, img.affine)


BAD = {
    "shape": (_shape_mismatch, lambda f: rf"{f.case}.*shape"),
    "affine": (_affine_mismatch, lambda f: rf"{f.case}.*affine"),
    "labels": (_label_out_of_set, lambda f: rf"{f.case}.*{re.escape(f.label.name)}.*outside"),
    "truncated": (_truncated, lambda f: rf"{re.escape(f.images[0].name)}.*corrupt or truncated"),
    "nan": (_nan, lambda f: rf"{f.case}.*{re.escape(f.images[0].name)}.*NaN"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_keeps_previous_output(fake: Fake, kind: str) -> None:
    fake.dm().prepare_data()
    before = snapshot(fake)
    spoil, pattern = BAD[kind]
    time.sleep(0.01)
    spoil(fake)
    with pytest.raises(ValueError, match=pattern(fake)):
        fake.dm().prepare_data()
    assert snapshot(fake) == before  # earlier good output untouched
    assert_no_tmp(fake)
    dm = fake.dm()
    dm.setup("fit")
    assert len(dm.train_set) > 0


def test_interrupted_write_leaves_nothing_loadable(fake: Fake, monkeypatch) -> None:
    """A run killed mid-way (first run, no earlier output) leaves no .h5 that looks complete."""
    dm = fake.dm()
    calls = {"n": 0}
    original = type(dm)._load_case

    def interrupted(self, spec):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, spec)

    monkeypatch.setattr(type(dm), "_load_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert not list(fake.data_dir.glob("*.h5"))
    assert_no_tmp(fake)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        fake.dm().setup("fit")


def test_loaders_with_two_workers(fake: Fake) -> None:
    dm = fake.dm(num_workers=2, batch_size=3, image_size=24)
    dm.prepare_data()
    dm.setup("fit")
    n = 0
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (dm.in_channels, 24, 24)
        assert batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64 and batch["label"].shape[1:] == (24, 24)
        assert int(batch["label"].max()) < dm.num_classes
        n += batch["image"].shape[0]
    assert len(dm.train_set) == 2 * (2 if fake.name == "acdc" else 1) * RAW_SHAPE[2]
    # a last batch of a single slice is dropped (BatchNorm cannot train on it): 16 % 3 == 1
    assert n == len(dm.train_set) - (1 if len(dm.train_set) % 3 == 1 else 0)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (3, dm.in_channels, 24, 24)
    dm.setup("test")
    dm.num_workers = 2
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (1, dm.in_channels, RAW_SHAPE[2], 32, 32)
    assert batch["label"].shape == (1, RAW_SHAPE[2], 32, 32) and batch["label"].dtype == torch.int64
    assert batch["spacing"].dtype == torch.float64 and batch["spacing"].shape == (1, 3)
    assert isinstance(batch["case"], list) and len(batch["case"]) == 1
    assert batch["index"].dtype == torch.int64
    dm.teardown("test")


def test_attributes_before_prepare(fake: Fake) -> None:
    dm = fake.dm(raw_dir=str(fake.raw_dir / "not_there_yet"))
    assert dm.num_classes == len(dm.class_names) and dm.class_names[0] == "background"
    assert dm.in_channels >= 1 and dm.image_size == 16
    assert not os.path.exists(fake.data_dir)


def test_volume_items_carry_raw_geometry(fake: Fake) -> None:
    # a case's stored label, put back on the raw grid with the item's geometry, is the raw label
    dm = fake.dm()
    dm.prepare_data()
    dataset = VolumeDataset(dm.split_path("train"))
    item = dataset[dataset.cases.index(fake.case)]
    raw = nib.load(str(fake.label))
    raw_label = np.asarray(raw.dataobj).astype(np.uint8)
    if fake.name == "synapse":
        raw_label = BTCV_LUT[raw_label]
    assert item["slice_axis"] == dm.slice_axis
    assert np.allclose(item["raw_affine"].numpy(), raw.affine)
    back = canonical_to_raw(item["label"].numpy(), item["raw_affine"].numpy(), item["slice_axis"])
    assert np.array_equal(back, raw_label)
