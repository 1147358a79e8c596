"""Shared base of every datamodule: HDF5 writer and reader, fingerprints, slice datasets.

HDF5 layout (``data_dir/{train,val,test}.h5``, ``format_version`` 1), read only in this module:

- one group per case, named by its id from the raw names (``case0005``, ``patient001_frame01``,
  ``013``), holding
  - ``image``: float32 (C, D, H, W), chunked (C, 1, H, W) -- one slice (all channels) per chunk,
    already intensity-preprocessed (``preprocess_image``);
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

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import h5py
import lightning as L
import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from datamodules.nifti import raw_to_canonical, read_nifti

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "CaseData",
    "CaseSpec",
    "SliceDataModule",
    "SliceDataset",
    "VolumeDataset",
    "build_train_transform",
    "build_eval_transform",
]

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")

cv2.setNumThreads(1)  # one thread per DataLoader worker; cv2's pool oversubscribes the cores


@dataclass(frozen=True)
class CaseSpec:
    """One case to preprocess: its id, the raw files it reads (fingerprinted) and extras."""

    case_id: str
    files: tuple[Path, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@dataclass
class CaseData:
    """A preprocessed case, ready to be written.

    Attributes:
        image: float32 (C, D, H, W), intensity-preprocessed.
        label: uint8 (D, H, W), values in 0..num_classes-1.
        spacing: float64 (3,), mm in (D, H, W) order.
        affine: float64 (4, 4), array index (d, h, w, 1) -> scanner mm.
        attrs: extra case attributes (e.g. ``raw_affine``, ``raw_shape``).
    """

    image: np.ndarray
    label: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# validation helpers shared by the subclasses
# --------------------------------------------------------------------------------------------
def check_finite(array: np.ndarray, what: str) -> None:
    """Raise ValueError naming ``what`` if a float array holds NaN or infinity."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n_nan = int(np.isnan(array).sum())
        raise ValueError(
            f"{what} contains non-finite values ({n_nan} NaN); expected finite intensities."
        )


def check_label_values(label: np.ndarray, num_values: int, what: str) -> np.ndarray:
    """Check that ``label`` holds integers in ``0..num_values-1`` and return it as uint8.

    Args:
        label: raw label array, any numeric dtype.
        num_values: the dataset's number of raw label values (e.g. 14 for BTCV 0..13).
        what: name of the file or case, for the error.

    Returns:
        uint8 array, same shape (values unchanged).
    """
    if np.issubdtype(label.dtype, np.floating):
        check_finite(label, what)
        rounded = np.rint(label)
        if not np.array_equal(rounded, label):
            raise ValueError(f"{what} holds non-integer label values; expected integer labels.")
        label = rounded
    lo, hi = label.min(), label.max()
    if lo < 0 or hi >= num_values:
        values = np.unique(label)
        bad = [v for v in values.tolist() if v < 0 or v >= num_values]
        raise ValueError(
            f"{what} holds label values {bad[:10]} outside the dataset's label set "
            f"0..{num_values - 1}."
        )
    return label.astype(np.uint8, copy=False)


def check_same_geometry(case_id: str, items: Sequence[tuple[Path, tuple, np.ndarray]]) -> None:
    """Raise ValueError naming the case if the (path, shape, affine) items disagree."""
    ref_path, ref_shape, ref_aff = items[0]
    for path, shape, aff in items[1:]:
        if tuple(shape) != tuple(ref_shape):
            raise ValueError(
                f"Case {case_id}: shape {tuple(shape)} of {path} does not match shape "
                f"{tuple(ref_shape)} of {ref_path}; image and label must share one voxel grid."
            )
        if not np.allclose(aff, ref_aff, rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"Case {case_id}: the affine of {path} does not match the affine of {ref_path}; "
                f"image and label must share one voxel grid.\n{np.round(aff, 4)}\nvs\n"
                f"{np.round(ref_aff, 4)}"
            )


def load_nifti_case(
    case_id: str,
    image_paths: Sequence[Path],
    label_path: Path,
    num_label_values: int,
    slice_axis: str = "superior",
    label_lut: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Load one case's image channels and label from NIfTI, checked, in canonical orientation.

    The files are read in parallel threads (zlib decompression releases the GIL); the label is
    checked and relabelled in its reading thread, while the larger image still decompresses.

    Args:
        case_id: case name for error messages.
        image_paths: one NIfTI file per input channel.
        label_path: the label NIfTI file.
        num_label_values: raw label values allowed, ``0..num_label_values-1``.
        slice_axis: see :func:`datamodules.nifti.raw_to_canonical`.
        label_lut: optional uint8 lookup table ``raw label -> dataset label`` applied after
            the check (e.g. BTCV's 13 labels to TransUNet's 8).

    Returns:
        ``(channels: list of raw-dtype (D, H, W) views, label uint8 (D, H, W), affine (4, 4),
        spacing (3,), attrs)`` with ``attrs`` holding ``raw_affine`` and ``raw_shape``.

    Raises:
        ValueError: corrupt file, NaN, image/label shape or affine mismatch, bad label values.
    """

    def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
        data, affine = read_nifti(path)
        label = check_label_values(data, num_label_values, f"Case {case_id}: label {path}")
        return (label if label_lut is None else label_lut[label]), affine

    paths = [*image_paths, label_path]
    with ThreadPoolExecutor(max_workers=min(len(paths), 4)) as pool:
        label_future = pool.submit(read_label, label_path)
        loaded = list(pool.map(read_nifti, image_paths))
        loaded.append(label_future.result())
    check_same_geometry(case_id, [(p, d.shape, a) for p, (d, a) in zip(paths, loaded, strict=True)])
    raw_affine = loaded[0][1]
    channels = []
    for path, (data, affine) in zip(image_paths, loaded[:-1], strict=True):
        check_finite(data, f"Case {case_id}: image {path}")
        channels.append(raw_to_canonical(data, affine, slice_axis)[0])
    label, affine, spacing = raw_to_canonical(loaded[-1][0], raw_affine, slice_axis)
    attrs = {
        "raw_affine": raw_affine,
        "raw_shape": np.asarray(loaded[0][0].shape, dtype=np.int64),
        "slice_axis": slice_axis,
    }
    return channels, np.ascontiguousarray(label), affine, spacing, attrs


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
def build_train_transform(image_size: int) -> A.Compose:
    """Training augmentation on one (H, W, C) slice and its (H, W) mask.

    Resize first (cheap rotations at the small size), then TransUNet's augmentation: with
    probability 0.5 a random 90-degree rotation followed by a flip (a uniformly random
    reflection of the square), otherwise with probability 0.5 a rotation by an angle in
    [-20, 20] degrees (bilinear image, nearest mask, zero fill). Images use bilinear
    interpolation , masks nearest neighbour.
    """
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.OneOf(
                [
                    A.Sequential([A.RandomRotate90(p=1.0), A.HorizontalFlip(p=1.0)], p=1.0),
                    A.Rotate(
                        limit=20,
                        interpolation=cv2.INTER_LINEAR,
                        mask_interpolation=cv2.INTER_NEAREST,
                        border_mode=cv2.BORDER_CONSTANT,
                        fill=0,
                        fill_mask=0,
                        p=0.5,
                    ),
                ],
                # OneOf picks a child with probability proportional to the child's p and then
                # forces it: weights 1.0 : 0.5 -> P(rot90+flip) = 0.75 * 2/3 = 0.5,
                # P(rotate) = 0.75 * 1/3 = 0.25, P(neither) = 0.25, as in TransUNet.
                p=0.75,
            ),
        ]
    )


def build_eval_transform(image_size: int) -> A.Compose:
    """Validation transform: resize only (bilinear image, nearest mask)."""
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        ]
    )


# --------------------------------------------------------------------------------------------
# datasets (the only HDF5 reader)
# --------------------------------------------------------------------------------------------
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
            image = np.frombuffer(buf, dtype=np.float32).reshape(c, h, w)
            _, buf = lab.id.read_direct_chunk((z, 0, 0))
            label = np.frombuffer(buf, dtype=np.uint8).reshape(h, w)
            return image, label
        return img[:, z], lab[z]


class SliceDataset(_H5Dataset):
    """2D slices of every case of a split file, transformed for training or validation.

    Item: ``{"image": float32 (C, S, S), "label": int64 (S, S)}`` with S the transform's size.
    """

    def __init__(self, path: str | Path, transform: A.Compose | None) -> None:
        super().__init__(path)
        self.transform = transform
        self.case_index = np.repeat(np.arange(len(self.cases), dtype=np.int64), self.depths)
        starts = np.cumsum(self.depths) - self.depths
        self.slice_index = np.arange(int(self.depths.sum()), dtype=np.int64) - np.repeat(
            starts, self.depths
        )

    def _on_open(self) -> None:
        # Each worker process reseeds albumentations from its own torch seed, which Lightning /
        # PyTorch make distinct per worker (and per rank), so workers do not repeat each other.
        if self.transform is not None:
            self.transform.set_random_seed(torch.initial_seed() % 2**32)

    def __len__(self) -> int:
        return int(self.depths.sum())

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self._ensure_open()
        image, label = self._read_slice(int(self.case_index[index]), int(self.slice_index[index]))
        image = image.transpose(1, 2, 0)  # (H, W, C) for albumentations / cv2
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        if image.ndim == 2:
            image = image[:, :, None]
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
        if not image.flags.writeable:
            image = image.copy()
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label.astype(np.int64))}


def _case_geometry(attrs: Any) -> dict[str, Any]:
    """A case's geometry for writing predictions back: ``affine`` (4, 4) of the stored
    (D, H, W) array, ``raw_affine`` (4, 4) of the raw NIfTI grid (NaN-filled when the case did
    not come from NIfTI) and the ``slice_axis`` rule used to reorient it."""
    nan = np.full((4, 4), np.nan)
    return {
        "affine": torch.from_numpy(np.asarray(attrs.get("affine", nan), np.float64).copy()),
        "raw_affine": torch.from_numpy(np.asarray(attrs.get("raw_affine", nan), np.float64).copy()),
        "slice_axis": str(attrs.get("slice_axis", "superior")),
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
            "image": torch.from_numpy(img[...]),
            "label": torch.from_numpy(lab[...].astype(np.int64)),
            "spacing": torch.from_numpy(self.spacings[index].copy()),
            "case": self.cases[index],
            "index": index,
            **self.geometry[index],
        }


# --------------------------------------------------------------------------------------------
# the datamodule base
# --------------------------------------------------------------------------------------------
class SliceDataModule(L.LightningDataModule):
    """Base of every datamodule: raw volumes -> HDF5 -> 2D slices (train/val) and volumes (test).

    Subclasses set ``dataset_name``, ``default_class_names`` and ``default_channel_names`` and
    implement ``_plan`` (which cases go to which split, cheap layout checks), ``_load_case``
    (read and preprocess one case) and ``preprocess_image``; they extend ``_settings`` with
    every option that changes the output (it enters the fingerprint).

    Args:
        data_dir: output folder of ``train.h5``, ``val.h5``, ``test.h5``.
        raw_dir: the raw release (``None`` for generated data).
        image_size: side S of the (S, S) training / validation slices.
        batch_size: train / val batch size (test and predict use 1 volume per batch).
        num_workers: DataLoader worker processes.
        seed: seed of any random choice in preprocessing (e.g. splits, generated data).
        compression: HDF5 filter for the image and label datasets (``None``, ``"lzf"``,
            ``"gzip"``). ``None`` (default) is fastest to read; ``"lzf"`` roughly halves the
            disk use of CT data for about half the loader throughput.
        pin_memory: pin DataLoader batches (useful on GPU).
        progress: show a rich progress bar per case while preprocessing.
    """

    dataset_name: str = ""
    #: how raw NIfTI volumes are reoriented (see ``datamodules.nifti.raw_to_canonical``)
    slice_axis: str = "superior"
    default_class_names: tuple[str, ...] = ()
    default_channel_names: tuple[str, ...] = ()

    def __init__(
        self,
        data_dir: str | Path,
        raw_dir: str | Path | None = None,
        image_size: int = 224,
        batch_size: int = 24,
        num_workers: int = 4,
        seed: int = 1234,
        compression: str | None = None,
        pin_memory: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__()
        # stored in checkpoints (datamodule_hyper_parameters), so `lightning_app.predict` can
        # rebuild the datamodule's intensity preprocessing from a checkpoint alone; image_size
        # is the model's (linked), and Lightning refuses two different values under one key
        self.save_hyperparameters(ignore=["image_size"])
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"Expected argument `image_size` to be an int >= 8, got {image_size}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be an int >= 1, got {batch_size}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(
                f"Expected argument `num_workers` to be an int >= 0, got {num_workers}"
            )
        if compression not in (None, "lzf", "gzip"):
            raise ValueError(
                f"Expected argument `compression` to be None, 'lzf' or 'gzip', got {compression!r}"
            )
        self.data_dir = Path(data_dir)
        self.raw_dir = None if raw_dir is None else Path(raw_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.compression = compression
        self.pin_memory = pin_memory
        self.progress = progress
        self.class_names: list[str] = list(self.default_class_names)
        self.channel_names: list[str] = list(self.default_channel_names)
        self.num_classes: int = len(self.class_names)
        self.in_channels: int = len(self.channel_names)
        self.train_set: SliceDataset | None = None
        self.val_set: SliceDataset | None = None
        self.test_set: VolumeDataset | None = None

    # ---------------------------------------------------------------- subclass interface
    def _plan(self) -> dict[str, list[CaseSpec]]:
        """Cases of each split (keys ``train``, ``val``, ``test``), after cheap layout checks."""
        raise NotImplementedError

    def _load_case(self, spec: CaseSpec) -> CaseData:
        """Read and preprocess one case."""
        raise NotImplementedError

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Intensity preprocessing of a raw (C, D, H, W) image in canonical orientation.

        Returns float32, same shape. Used by ``prepare_data`` and for prediction on new files.
        """
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        """Every option that changes the HDF5 output (JSON-serialisable)."""
        return {
            "dataset": self.dataset_name,
            "format_version": FORMAT_VERSION,
            "class_names": self.class_names,
            "channel_names": self.channel_names,
            "compression": self.compression,
        }

    # ---------------------------------------------------------------- helpers
    def split_path(self, split: str) -> Path:
        """Path of a split's HDF5 file (``data_dir/<split>.h5``)."""
        if split not in SPLITS:
            raise ValueError(f"Expected split in {SPLITS}, got {split!r}")
        return self.data_dir / f"{split}.h5"

    def _require_raw_dir(self, layout: str) -> Path:
        if self.raw_dir is None:
            raise ValueError(
                f"{type(self).__name__} needs `raw_dir`, the raw release with layout:\n{layout}"
            )
        if not self.raw_dir.is_dir():
            raise FileNotFoundError(
                f"raw_dir {self.raw_dir} does not exist. Expected the raw "
                f"{self.dataset_name} release there, with layout:\n{layout}"
            )
        return self.raw_dir

    @staticmethod
    def _check_splits(plan: dict[str, list[CaseSpec]]) -> None:
        """Every split non-empty; the test split disjoint from train and val."""
        for split in SPLITS:
            if not plan.get(split):
                raise ValueError(
                    f"The {split!r} split is empty: every split needs at least one case "
                    f"(check the split options and that raw_dir holds the listed cases)."
                )
        test = {c.case_id for c in plan["test"]}
        for split in ("train", "val"):
            both = sorted(test & {c.case_id for c in plan[split]})
            if both:
                raise ValueError(
                    f"Cases {both} are in both the {split!r} and the 'test' split; the test "
                    f"split must not overlap the others."
                )

    def fingerprint(self, plan: dict[str, list[CaseSpec]]) -> str:
        """SHA-256 of the settings, the split case lists and the raw files' names/sizes/mtimes."""
        files: list[list[Any]] = []
        for split in SPLITS:
            for spec in plan[split]:
                for path in spec.files:
                    st = path.stat()
                    try:
                        name = str(path.relative_to(self.raw_dir)) if self.raw_dir else str(path)
                    except ValueError:
                        name = str(path.resolve())
                    files.append([split, spec.case_id, name, st.st_size, st.st_mtime_ns])
        payload = {
            "settings": self._settings(),
            "splits": {s: [c.case_id for c in plan[s]] for s in SPLITS},
            "files": files,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def is_prepared(self, fingerprint: str) -> bool:
        """True when all three split files exist with this fingerprint and format version."""
        for split in SPLITS:
            path = self.split_path(split)
            if not path.is_file():
                return False
            try:
                with h5py.File(path, "r") as f:
                    if f.attrs.get("fingerprint") != fingerprint:
                        return False
                    if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                        return False
            except OSError:
                return False
        return True

    # ---------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Write ``data_dir/{train,val,test}.h5`` unless they are up to date (see module doc).

        Stores nothing on ``self`` (Lightning calls it on one process per node only).
        """
        plan = self._plan()
        self._check_splits(plan)
        fp = self.fingerprint(plan)
        if self.is_prepared(fp):
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmps = {s: self.split_path(s).with_name(f"{s}.h5.tmp") for s in SPLITS}
        total = sum(len(plan[s]) for s in SPLITS)
        try:
            with Progress(
                TextColumn(f"[bold]{self.dataset_name}[/bold] {{task.description}}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} cases"),
                TimeElapsedColumn(),
                disable=not self.progress,
                transient=False,
            ) as progress:
                task = progress.add_task("preprocessing", total=total)
                for split in SPLITS:
                    self._write_split(tmps[split], plan[split], fp, progress, task, split)
            for split in SPLITS:
                os.replace(tmps[split], self.split_path(split))
        finally:
            for tmp in tmps.values():
                if tmp.exists():
                    tmp.unlink()

    def _write_split(
        self,
        tmp: Path,
        cases: Iterable[CaseSpec],
        fp: str,
        progress: Progress,
        task: Any,
        split: str,
    ) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["dataset"] = self.dataset_name
            f.attrs["class_names"] = json.dumps(self.class_names)
            f.attrs["channel_names"] = json.dumps(self.channel_names)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["fingerprint"] = fp
            f.attrs["split"] = split
            for spec in cases:
                progress.update(task, description=f"{split}: {spec.case_id}")
                case = self._load_case(spec)
                self._check_case(spec.case_id, case)
                self._write_case(f, spec.case_id, case)
                del case
                progress.advance(task)

    def _check_case(self, case_id: str, case: CaseData) -> None:
        c = self.in_channels
        if case.image.ndim != 4 or case.image.shape[0] != c:
            raise ValueError(
                f"Case {case_id}: image has shape {case.image.shape}, expected ({c}, D, H, W)."
            )
        if case.label.shape != case.image.shape[1:]:
            raise ValueError(
                f"Case {case_id}: label shape {case.label.shape} does not match image shape "
                f"{case.image.shape[1:]} (D, H, W)."
            )
        check_finite(case.image, f"Case {case_id}: preprocessed image")
        if case.label.dtype != np.uint8 or int(case.label.max(initial=0)) >= self.num_classes:
            raise ValueError(
                f"Case {case_id}: label must be uint8 in 0..{self.num_classes - 1}, got dtype "
                f"{case.label.dtype} with max {case.label.max()}."
            )

    def _write_case(self, f: h5py.File, case_id: str, case: CaseData) -> None:
        c, d, h, w = case.image.shape
        g = f.create_group(case_id)
        for name, array, chunks in (
            ("image", np.ascontiguousarray(case.image, dtype=np.float32), (c, 1, h, w)),
            ("label", np.ascontiguousarray(case.label, dtype=np.uint8), (1, h, w)),
        ):
            # every chunk is written at once below: skip HDF5's fill of new chunks
            dataset = g.create_dataset(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=chunks,
                compression=self.compression,
                fill_time="never",
            )
            dataset.write_direct(array)
        g.attrs["spacing"] = np.asarray(case.spacing, dtype=np.float64)
        g.attrs["affine"] = np.asarray(case.affine, dtype=np.float64)
        for key, value in case.attrs.items():
            g.attrs[key] = value

    def _check_file(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"HDF5 split file {path} not found; run prepare_data() first.")
        with h5py.File(path, "r") as f:
            names = json.loads(f.attrs["class_names"])
            if names != self.class_names:
                raise ValueError(
                    f"{path} holds classes {names}, but {type(self).__name__} expects "
                    f"{self.class_names}; point data_dir at this dataset's own folder."
                )

    def setup(self, stage: str | None = None) -> None:
        """Open the split files needed by ``stage`` (fit, validate, test, predict or None)."""
        if stage in (None, "fit"):
            self._check_file(self.split_path("train"))
            self.train_set = SliceDataset(
                self.split_path("train"), build_train_transform(self.image_size)
            )
        if stage in (None, "fit", "validate"):
            self._check_file(self.split_path("val"))
            self.val_set = SliceDataset(
                self.split_path("val"), build_eval_transform(self.image_size)
            )
        if stage in (None, "test", "predict"):
            self._check_file(self.split_path("test"))
            self.test_set = VolumeDataset(self.split_path("test"))

    def _loader(self, dataset: Dataset | None, name: str, **kwargs: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"No {name} dataset: call setup() with the matching stage first.")
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", batch_size=1, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "predict", batch_size=1, shuffle=False)

    def teardown(self, stage: str | None = None) -> None:
        for ds in (self.train_set, self.val_set, self.test_set):
            if ds is not None:
                ds.close()
