"""Synapse (TransUNet protocol) on a fake BTCV release and a fake TransUNet preprocessed release."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamodules import SynapseDataModule
from tests.datamodules.conftest import RAW_SHAPE, expected_dhw, make_synapse, write_nifti

# TransUNet protocol, written out by hand from REFERENCE.md (not imported from the code).
BTCV_TO_OURS = {
    0: 0,
    1: 1,
    2: 2,
    3: 3,
    4: 4,
    5: 0,
    6: 5,
    7: 6,
    8: 7,
    9: 0,
    10: 0,
    11: 8,
    12: 0,
    13: 0,
}
TRAIN18 = [5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40]
TEST12 = [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]


def dm(tmp_path, **kw) -> SynapseDataModule:
    kw = {
        "data_dir": str(tmp_path / "h5"),
        "raw_dir": str(tmp_path / "raw"),
        "progress": False,
        "num_workers": 0,
        **kw,
    }
    return SynapseDataModule(**kw)


def keys(tmp_path, split):
    with h5py.File(tmp_path / "h5" / f"{split}.h5", "r") as f:
        return sorted(f.keys())


def test_class_names_and_channels() -> None:
    m = SynapseDataModule()
    assert m.class_names == [
        "background",
        "spleen",
        "right_kidney",
        "left_kidney",
        "gallbladder",
        "liver",
        "stomach",
        "aorta",
        "pancreas",
    ]
    assert (m.num_classes, m.in_channels, m.image_size, m.batch_size) == (9, 1, 224, 24)


def test_label_map_window_and_orientation(tmp_path) -> None:
    raw = make_synapse(tmp_path, cases=(5, 6, 7, 1))
    img = np.zeros(RAW_SHAPE, np.int16)
    img[:5, 0, 0] = [-1000, -125, 75, 275, 1000]  # expected 0, 0, 0.5, 1, 1
    lab = np.zeros(RAW_SHAPE, np.uint8)
    lab[:14, 1, 0] = np.arange(14)
    lab[20:, 20:, 3] = 11  # an asymmetric block to check orientation
    root = tmp_path / "raw" / "RawData" / "Training"
    write_nifti(root / "img" / "img0005.nii.gz", img)
    write_nifti(root / "label" / "label0005.nii.gz", lab)
    m = dm(tmp_path, train_cases=[5, 6], val_cases=[7], test_cases=[1])
    m.prepare_data()
    with h5py.File(tmp_path / "h5" / "train.h5", "r") as f:
        image, label = f["case0005"]["image"][0], f["case0005"]["label"][...]
        spacing, affine = f["case0005"].attrs["spacing"], f["case0005"].attrs["affine"]
    expected_label = np.vectorize(BTCV_TO_OURS.get)(expected_dhw(lab))
    np.testing.assert_array_equal(label, expected_label)
    window = expected_dhw(img.astype(np.float32))
    np.testing.assert_allclose(image, np.clip(window + 125, 0, 400) / 400, atol=1e-6)
    # raw x = 0..4 at y = 0, z = 0 lands at d = 0, h = 31, w = 31..27 (x and y flipped)
    assert image[0, 31, 27:32].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(spacing, [2.5, 0.8, 0.8])
    # affine maps stored (d, h, w) to the same world point as the raw voxel
    raw_ijk = np.array([25, 21, 3, 1.0])
    world = np.diag([-0.8, -0.8, 2.5, 1.0]) @ raw_ijk
    d, h, w = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
    assert label[d, h, w] == BTCV_TO_OURS[11] == 8
    # other cases: generic random content, mapped the same way
    with h5py.File(tmp_path / "h5" / "val.h5", "r") as f:
        np.testing.assert_array_equal(
            f["case0007"]["label"][...], np.vectorize(BTCV_TO_OURS.get)(expected_dhw(raw[7][1]))
        )


def test_default_split_membership(tmp_path) -> None:
    make_synapse(tmp_path, cases=TRAIN18 + TEST12)
    m = dm(tmp_path)
    m.prepare_data()
    val = ["case0007", "case0028", "case0039"]
    assert keys(tmp_path, "val") == val
    assert keys(tmp_path, "train") == sorted(
        f"case{n:04d}" for n in TRAIN18 if f"case{n:04d}" not in val
    )
    assert keys(tmp_path, "test") == sorted(f"case{n:04d}" for n in TEST12)
    assert len(keys(tmp_path, "train")) == 15
    # the documented option: train on all 18 (val cases included), test untouched
    m = dm(tmp_path, train_on_all=True)
    m.prepare_data()
    assert keys(tmp_path, "train") == sorted(f"case{n:04d}" for n in TRAIN18)
    assert keys(tmp_path, "val") == val
    assert keys(tmp_path, "test") == sorted(f"case{n:04d}" for n in TEST12)


def test_test_cases_never_in_validation(tmp_path) -> None:
    make_synapse(tmp_path, cases=(5, 6, 1))
    with pytest.raises(ValueError, match=r"case0001.*'val'.*'test'"):
        dm(tmp_path, train_cases=[5], val_cases=[1], test_cases=[1, 6]).prepare_data()


def test_missing_listed_case(tmp_path) -> None:
    make_synapse(tmp_path, cases=(5, 6, 1))
    with pytest.raises(FileNotFoundError, match=r"case0007.*img0007\.nii\.gz(.|\n)*RawData"):
        dm(tmp_path, train_cases=[5, 6], val_cases=[7], test_cases=[1]).prepare_data()


def test_unknown_layout(tmp_path) -> None:
    (tmp_path / "raw" / "something").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"neither RawData/Training/img(.|\n)*train_npz"):
        dm(tmp_path).prepare_data()


def write_transunet_release(tmp_path, rng):
    raw = tmp_path / "raw"
    (raw / "train_npz").mkdir(parents=True)
    (raw / "test_vol_h5").mkdir(parents=True)
    vols = {}
    for n in (5, 6, 7):
        img = rng.uniform(0, 1, (4, 32, 32)).astype(np.float32)
        lab = rng.integers(0, 9, (4, 32, 32)).astype(np.float32)
        for z in (0, 1, 2, 3):
            np.savez(
                raw / "train_npz" / f"case{n:04d}_slice{z:03d}.npz", image=img[z], label=lab[z]
            )
        vols[n] = (img, lab)
    img = rng.uniform(0, 1, (6, 32, 32)).astype(np.float32)
    lab = rng.integers(0, 9, (6, 32, 32)).astype(np.float32)
    with h5py.File(raw / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"], f["label"] = img, lab
    vols[1] = (img, lab)
    return vols


def test_transunet_preprocessed_release(tmp_path) -> None:
    vols = write_transunet_release(tmp_path, np.random.default_rng(3))
    m = dm(tmp_path, train_cases=[5, 6], val_cases=[7], test_cases=[1])
    m.prepare_data()
    for split, n in (("train", 5), ("val", 7), ("test", 1)):
        with h5py.File(tmp_path / "h5" / f"{split}.h5", "r") as f:
            np.testing.assert_array_equal(f[f"case{n:04d}"]["image"][0], vols[n][0])
            np.testing.assert_array_equal(
                f[f"case{n:04d}"]["label"][...], vols[n][1].astype(np.uint8)
            )
            np.testing.assert_array_equal(f[f"case{n:04d}"].attrs["spacing"], [1, 1, 1])


def test_transunet_release_bad_label_and_corrupt(tmp_path) -> None:
    write_transunet_release(tmp_path, np.random.default_rng(4))
    bad = tmp_path / "raw" / "train_npz" / "case0006_slice002.npz"
    np.savez(bad, image=np.zeros((32, 32), np.float32), label=np.full((32, 32), 9.0))
    with pytest.raises(ValueError, match=r"case0006.*outside"):
        dm(tmp_path, train_cases=[5, 6], val_cases=[7], test_cases=[1]).prepare_data()
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"case0006_slice002\.npz.*corrupt"):
        dm(tmp_path, train_cases=[5, 6], val_cases=[7], test_cases=[1]).prepare_data()


def test_preprocess_image_formula() -> None:
    m = SynapseDataModule(hu_window=(-100, 300))
    x = np.array([[[[-500, -100, 100, 300, 900]]]], dtype=np.int16)
    np.testing.assert_allclose(m.preprocess_image(x), [[[[0, 0, 0.5, 1, 1]]]])
    assert m.preprocess_image(x).dtype == np.float32
