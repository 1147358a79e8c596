"""The HDF5 split files: layout, and the datasets that read them (the only HDF5 reader).

HDF5 layout (``data_dir/{train,val,test}.h5``, ``format_version`` 2), written by
``SliceDataModule.prepare_data`` (``datamodules.base``) and read only in this module:

- one group per case, named by its id from the raw names (``case0005``, ``patient001_frame01``,
  ``013``), holding
  - ``image``: (C, D, H, W), chunked (C, 1, H, W) -- one slice (all channels) per chunk:
    float32, already intensity-preprocessed (``preprocess_image``), or the raw values in their
    small integer type (uint8, int8, uint16, int16) with the case attribute ``intensity``, the
    per-channel maps that normalize them as they are read (``datamodules.intensity``; the values
    read are bit-identical to normalizing before writing, with 2-4x fewer bytes stored);
  - ``label``: uint8 (D, H, W), chunked (1, H, W), values 0..num_classes-1;
  - attributes ``spacing`` (float64 (3,), mm in (D, H, W) order) and ``affine`` (float64 (4, 4),
    maps array indices (d, h, w, 1) to scanner mm), plus ``raw_affine`` / ``raw_shape`` where
    the case came from NIfTI (to write predictions back, see ``datamodules.nifti``).
- file attributes ``class_names`` and ``channel_names`` (JSON lists, background first),
  ``dataset``, ``format_version`` and ``fingerprint`` (SHA-256 of the preprocessing settings,
  the split's case lists and the raw files' names, sizes and mtimes).

D is the slice axis. Writing is atomic: the three files are written as ``<name>.h5.tmp`` and
moved into place with ``os.replace`` only once all three are complete, so an interrupted or
failed run leaves the previous good output untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.intensity import decode_maps, restore_image
from datamodules.loader import EpochSeeds
from datamodules.transforms import SliceTransform

__all__ = ["FORMAT_VERSION", "SPLITS", "SliceDataset", "VolumeDataset"]

FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")


class _H5Dataset(Dataset):
    """Lazily opened HDF5 split file. Holds only the path until the first item is read in a
    process; the handle is never pickled (DataLoader workers and DDP each open their own)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"HDF5 split file {self.path} not found; run prepare_data() first."
            )
        with h5py.File(self.path, "r") as f:
            self.cases: list[str] = sorted(f.keys())
            self.depths = np.array([f[c]["label"].shape[0] for c in self.cases], dtype=np.int64)
            self.spacings = [np.asarray(f[c].attrs["spacing"], np.float64) for c in self.cases]
            self.geometry = [_case_geometry(f[c].attrs) for c in self.cases]
            self.intensity_maps = [decode_maps(f[c].attrs) for c in self.cases]
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._handles: list[tuple[h5py.Dataset, h5py.Dataset, bool]] = []

    def _open(self) -> None:
        self._file = h5py.File(self.path, "r")
        self._pid = os.getpid()
        self._handles = []
        for c in self.cases:
            img, lab = self._file[c]["image"], self._file[c]["label"]
            # Uncompressed one-slice chunks can be read as raw bytes (fast path).
            raw = (
                img.chunks == (img.shape[0], 1, *img.shape[2:])
                and lab.chunks == (1, *lab.shape[1:])
                and not img._filters
                and not lab._filters
            )
            self._handles.append((img, lab, raw))
        self._on_open()

    def _on_open(self) -> None:
        """Hook run after the file is opened in a new process."""

    def _ensure_open(self) -> None:
        if self._file is None or self._pid != os.getpid():
            self._open()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"], state["_handles"] = None, None, []
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid, self._handles = None, None, []

    def _read_slice(self, case: int, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (image (C, H, W) float32, label (H, W) uint8) of slice z of a case."""
        img, lab, raw = self._handles[case]
        if raw:
            c, _, h, w = img.shape
            _, buf = img.id.read_direct_chunk((0, z, 0, 0))
            image = np.frombuffer(buf, dtype=img.dtype).reshape(c, h, w)
            _, buf = lab.id.read_direct_chunk((z, 0, 0))
            label = np.frombuffer(buf, dtype=np.uint8).reshape(h, w)
        else:
            image, label = img[:, z], lab[z]
        return restore_image(image, self.intensity_maps[case]), label


class SliceDataset(_H5Dataset):
    """2D slices of every case of a split file, transformed for training or validation.

    Item: ``{"image": float32 (C, S, S), "label": int64 (S, S), "case": str, "slice": int}``
    with S the transform's size (``datamodules.transforms``; ``None``: the stored slice as it
    is); ``case`` and ``slice`` (index along D) name where the slice came from, so a failing
    training step can say which data it saw. The transform's random draws are reseeded in each
    loading process at the first item of each epoch from :attr:`epoch_seeds`
    (:class:`~datamodules.loader.EpochSeeds`: the run's seed, rank, epoch and worker id).
    """

    def __init__(self, path: str | Path, transform: SliceTransform | None) -> None:
        super().__init__(path)
        self.transform = transform
        self.epoch_seeds = EpochSeeds()
        self.case_index = np.repeat(np.arange(len(self.cases), dtype=np.int64), self.depths)
        starts = np.cumsum(self.depths) - self.depths
        self.slice_index = np.arange(int(self.depths.sum()), dtype=np.int64) - np.repeat(
            starts, self.depths
        )

    def __len__(self) -> int:
        return int(self.depths.sum())

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._ensure_open()
        seed = self.epoch_seeds.new_epoch_seed()
        if seed is not None and self.transform is not None:
            self.transform.set_random_seed(seed)
        case, z = int(self.case_index[index]), int(self.slice_index[index])
        image, label = self._read_slice(case, z)
        # (H, W, C) for albumentations / cv2: a view, resized plane by plane (see transforms)
        image = image.transpose(1, 2, 0)
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        if image.ndim == 2:
            image = image[:, :, None]
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
        if not image.flags.writeable:
            image = image.copy()
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(label.astype(np.int64)),
            "case": self.cases[case],
            "slice": z,
        }


def _case_geometry(attrs: Any) -> dict[str, Any]:
    """A case's geometry for writing predictions back: ``affine`` (4, 4) of the stored
    (D, H, W) array, ``raw_affine`` (4, 4) of the raw NIfTI grid (NaN-filled when the case did
    not come from NIfTI) and the ``slice_axis`` rule used to reorient it."""
    nan = np.full((4, 4), np.nan)
    return {
        "affine": torch.from_numpy(np.asarray(attrs.get("affine", nan), np.float64).copy()),
        "raw_affine": torch.from_numpy(np.asarray(attrs.get("raw_affine", nan), np.float64).copy()),
        "slice_axis": str(attrs.get("slice_axis", "superior")),
        # the raw header's qform / sform and codes (NaN / -1 when unknown: older files)
        "raw_qform": torch.from_numpy(np.asarray(attrs.get("raw_qform", nan), np.float64).copy()),
        "raw_sform": torch.from_numpy(np.asarray(attrs.get("raw_sform", nan), np.float64).copy()),
        "raw_qform_code": int(attrs.get("raw_qform_code", -1)),
        "raw_sform_code": int(attrs.get("raw_sform_code", -1)),
    }


class VolumeDataset(_H5Dataset):
    """Whole cases at native resolution (test / predict).

    Item: ``{"image": float32 (C, D, H, W), "label": int64 (D, H, W), "spacing": float64 (3,),
    "case": str, "index": int, "affine": float64 (4, 4), "raw_affine": float64 (4, 4),
    "slice_axis": str}``; ``index`` is the case's position in the split file; the geometry
    keys are those of :func:`_case_geometry`.
    """

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._ensure_open()
        img, lab, _ = self._handles[index]
        return {
            "image": torch.from_numpy(restore_image(img[...], self.intensity_maps[index])),
            "label": torch.from_numpy(lab[...].astype(np.int64)),
            "spacing": torch.from_numpy(self.spacings[index].copy()),
            "case": self.cases[index],
            "index": index,
            **self.geometry[index],
        }
