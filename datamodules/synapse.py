"""Synapse multi-organ CT (BTCV abdomen) under the TransUNet protocol.

Raw layouts accepted as ``raw_dir`` (either):

1. the BTCV release: ``RawData/Training/img/imgNNNN.nii.gz`` and
   ``RawData/Training/label/labelNNNN.nii.gz`` (``raw_dir`` may also be ``RawData`` itself);
2. TransUNet's preprocessed release: ``train_npz/caseNNNN_sliceNNN.npz`` (keys ``image``,
   ``label``; already windowed and relabelled) and ``test_vol_h5/caseNNNN.npy.h5``
   (datasets ``image``, ``label`` of shape (D, H, W)). That release has no geometry, so
   cases are stored as given with ``spacing`` (1, 1, 1) (voxel units, as TransUNet evaluates)
   and an identity affine.

Protocol: the 8 organs kept and relabelled 1 spleen, 2 right kidney, 3 left kidney,
4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas (BTCV 6 -> 5, 7 -> 6, 8 -> 7, 11 -> 8;
BTCV 5, 9, 10, 12, 13 -> background); HU clipped to [-125, 275] and scaled to [0, 1];
TransUNet's 18 training and 12 test cases. TransUNet defines no validation split: by default
3 training cases (``val_cases``: 7, 28, 39) are held out, so 15 cases train and validation never
sees a test case. ``train_on_all=True`` trains on all 18 as in the paper; validation then runs
on ``val_cases``, which are also training cases (a training-fit monitor, not held-out data).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules.base import SliceDataModule
from datamodules.raw import CaseData, CaseSpec, check_finite, check_label_values, load_nifti_case
from datamodules.transforms import DataProtocol

__all__ = [
    "BTCV_TO_TRANSUNET",
    "SYNAPSE_CLASS_NAMES",
    "SYNAPSE_TEST_CASES",
    "SYNAPSE_TRAIN_CASES",
    "SynapseDataModule",
]

SYNAPSE_CLASS_NAMES = (
    "background",
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "liver",
    "stomach",
    "aorta",
    "pancreas",
)
SYNAPSE_TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
SYNAPSE_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
SYNAPSE_VAL_CASES = (7, 28, 39)
# BTCV label -> TransUNet label (others -> 0)
BTCV_TO_TRANSUNET = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
_BTCV_NUM_LABELS = 14  # 0..13
_LUT = np.zeros(256, dtype=np.uint8)
for _btcv, _ours in BTCV_TO_TRANSUNET.items():
    _LUT[_btcv] = _ours

LAYOUT = """  <raw_dir>/RawData/Training/img/imgNNNN.nii.gz      (CT, HU)
  <raw_dir>/RawData/Training/label/labelNNNN.nii.gz  (BTCV labels 0..13)
or TransUNet's preprocessed release:
  <raw_dir>/train_npz/caseNNNN_sliceNNN.npz          (keys image, label)
  <raw_dir>/test_vol_h5/caseNNNN.npy.h5              (datasets image, label: (D, H, W))"""


def _case_name(n: int) -> str:
    return f"case{n:04d}"


class SynapseDataModule(SliceDataModule):
    """Synapse multi-organ CT, TransUNet protocol (see the module docstring).

    Args:
        data_dir: HDF5 output folder (default ``data/synapse``).
        raw_dir: the raw release (default ``data/raw/synapse``), either layout of the module
            docstring.
        train_cases: training case numbers (default: TransUNet's 18 minus ``val_cases``, or
            all 18 with ``train_on_all``).
        val_cases: validation case numbers (default 7, 28, 39: held-out training cases).
        test_cases: test case numbers (default: TransUNet's 12).
        train_on_all: train on all of ``train_cases`` (default TransUNet's 18) including the
            validation cases, to match the paper.
        hu_window: (low, high) HU window mapped to [0, 1].
        image_size, batch_size, num_workers, seed, compression, pin_memory, progress,
            protocol: see :class:`~datamodules.base.SliceDataModule`.
    """

    dataset_name = "synapse"
    default_class_names = SYNAPSE_CLASS_NAMES
    default_channel_names = ("ct",)

    def __init__(
        self,
        data_dir: str = "data/synapse",
        raw_dir: str = "data/raw/synapse",
        train_cases: Sequence[int] | None = None,
        val_cases: Sequence[int] = SYNAPSE_VAL_CASES,
        test_cases: Sequence[int] = SYNAPSE_TEST_CASES,
        train_on_all: bool = False,
        hu_window: tuple[float, float] = (-125.0, 275.0),
        image_size: int = 224,
        batch_size: int = 24,
        num_workers: int = 4,
        seed: int = 1234,
        compression: str | None = None,
        pin_memory: bool = False,
        progress: bool = True,
        protocol: DataProtocol = "default",
    ) -> None:
        super().__init__(
            data_dir=data_dir,
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
        if len(hu_window) != 2 or not hu_window[0] < hu_window[1]:
            raise ValueError(f"Expected argument `hu_window` to be (low, high), got {hu_window}")
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.val_cases = [int(c) for c in val_cases]
        self.test_cases = [int(c) for c in test_cases]
        if train_cases is None:
            base = list(SYNAPSE_TRAIN_CASES)
            train = base if train_on_all else [c for c in base if c not in self.val_cases]
        else:
            train = [int(c) for c in train_cases]
            if train_on_all:
                train = sorted(set(train) | set(self.val_cases))
        self.train_cases = train
        self.train_on_all = train_on_all

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "hu_window": self.hu_window}

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Clip HU to ``hu_window`` and scale to [0, 1]: ``(clip(x, lo, hi) - lo) / (hi - lo)``.

        Args:
            image: (C, D, H, W) (or any shape) raw CT in HU.

        Returns:
            float32, same shape, C-contiguous.
        """
        lo, hi = self.hu_window
        # (clip(x, lo, hi) - lo) / (hi - lo) == clip(x / (hi - lo) - lo / (hi - lo), 0, 1):
        # one multiply (int16 in, float32 out), one add, one clip, all in place
        scale = np.float32(1.0 / (hi - lo))
        out = np.multiply(image, scale, dtype=np.float32)
        out -= np.float32(lo) * scale
        np.clip(out, 0.0, 1.0, out=out)
        return np.ascontiguousarray(out)

    # ---------------------------------------------------------------- plan
    def _plan(self) -> dict[str, list[CaseSpec]]:
        raw = self._require_raw_dir(LAYOUT)
        nifti_root = next(
            (r for r in (raw / "RawData" / "Training", raw / "Training") if (r / "img").is_dir()),
            None,
        )
        npz_dir, h5_dir = raw / "train_npz", raw / "test_vol_h5"
        if nifti_root is None and not (npz_dir.is_dir() or h5_dir.is_dir()):
            raise FileNotFoundError(
                f"raw_dir {raw} has neither RawData/Training/img nor train_npz/ or test_vol_h5/. "
                f"Expected layout:\n{LAYOUT}"
            )
        splits = {"train": self.train_cases, "val": self.val_cases, "test": self.test_cases}
        plan: dict[str, list[CaseSpec]] = {}
        for split, numbers in splits.items():
            plan[split] = [
                self._nifti_spec(nifti_root, n)
                if nifti_root is not None
                else self._preprocessed_spec(npz_dir, h5_dir, n)
                for n in numbers
            ]
        return plan

    @staticmethod
    def _nifti_spec(root: Path, n: int) -> CaseSpec:
        image = root / "img" / f"img{n:04d}.nii.gz"
        label = root / "label" / f"label{n:04d}.nii.gz"
        if not image.is_file():
            raise FileNotFoundError(
                f"Image of {_case_name(n)} not found: {image}. Expected layout:\n{LAYOUT}"
            )
        if not label.is_file():
            raise FileNotFoundError(
                f"Image {image} has no label: expected {label}. Expected layout:\n{LAYOUT}"
            )
        return CaseSpec(_case_name(n), (image, label), (("source", "nifti"),))

    @staticmethod
    def _preprocessed_spec(npz_dir: Path, h5_dir: Path, n: int) -> CaseSpec:
        name = _case_name(n)
        slices = []
        if npz_dir.is_dir():
            pattern = re.compile(rf"^{name}_slice(\d+)\.npz$")
            found = [(pattern.match(p.name), p) for p in npz_dir.iterdir()]
            slices = [p for _, p in sorted((int(m.group(1)), p) for m, p in found if m)]
        if slices:
            return CaseSpec(name, tuple(slices), (("source", "npz"),))
        vol = h5_dir / f"{name}.npy.h5"
        if vol.is_file():
            return CaseSpec(name, (vol,), (("source", "h5"),))
        raise FileNotFoundError(
            f"{name} not found in TransUNet's preprocessed release: neither "
            f"{npz_dir}/{name}_sliceNNN.npz nor {vol}. Expected layout:\n{LAYOUT}"
        )

    # ---------------------------------------------------------------- load
    def _load_case(self, spec: CaseSpec) -> CaseData:
        source = spec.get("source")
        if source == "nifti":
            image_path, label_path = spec.files
            (ct,), label, affine, spacing, attrs = load_nifti_case(
                spec.case_id, [image_path], label_path, _BTCV_NUM_LABELS, label_lut=_LUT
            )
            return CaseData(
                image=self.preprocess_image(ct)[None],
                label=label,
                spacing=spacing,
                affine=affine,
                attrs=attrs,
            )
        if source == "npz":
            images, labels = [], []
            for path in spec.files:
                try:
                    with np.load(path) as z:
                        images.append(np.asarray(z["image"], dtype=np.float32))
                        labels.append(np.asarray(z["label"]))
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                    raise ValueError(
                        f"Cannot read {path}: corrupt, truncated or missing the keys 'image' "
                        f"and 'label' ({exc})."
                    ) from exc
            shapes = {a.shape for a in images} | {a.shape for a in labels}
            if len(shapes) != 1:
                raise ValueError(
                    f"Case {spec.case_id}: slices in {spec.files[0].parent} have differing "
                    f"shapes {sorted(shapes)}; image and label slices must share one shape."
                )
            image, label = np.stack(images), np.stack(labels)
            what = f"Case {spec.case_id} ({spec.files[0].parent}/{spec.case_id}_slice*.npz)"
        else:
            (path,) = spec.files
            try:
                with h5py.File(path, "r") as f:
                    image = np.asarray(f["image"][...], dtype=np.float32)
                    label = np.asarray(f["label"][...])
            except (OSError, KeyError) as exc:
                raise ValueError(
                    f"Cannot read {path}: corrupt, truncated or missing the datasets 'image' "
                    f"and 'label' ({exc})."
                ) from exc
            if image.ndim != 3 or image.shape != label.shape:
                raise ValueError(
                    f"Case {spec.case_id}: {path} holds image {image.shape} and label "
                    f"{label.shape}; expected both (D, H, W) of one shape."
                )
            what = f"Case {spec.case_id} ({path})"
        check_finite(image, f"{what}: image")
        label = check_label_values(label, len(self.class_names), f"{what}: label")
        return CaseData(
            image=image[None],
            label=label,
            spacing=np.ones(3),
            affine=np.eye(4),
            attrs={"spacing_known": False},
        )
