"""Raw storage with intensity maps (datamodules.intensity): the values read back are those of
normalizing in float32 before storing, bit for bit."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.hdf5 import SliceDataset, VolumeDataset
from datamodules.intensity import (
    decode_maps,
    encode_maps,
    restore_image,
    storage_dtype,
)
from datamodules.nnunet_norm import intensity_map, normalize_channel
from datamodules.raw import CaseData
from datamodules.split_files import write_case

RNG = np.random.default_rng(11)
STATS = {"mean": 45.3, "std": 120.7, "percentile_00_5": -300.2, "percentile_99_5": 900.9}


def _eager(x: np.ndarray, name: str) -> np.ndarray:
    """Normalizing a float32 copy in place, step by step (the float32 arithmetic of nnU-Net's
    classes, written out independently of the maps)."""
    out = np.array(x, dtype=np.float32)
    if name == "CT":
        np.clip(out, STATS["percentile_00_5"], STATS["percentile_99_5"], out=out)
        out -= np.float32(STATS["mean"])
        out /= np.float32(STATS["std"])
    elif name == "rgb_to_0_1":
        out /= np.float32(255)
    elif name == "rescale_to_0_1":
        out -= out.min()
        out /= np.float32(max(float(out.max()), 1e-8))
    elif name != "noNorm":
        out -= out.mean()
        squares = sum(float(np.dot(b, b)) for b in np.split(out.ravel(), [1 << 16, 1 << 17]))
        out /= max(np.float32(np.sqrt(squares / out.size)), np.float32(1e-8))
    return out


CASES = [
    ("CT", RNG.normal(0, 500, (3, 40, 50)).astype(np.int16)),
    ("CT", RNG.normal(0, 500, (3, 40, 50))),  # float64 (scaled NIfTI): stored as float32
    ("noNorm", RNG.normal(3, 2, (3, 40, 50))),
    ("rescale_to_0_1", RNG.integers(-5, 3000, (3, 40, 50)).astype(np.int16)),
    ("rgb_to_0_1", RNG.integers(0, 256, (1, 40, 50)).astype(np.uint8)),
    ("T2", RNG.integers(0, 4000, (40, 60, 70)).astype(np.uint16)),  # > 2^16 values: 3 blocks
    ("R", RNG.integers(0, 256, (1, 200, 300)).astype(np.uint8)),
    ("flair", RNG.integers(-100, 900, (50, 40, 60)).astype(np.int16).transpose(2, 1, 0)),
]


@pytest.mark.parametrize(("name", "raw"), CASES, ids=[f"{n}-{r.dtype}" for n, r in CASES])
def test_stored_raw_reads_back_bit_identical(name: str, raw: np.ndarray) -> None:
    stats = STATS if name == "CT" else None
    stored = raw.astype(storage_dtype([raw.dtype]))
    assert stored.dtype == (raw.dtype if raw.dtype != np.float64 else np.float32)
    restored = restore_image(stored[None], [intensity_map(raw, name, stats)])[0]
    assert restored.dtype == np.float32
    np.testing.assert_array_equal(restored, _eager(raw, name))
    np.testing.assert_array_equal(normalize_channel(raw, name, stats), restored)


def test_storage_dtype() -> None:
    u8, i16, u16 = np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16)
    assert storage_dtype([u8, u8, u8]) == u8
    assert storage_dtype([u8, i16]) == i16
    assert storage_dtype([u16, i16]) == np.float32  # int32 would not be exact in float32
    assert storage_dtype([np.dtype(np.int32)]) == np.float32
    assert storage_dtype([i16, np.dtype(np.float32)]) == np.float32


def _case(image: np.ndarray, attrs: dict) -> CaseData:
    label = np.zeros(image.shape[1:], np.uint8)
    return CaseData(image, label, np.ones(3), np.eye(4), attrs)


def test_split_files_store_raw_only_with_maps(tmp_path: Path) -> None:
    raw = RNG.integers(0, 256, (3, 4, 16, 16)).astype(np.uint8)
    maps = [intensity_map(raw[c], "rgb_to_0_1") for c in range(3)]
    path = tmp_path / "split.h5"
    with h5py.File(path, "w") as f:
        write_case(f, "raw", _case(raw, {"intensity": encode_maps(maps)}), None)
        write_case(f, "plain", _case(raw, {}), None)  # no maps: stored as float32 values
        assert f["raw"]["image"].dtype == np.uint8 and f["plain"]["image"].dtype == np.float32
        assert decode_maps(f["raw"].attrs) == maps and decode_maps(f["plain"].attrs) is None
    volume = VolumeDataset(path)[1]["image"].numpy()  # cases sorted: "plain", "raw"
    np.testing.assert_array_equal(volume, raw.astype(np.float32) / np.float32(255))
    item = SliceDataset(path, None)[4 + 2]  # "raw", slice 2
    np.testing.assert_array_equal(item["image"].numpy(), volume[:, 2])
    with pytest.raises(ValueError, match="2 intensity maps for an image of 3 channels"):
        restore_image(raw, maps[:2])
