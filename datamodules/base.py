"""The datamodule base: raw volumes -> HDF5 split files -> slice / volume loaders.

Raw reading and checks live in ``datamodules.raw``, the slice transforms in
``datamodules.transforms``, the HDF5 layout with its readers in ``datamodules.hdf5`` and the
case writer with the fingerprints in ``datamodules.split_files``; this module holds
``SliceDataModule``, which prepares the files (atomically, under a lock) and serves the loaders.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from datamodules.hdf5 import FORMAT_VERSION, SPLITS, SliceDataset, VolumeDataset
from datamodules.loader import EpochSeeds, EpochShuffleSampler, SliceLoader, run_seed
from datamodules.locking import data_dir_lock
from datamodules.raw import CaseData, CaseSpec
from datamodules.split_files import (
    PlainProgress,
    check_case,
    check_splits,
    json_sha256,
    load_ahead,
    plan_fingerprint,
    write_case,
)
from datamodules.transforms import (
    DataProtocol,
    build_eval_transform,
    build_train_transform,
    check_protocol,
)

__all__ = ["SliceDataModule"]

#: cases read and preprocessed in background threads while the current one is written
#: (``split_files.load_ahead``): at most ``LOAD_AHEAD + 1`` cases in memory at once
LOAD_AHEAD = 2
#: split files each evaluation stage reads (the raw data is not needed once they exist)
_EVAL_SPLITS = {"validate": ("val",), "test": ("test",), "predict": ("test",)}


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
        progress: show preprocessing progress: a rich bar on a terminal, plain lines
            (``[data] ...``, at least every 10 s) when stdout is a file or pipe.
        protocol: ``"default"`` (aligned OpenCV resize, then augmentation at the small size) or
            ``"transunet"`` (TransUNet's ``RandomGenerator`` with scipy, step by step); see
            ``datamodules.transforms``. The model's ``test_protocol`` follows it unless set.
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
        protocol: DataProtocol = "default",
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
        self.protocol = check_protocol(protocol)
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
        self._plain_progress: PlainProgress | None = None

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

    def fingerprint(self, plan: dict[str, list[CaseSpec]]) -> str:
        """SHA-256 of the settings, the split case lists and the raw files' names/sizes/mtimes."""
        return plan_fingerprint(self._settings(), plan, self.raw_dir)

    def settings_fingerprint(self) -> str:
        """SHA-256 of :meth:`_settings` only (stored in each split file as
        ``settings_fingerprint``; lets evaluation trust prepared files without the raw data)."""
        return json_sha256(self._settings())

    def _prepared_for_evaluation(self) -> bool:
        """``test`` / ``validate`` / ``predict``: True when the split files that stage reads
        exist with this configuration's settings fingerprint; the raw data is then not needed,
        and when it is missing, unreadable or changed this says so and the files are used."""
        trainer = getattr(self, "trainer", None)
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        splits = _EVAL_SPLITS.get(str(getattr(fn, "value", fn)))
        if not splits:
            return False
        wanted = self.settings_fingerprint()
        for split in splits:
            try:
                with h5py.File(self.split_path(split), "r") as f:
                    if f.attrs.get("settings_fingerprint") != wanted:
                        return False
            except OSError:
                return False
        try:
            plan = self._plan()
            self._check_splits(plan)
            if self.is_prepared(self.fingerprint(plan)):
                return True
            problem = "has changed since the split files were written"
        except Exception as err:  # noqa: BLE001 - any raw-data problem: the files are enough
            problem = f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0]})"
        files = ", ".join(str(self.split_path(s)) for s in splits)
        print(
            f"[data] {self.dataset_name}: the raw data {problem}; evaluating on the prepared "
            f"{files} (written with the same settings, checked by their settings fingerprint)",
            flush=True,
        )
        return True

    def _check_splits(self, plan: dict[str, list[CaseSpec]]) -> None:
        """Every split non-empty, the test split disjoint from the others (subclasses with
        another protocol override it)."""
        check_splits(plan)

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

        Stores nothing on ``self`` (Lightning calls it on one process per node only). Holds
        ``<data_dir>.lock`` (:mod:`datamodules.locking`): concurrent callers wait for the
        first, then find the files up to date.
        """
        with data_dir_lock(self.data_dir):
            self._prepare_data_locked()

    def _prepare_data_locked(self) -> None:
        if self._prepared_for_evaluation():
            return
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
                disable=not self.progress or not sys.stdout.isatty(),
                transient=False,
            ) as progress:
                task = progress.add_task("preprocessing", total=total)
                if self.progress and not sys.stdout.isatty():
                    self._plain_progress = PlainProgress(self.dataset_name, total)
                for split in SPLITS:
                    self._write_split(tmps[split], plan[split], fp, progress, task, split)
            for split in SPLITS:
                os.replace(tmps[split], self.split_path(split))
        finally:
            self._plain_progress = None
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
            f.attrs["settings_fingerprint"] = self.settings_fingerprint()
            f.attrs["split"] = split
            for spec, case in load_ahead(self._load_case, cases, LOAD_AHEAD):
                progress.update(task, description=f"{split}: {spec.case_id}")
                self._check_case(spec.case_id, case)
                self._write_case(f, spec.case_id, case)
                del case
                progress.advance(task)
                if self._plain_progress is not None:
                    self._plain_progress.advance(f"{split}: {spec.case_id}")

    def _check_case(self, case_id: str, case: CaseData) -> None:
        check_case(case_id, case, self.in_channels, self.num_classes)

    def _write_case(self, f: h5py.File, case_id: str, case: CaseData) -> None:
        write_case(f, case_id, case, self.compression)

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
                self.split_path("train"), build_train_transform(self.image_size, self.protocol)
            )
        if stage in (None, "fit", "validate"):
            self._check_file(self.split_path("val"))
            self.val_set = SliceDataset(
                self.split_path("val"), build_eval_transform(self.image_size, self.protocol)
            )
        if stage in (None, "test", "predict"):
            self._check_file(self.split_path("test"))
            self.test_set = VolumeDataset(self.split_path("test"))

    def _loader(self, dataset: Dataset | None, name: str, **kwargs: Any) -> DataLoader:
        """Slice splits get a :class:`~datamodules.loader.SliceLoader` (uint8 labels between
        processes, int64 in its batches), volume splits a plain ``DataLoader``."""
        if dataset is None:
            raise RuntimeError(f"No {name} dataset: call setup() with the matching stage first.")
        loader_class = SliceLoader if isinstance(dataset, SliceDataset) else DataLoader
        return loader_class(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training slices; a last batch of a single slice is dropped (BatchNorm
        cannot train on one sample: "Expected more than 1 value per channel"). The order and
        the augmentation of each epoch follow from the run's seed and the epoch
        (:mod:`datamodules.loader`), so a resume at an epoch boundary repeats them."""
        if self.train_set is None:
            return self._loader(None, "train")
        trainer = getattr(self, "trainer", None)
        world = getattr(trainer, "world_size", 1) or 1
        per_rank = -(-len(self.train_set) // world)  # DistributedSampler pads to ceil(n / world)
        drop_last = self.batch_size > 1 and per_rank % self.batch_size == 1
        seed = run_seed()
        self.train_set.epoch_seeds = EpochSeeds(seed, getattr(trainer, "global_rank", 0) or 0)
        sampler = EpochShuffleSampler(self.train_set, seed)
        return self._loader(
            self.train_set,
            "train",
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
        )

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
