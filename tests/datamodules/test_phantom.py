"""Phantom: determinism, both imbalances and their knobs, metadata, loaders, transforms."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from datamodules import PhantomDataModule, generate_phantom
from datamodules.hdf5 import SliceDataset
from datamodules.transforms import build_eval_transform, build_train_transform

SMALL = {
    "num_train": 2,
    "num_val": 1,
    "num_test": 1,
    "volume_shape": (8, 48, 48),
    "image_size": 32,
    "batch_size": 4,
    "num_workers": 0,
    "progress": False,
}


def counts(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=6)


def test_deterministic_by_seed() -> None:
    a = generate_phantom(np.random.default_rng([1, 0]))
    b = generate_phantom(np.random.default_rng([1, 0]))
    c = generate_phantom(np.random.default_rng([2, 0]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_class_imbalance_spans_two_orders_and_knob() -> None:
    fractions = np.mean(
        [counts(generate_phantom(np.random.default_rng([0, i]))[1]) for i in range(3)], axis=0
    )
    fg = fractions[1:]
    assert (fg > 0).all()  # every structure present
    assert fg.max() / fg.min() > 50  # large organ vs tiny spots
    flat = np.mean(
        [
            counts(generate_phantom(np.random.default_rng([0, i]), imbalance=0.5)[1])
            for i in range(3)
        ],
        axis=0,
    )[1:]
    assert flat.max() / flat.min() < 20 < 50 < fg.max() / fg.min()


def contrast(image: np.ndarray, label: np.ndarray, k: int, around: int) -> float:
    return abs(float(image[label == k].mean() - image[label == around].mean()))


def test_difficulty_imbalance_and_knob() -> None:
    kw = {"noise_std": 0.0, "bias_strength": 0.0}
    img, lab = generate_phantom(np.random.default_rng([0, 0]), **kw)
    lesion, organ = contrast(img, lab, 3, 1), contrast(img, lab, 1, 0)
    assert lesion < organ / 3  # the lesion is much harder to see than the organ
    img0, lab0 = generate_phantom(np.random.default_rng([0, 0]), difficulty=0.0, **kw)
    assert contrast(img0, lab0, 3, 1) > 3 * lesion  # difficulty 0 removes the imbalance
    noisy, _ = generate_phantom(np.random.default_rng([0, 0]), noise_std=0.1, bias_strength=0.0)
    assert 0.08 < float((noisy - img)[lab == 0].std()) < 0.12


def test_metadata_says_synthetic_and_layout(tmp_path) -> None:
    dm = PhantomDataModule(data_dir=str(tmp_path), **SMALL)
    assert dm.num_classes == 6 and dm.in_channels == 1
    assert all(n.startswith("synthetic_") for n in dm.class_names[1:])
    dm.prepare_data()
    with h5py.File(tmp_path / "train.h5", "r") as f:
        names = json.loads(f.attrs["class_names"])
        assert names == dm.class_names and f.attrs["dataset"] == "phantom"
        assert sorted(f.keys()) == ["phantom000", "phantom001"]
        g = f["phantom000"]
        assert g["image"].shape == (1, 8, 48, 48) and g["label"].shape == (8, 48, 48)
        assert g.attrs["synthetic"]
        np.testing.assert_allclose(g.attrs["spacing"], [2.0, 1.0, 1.0])
        # affine maps (d, h, w) to mm: column d has length 2
        np.testing.assert_allclose(np.linalg.norm(g.attrs["affine"][:3, :3], axis=0), [2, 1, 1])


def test_rerun_noop_and_rebuild(tmp_path) -> None:
    dm = PhantomDataModule(data_dir=str(tmp_path), **SMALL)
    dm.prepare_data()
    mtime = (tmp_path / "val.h5").stat().st_mtime_ns
    PhantomDataModule(data_dir=str(tmp_path), **SMALL).prepare_data()
    assert (tmp_path / "val.h5").stat().st_mtime_ns == mtime
    PhantomDataModule(data_dir=str(tmp_path), **{**SMALL, "difficulty": 0.5}).prepare_data()
    assert (tmp_path / "val.h5").stat().st_mtime_ns != mtime


def test_default_volume_shape_dtypes_and_classes() -> None:
    image, label = generate_phantom(np.random.default_rng([0, 0]))
    assert image.shape == label.shape == (32, 128, 128)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.isfinite(image).all()
    assert set(np.unique(label).tolist()) == set(range(6))  # background + 5 structures


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`num_val` to be an int >= 0"):
        PhantomDataModule(num_val=-1)
    with pytest.raises(ValueError, match="`volume_shape`"):
        PhantomDataModule(volume_shape=(2, 8, 8))
    with pytest.raises(ValueError, match=r"`imbalance` to be in \[0.5, 2\]"):
        PhantomDataModule(imbalance=0.0)
    with pytest.raises(ValueError, match="`difficulty` to be >= 0"):
        PhantomDataModule(difficulty=-1)
    with pytest.raises(ValueError, match="'val' split is empty"):
        PhantomDataModule(num_val=0, progress=False).prepare_data()


def test_loaders_two_workers(tmp_path) -> None:
    dm = PhantomDataModule(data_dir=str(tmp_path), **{**SMALL, "num_workers": 2})
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(b["image"].shape[0] for b in batches) == 16
    assert batches[0]["image"].shape == (4, 1, 32, 32)
    assert len(batches[0]["case"]) == 4 and batches[0]["slice"].shape == (4,)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 1, 32, 32) and val["label"].dtype == torch.int64
    dm.setup("test")
    t = next(iter(dm.test_dataloader()))
    assert t["image"].shape == (1, 1, 8, 48, 48) and t["case"] == ["phantom003"]
    assert t["index"].tolist() == [0]
    dm.teardown()


def _nearest_on_centres(label: np.ndarray, size: int) -> np.ndarray:
    """Nearest on pixel centres, by hand: output pixel i reads floor((i + 0.5) * n_in / n_out)."""
    rows = np.floor((np.arange(size) + 0.5) * label.shape[0] / size).astype(int)
    cols = np.floor((np.arange(size) + 0.5) * label.shape[1] / size).astype(int)
    return label[np.ix_(rows, cols)]


def test_val_is_plain_resize(tmp_path) -> None:
    dm = PhantomDataModule(data_dir=str(tmp_path), **SMALL)
    dm.prepare_data()
    dm.setup("validate")
    item = dm.val_set[3]  # case phantom002, slice 3
    assert (item["case"], item["slice"]) == ("phantom002", 3)  # named for the training guard
    with h5py.File(tmp_path / "val.h5", "r") as f:
        lab = f["phantom002"]["label"][3]
    np.testing.assert_array_equal(item["label"].numpy(), _nearest_on_centres(lab, 32))


def test_train_augmentation_keeps_image_and_label_aligned(tmp_path) -> None:
    """Image = label value: after random rotations/flips both must still agree."""
    dm = PhantomDataModule(data_dir=str(tmp_path), **SMALL)
    dm.prepare_data()
    ds = SliceDataset(tmp_path / "train.h5", build_train_transform(64))
    ds._ensure_open()
    rng = np.random.default_rng(0)
    label = np.zeros((96, 96), np.uint8)
    label[10:50, 20:40] = 1
    label[60:70, 60:90] = 2
    image = label.astype(np.float32)[:, :, None]
    ds.transform.set_random_seed(0)
    changed = 0
    for _ in range(20):
        out = ds.transform(image=image, mask=label)
        img, lab = out["image"][..., 0] if out["image"].ndim == 3 else out["image"], out["mask"]
        assert img.shape == lab.shape == (64, 64)
        agree = np.mean(np.rint(img) == lab)
        assert agree > 0.97
        ref = _nearest_on_centres(label, 64)
        changed += not np.array_equal(lab, ref)
    assert changed >= 10  # P(augmented) = 0.75
    del rng
    evald = build_eval_transform(64)(image=image, mask=label)
    assert np.array_equal(evald["mask"], _nearest_on_centres(label, 64))
