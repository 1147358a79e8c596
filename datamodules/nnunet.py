"""Any nnU-Net v2 (``DatasetXXX_Name``) or Medical Segmentation Decathlon (``TaskXX_Name``) dataset.

Layout and ``dataset.json``: ``datamodules.nnunet_layout``; readers: ``nnunet_io``; intensity
normalization per ``channel_names`` entry: ``nnunet_norm``; folds: ``nnunet_splits``.

Splits: ``fold`` k (default 0) of ``splits_file`` (default ``<raw_dir>/splits_final.json`` when
present), else of nnU-Net v2's default 5 folds; ``fold="all"`` trains and validates on every
case. The test split (``test_split="auto"``) is ``imagesTs`` + ``labelsTs`` when both exist,
else the validation fold; ``"held_out"`` always tests the validation fold (cross-validation:
every training case tested once, by the fold that held it out), ``"imagesTs"`` requires them.
Slices are taken along the axis of largest (median) voxel spacing of the training cases when
the spacing is anisotropic, else along the superior axis; 2D datasets give one slice per case.
An ``ignore`` label is stored as its value (``ignore_index`` = number of classes).
Images are stored raw, with the per-channel maps that normalize them as they are read
(``datamodules.intensity``); the CT statistics (foreground intensities of every training case,
all folds) are stored in each split file's ``intensity_statistics`` attribute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules.base import SliceDataModule
from datamodules.hdf5 import SPLITS
from datamodules.intensity import decode_maps, encode_maps, storage_dtype
from datamodules.nnunet_cases import RawCase, read_case, to_canonical
from datamodules.nnunet_io import NATURAL_2D_ENDINGS, raw_spacing
from datamodules.nnunet_layout import (
    DatasetError,
    DatasetInfo,
    labelled_test_cases,
    read_dataset_json,
    training_cases,
)
from datamodules.nnunet_norm import (
    TOTAL_FOREGROUND_SAMPLES,
    foreground_statistics,
    intensity_map,
    normalize_image,
    sample_foreground,
    scheme_of,
)
from datamodules.nnunet_splits import fold_cases, read_splits_file
from datamodules.raw import CaseData, CaseSpec, check_finite
from datamodules.transforms import DataProtocol

__all__ = ["NNUNetDataModule", "default_data_dir"]

#: the choices of ``test_split`` (see the module docstring)
TEST_SPLITS = ("auto", "held_out", "imagesTs")
#: spacing ratio (largest / smallest) below which a volume counts as isotropic
ISOTROPY_TOLERANCE = 1.05


def default_data_dir(raw_dir: str | Path, fold: int | str, test_split: str = "auto") -> Path:
    """``data/nnunet/<dataset folder name>/fold_<fold>`` (``fold_<fold>_held_out`` for
    ``test_split="held_out"``, whose test file differs when the dataset has ``imagesTs``)."""
    suffix = "_held_out" if test_split == "held_out" else ""
    return Path("data") / "nnunet" / Path(raw_dir).resolve().name / f"fold_{fold}{suffix}"


class NNUNetDataModule(SliceDataModule):
    """An nnU-Net v2 or MSD raw dataset (see the module docstring).

    Args:
        raw_dir: the dataset folder holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``.
        data_dir: HDF5 output folder (default :func:`default_data_dir`).
        fold: validation fold 0..4 (or as many as ``splits_file`` holds), or ``"all"``.
        splits_file: nnU-Net's ``splits_final.json`` (default: the one in ``raw_dir``, if any).
        test_split: ``"auto"``, ``"held_out"`` or ``"imagesTs"`` (see the module docstring).
        image_size, batch_size, num_workers, seed, compression, pin_memory, progress,
            protocol: see :class:`~datamodules.base.SliceDataModule`.

    Raises:
        DatasetError: a bad ``dataset.json`` (one line naming the file).
    """

    dataset_name = "nnunet"

    def __init__(
        self,
        raw_dir: str,
        data_dir: str | None = None,
        fold: int | str = 0,
        splits_file: str | None = None,
        test_split: str = "auto",
        image_size: int = 224,
        batch_size: int = 24,
        num_workers: int = 4,
        seed: int = 1234,
        compression: str | None = None,
        pin_memory: bool = False,
        progress: bool = True,
        protocol: DataProtocol = "default",
    ) -> None:
        if isinstance(fold, str) and fold != "all":
            if not fold.isdigit():
                raise ValueError(f"Expected argument `fold` to be an int or 'all', got {fold!r}")
            fold = int(fold)
        if test_split not in TEST_SPLITS:
            raise ValueError(
                f"Expected argument `test_split` to be one of {list(TEST_SPLITS)}, got "
                f"{test_split!r}"
            )
        if test_split == "held_out" and fold == "all":
            raise ValueError(
                "Expected argument `fold` to be a fold number with test_split='held_out': "
                "fold='all' holds no case out"
            )
        super().__init__(
            data_dir=data_dir
            if data_dir is not None
            else default_data_dir(raw_dir, fold, test_split),
            raw_dir=raw_dir,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            compression=compression,
            pin_memory=pin_memory,
            progress=progress,
            protocol=protocol,
        )
        self.fold = fold
        self.splits_file = None if splits_file is None else Path(splits_file)
        self.test_split = test_split
        meta = self._dataset_meta()
        self.dataset_name = meta["dataset"]
        self.class_names = list(meta["class_names"])
        self.channel_names = list(meta["channel_names"])
        self.num_classes = len(self.class_names)
        self.in_channels = len(self.channel_names)
        #: the losses' ``ignore_index`` (the ``ignore`` label's value), or None
        self.ignore_index: int | None = meta["ignore_index"]
        self.file_ending: str = meta["file_ending"]
        #: MSD layout: one 4D file ``<case><file_ending>`` per case, modality last
        self.msd: bool = meta["msd"]
        self.val_cases: list[str] = []
        # case id -> foreground samples of its CT channels, drawn while prepare_data runs
        self._drawn: dict[str, dict[int, np.ndarray]] = {}
        # (case id, files) -> temporary split file that already holds the case
        self._written: dict[tuple[str, tuple[Path, ...]], Path] = {}

    def _dataset_meta(self) -> dict[str, Any]:
        """Names, channels, ignore label and file ending from ``dataset.json``; without it,
        from prepared split files in ``data_dir`` (evaluation needs no raw data)."""
        try:
            info = read_dataset_json(self.raw_dir)
        except DatasetError:
            for split in SPLITS:
                try:
                    with h5py.File(self.split_path(split), "r") as f:
                        ignore = int(f.attrs["ignore_index"])
                        return {
                            "dataset": str(f.attrs["dataset"]),
                            "class_names": json.loads(f.attrs["class_names"]),
                            "channel_names": json.loads(f.attrs["channel_names"]),
                            "ignore_index": None if ignore < 0 else ignore,
                            "file_ending": str(f.attrs["file_ending"]),
                            "msd": bool(f.attrs.get("msd", False)),
                        }
                except (OSError, KeyError):
                    continue
            raise
        return {
            "dataset": info.name,
            "class_names": info.class_names,
            "channel_names": info.channel_names,
            "ignore_index": info.ignore_label,
            "file_ending": info.file_ending,
            "msd": info.msd,
        }

    def prediction_slice_axis(self) -> str:
        """The slice axis the prepared data was cut along (a case's ``slice_axis`` in any split
        file), else the one :meth:`_plan` would choose from the raw training cases.

        Raises:
            DatasetError: neither prepared split files nor the raw dataset are readable.
        """
        if self.file_ending in NATURAL_2D_ENDINGS:
            return "superior"
        for split in SPLITS:
            try:
                with h5py.File(self.split_path(split), "r") as f:
                    for case_id in f:
                        return str(f[case_id].attrs["slice_axis"])
            except (OSError, KeyError):
                continue
        info = self._info()
        return self._slice_axis(info, training_cases(info))

    # ---------------------------------------------------------------- plan
    def _info(self) -> DatasetInfo:
        return read_dataset_json(
            self._require_raw_dir("<raw_dir>/dataset.json, imagesTr/, labelsTr/")
        )

    def _splits_path(self) -> Path | None:
        if self.splits_file is not None:
            if not self.splits_file.is_file():
                raise DatasetError(f"splits_file {self.splits_file} not found")
            return self.splits_file
        found = self.raw_dir / "splits_final.json" if self.raw_dir is not None else None
        return found if found is not None and found.is_file() else None

    def _slice_axis(self, info: DatasetInfo, cases: list) -> str:
        """``superior`` for isotropic or 2D data, else the raw voxel axis of largest median
        spacing (``voxel0``, ``voxel1`` or ``acquisition`` for the third)."""
        if info.file_ending in NATURAL_2D_ENDINGS:
            return "superior"
        spacing = np.median([raw_spacing(c.images[0], info.file_ending) for c in cases], axis=0)
        if spacing.max() <= spacing.min() * ISOTROPY_TOLERANCE:
            return "superior"
        return ("voxel0", "voxel1", "acquisition")[int(np.argmax(spacing))]

    def _plan(self) -> dict[str, list[CaseSpec]]:
        info = self._info()
        cases = training_cases(info)
        by_id = {c.case_id: c for c in cases}
        path = self._splits_path()
        splits = read_splits_file(path, list(by_id)) if path is not None else None
        train_ids, val_ids = fold_cases(list(by_id), self.fold, splits)
        axis = self._slice_axis(info, cases)
        test = [] if self.test_split == "held_out" else labelled_test_cases(info)
        if self.test_split == "imagesTs" and not test:
            raise DatasetError(
                f"test_split='imagesTs' needs {info.root / 'imagesTs'} and "
                f"{info.root / 'labelsTs'}; without them use test_split='auto' or 'held_out'"
            )
        held_out = not test
        test = test or [by_id[c] for c in val_ids]

        def spec(case: Any, training: bool) -> CaseSpec:
            extra = (
                ("n_images", len(case.images)),
                ("slice_axis", axis),
                ("held_out", held_out),
                ("training", training),
                ("n_training", len(set(train_ids) | set(val_ids))),
            )
            return CaseSpec(case.case_id, (*case.images, case.label), extra)

        return {
            "train": [spec(by_id[c], True) for c in train_ids],
            "val": [spec(by_id[c], True) for c in val_ids],
            "test": [spec(c, held_out) for c in test],
        }

    def _check_splits(self, plan: dict[str, list[CaseSpec]]) -> None:
        """Every split non-empty; ``imagesTs`` cases disjoint from the training cases (the
        held-out fold, when it is the test split, is the validation split by design)."""
        for split in ("train", "val", "test"):
            if not plan.get(split):
                raise DatasetError(f"The {split!r} split of {self.raw_dir} is empty")
        if plan["test"][0].get("held_out"):
            return
        super()._check_splits(plan)

    # ---------------------------------------------------------------- CT statistics
    def _ct_channels(self) -> list[int]:
        return [i for i, name in enumerate(self.channel_names) if scheme_of(name) == "ct"]

    def _read(self, spec: CaseSpec) -> RawCase:
        n = int(spec.get("n_images"))
        label = spec.files[n] if len(spec.files) > n else None
        return read_case(
            spec.case_id,
            spec.files[:n],
            label,
            self.file_ending,
            self.in_channels,
            self.num_classes + (self.ignore_index is not None),
        )

    def _statistics(self) -> list[dict[str, float] | None]:
        """Per channel, the CT statistics stored with the prepared data (``None`` elsewhere)."""
        if not self._ct_channels():
            return [None] * self.in_channels
        for split in ("test", "train", "val"):
            try:
                with h5py.File(self.split_path(split), "r") as f:
                    return json.loads(f.attrs["intensity_statistics"])
            except (OSError, KeyError):
                continue
        raise DatasetError(
            f"No prepared split file in {self.data_dir} holds the CT statistics of the training "
            f"set: run prepare_data first"
        )

    # ---------------------------------------------------------------- preprocessing
    def _prepare_data_locked(self) -> None:
        """One pass over the files: images are written raw while the CT channels' foreground
        is sampled; their maps are set in the temporary split files once every training case
        is read."""
        self._written, self._drawn = {}, {}
        try:
            super()._prepare_data_locked()
        finally:
            self._written, self._drawn = {}, {}

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """nnU-Net's normalization of each channel of a (C, D, H, W) image (``nnunet_norm``)."""
        return normalize_image(list(image), self.channel_names, self._statistics())

    def _load_case(self, spec: CaseSpec) -> CaseData:
        case = self._read(spec)
        ct, names = self._ct_channels(), self.channel_names
        if ct and spec.get("training"):  # each case is read once (see _write_split)
            order = "C" if self.file_ending in NATURAL_2D_ENDINGS else "F"
            per_case = TOTAL_FOREGROUND_SAMPLES // int(spec.get("n_training"))
            drawn = sample_foreground(case.channels, case.label, ct, per_case, order)
            self._drawn[spec.case_id] = drawn
        channels, label, affine, spacing, attrs = to_canonical(
            case, self.file_ending, str(spec.get("slice_axis"))
        )
        # stored raw with the maps that normalize it when read (``datamodules.intensity``); the
        # CT maps need the training set's statistics and are set at the end (see _write_split)
        image = np.empty((len(channels), *label.shape), storage_dtype([x.dtype for x in channels]))
        for c, x in enumerate(channels):  # no float64 stack of scaled NIfTI data
            image[c] = x
        maps = [None if c in ct else intensity_map(x, names[c]) for c, x in enumerate(channels)]
        attrs["intensity"] = encode_maps(maps)
        return CaseData(image=image, label=label, spacing=spacing, affine=affine, attrs=attrs)

    def _check_case(self, case_id: str, case: CaseData) -> None:
        """As the base check, with the ignore label allowed in the label."""
        if case.image.ndim != 4 or case.image.shape[0] != self.in_channels:
            raise DatasetError(f"Case {case_id}: image of shape {case.image.shape}")
        check_finite(case.image, f"Case {case_id}: image")

    def _write_split(
        self, tmp: Path, cases: Any, fp: str, progress: Any, task: Any, split: str
    ) -> None:
        """The base writer for cases not written yet; a case already in an earlier split
        (the held-out fold as test split, ``fold="all"``) is copied from that split's file,
        so every file is read once. After the last split, store the fold, ignore index and CT
        statistics in each of the three temporary files, and the CT channels' maps in each
        case (the images stay raw)."""
        cases = list(cases)
        new = [c for c in cases if (c.case_id, c.files) not in self._written]
        super()._write_split(tmp, new, fp, progress, task, split)
        with h5py.File(tmp, "a") as dst:
            for spec in cases:
                key = (spec.case_id, spec.files)
                if key in self._written:
                    with h5py.File(self._written[key], "r") as src:
                        src.copy(src[spec.case_id], dst, name=spec.case_id)
                    progress.advance(task)
                else:
                    self._written[key] = tmp
        if split != SPLITS[-1]:
            return
        ct = self._ct_channels()
        stats: list[dict[str, float] | None] = [None] * self.in_channels
        # pooled in the order the cases were written (they are loaded in threads)
        drawn = [self._drawn[case_id] for case_id, _ in self._written if case_id in self._drawn]
        for c in ct:
            stats[c] = foreground_statistics([d[c] for d in drawn])
        ct_maps = {c: intensity_map(np.empty(0), self.channel_names[c], stats[c]) for c in ct}
        for split in SPLITS:
            with h5py.File(self.split_path(split).with_name(f"{split}.h5.tmp"), "a") as f:
                f.attrs["fold"] = str(self.fold)
                f.attrs["file_ending"] = self.file_ending
                f.attrs["msd"] = self.msd
                f.attrs["ignore_index"] = -1 if self.ignore_index is None else self.ignore_index
                f.attrs["intensity_statistics"] = json.dumps(stats)
                for case_id in f if ct else ():
                    maps = decode_maps(f[case_id].attrs)
                    maps = [ct_maps.get(c, spec) for c, spec in enumerate(maps)]
                    f[case_id].attrs["intensity"] = encode_maps(maps)

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "fold": str(self.fold),
            "test_split": self.test_split,
            "ignore_index": self.ignore_index,
            "file_ending": self.file_ending,
        }

    def setup(self, stage: str | None = None) -> None:
        """Open the split files; a training run logs its fold and validation case ids as
        hyperparameters (``data/fold``, ``data/val_cases``) to every logger it has."""
        super().setup(stage)
        if self.val_set is None:
            return
        self.val_cases = list(self.val_set.cases)
        trainer = getattr(self, "trainer", None)
        if stage == "fit" and trainer is not None:
            record = {"data/fold": str(self.fold), "data/val_cases": self.val_cases}
            for logger in trainer.loggers:
                logger.log_hyperparams(record)
