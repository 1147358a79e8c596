"""MSSEG-2: new multiple-sclerosis lesions between two FLAIR time points.

Raw layout (``raw_dir`` holds the case folders, or a ``training/`` folder holding them):

    <raw_dir>/<case>/flair_time01_on_middle_space.nii.gz   (channel 0)
    <raw_dir>/<case>/flair_time02_on_middle_space.nii.gz   (channel 1)
    <raw_dir>/<case>/ground_truth.nii.gz                   (consensus, 0/1 new lesions)

A case folder is any sub-folder holding at least one ``.nii.gz`` file; its name is the case id
(``013``). The expert masks ``ground_truth_expert1..4`` are not used. Labels: 0 background,
1 new lesion. Each channel is normalised per volume (percentile clip [0.5, 99.5], z-score).

Split: ``train_cases``, ``val_cases``, ``test_cases`` name cases explicitly; any split left
``None`` is drawn from the remaining cases (sorted, shuffled with ``seed``): test
``round(n * test_fraction)``, then val ``round(n * val_fraction)`` (at least one each), the
rest train. Defaults 0.2 / 0.1 give 28 / 4 / 8 of the 40 training cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datamodules.acdc import normalize_zscore
from datamodules.base import SliceDataModule
from datamodules.raw import CaseData, CaseSpec, load_nifti_case
from datamodules.transforms import DataProtocol

__all__ = ["MSSEG2_CLASS_NAMES", "MSSEG2DataModule"]

MSSEG2_CLASS_NAMES = ("background", "new_lesion")
IMAGE_FILES = ("flair_time01_on_middle_space.nii.gz", "flair_time02_on_middle_space.nii.gz")
LABEL_FILE = "ground_truth.nii.gz"

LAYOUT = """  <raw_dir>/<case>/flair_time01_on_middle_space.nii.gz
  <raw_dir>/<case>/flair_time02_on_middle_space.nii.gz
  <raw_dir>/<case>/ground_truth.nii.gz   (0/1 new lesions)"""


class MSSEG2DataModule(SliceDataModule):
    """MSSEG-2 new-lesion segmentation, 2 input channels (see the module docstring).

    Args:
        data_dir: HDF5 output folder (default ``data/msseg2``).
        raw_dir: folder of case folders (default ``data/raw/msseg2``).
        train_cases, val_cases, test_cases: explicit case ids per split, or ``None``.
        val_fraction, test_fraction: fractions for splits left ``None``.
        image_size, batch_size, num_workers, seed, compression, pin_memory, progress,
            protocol: see :class:`~datamodules.base.SliceDataModule`.
    """

    dataset_name = "msseg2"
    default_class_names = MSSEG2_CLASS_NAMES
    default_channel_names = ("flair_time01", "flair_time02")

    def __init__(
        self,
        data_dir: str = "data/msseg2",
        raw_dir: str = "data/raw/msseg2",
        train_cases: Sequence[str] | None = None,
        val_cases: Sequence[str] | None = None,
        test_cases: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
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
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"Expected argument `{name}` to be in [0, 1), got {value}")
        self.explicit = {
            "train": None if train_cases is None else [str(c) for c in train_cases],
            "val": None if val_cases is None else [str(c) for c in val_cases],
            "test": None if test_cases is None else [str(c) for c in test_cases],
        }
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Per-channel, per-volume percentile clip [0.5, 99.5] then z-score -> float32."""
        return normalize_zscore(image)

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "normalisation": "zscore_p0.5_p99.5"}

    def split_cases(self, available: Sequence[str]) -> dict[str, list[str]]:
        """Assign case ids to splits (see the module docstring)."""
        n = len(available)
        rest = [str(c) for c in np.random.default_rng(self.seed).permutation(sorted(available))]
        taken = {c for cases in self.explicit.values() if cases for c in cases}
        rest = [c for c in rest if c not in taken]
        out: dict[str, list[str]] = {}
        for split, frac in (("test", self.test_fraction), ("val", self.val_fraction)):
            if self.explicit[split] is not None:
                out[split] = self.explicit[split]
            else:
                k = max(1, round(n * frac)) if frac > 0 else 0
                out[split], rest = sorted(rest[:k]), rest[k:]
        out["train"] = (
            self.explicit["train"] if self.explicit["train"] is not None else sorted(rest)
        )
        return out

    def _plan(self) -> dict[str, list[CaseSpec]]:
        raw = self._require_raw_dir(LAYOUT)
        root = raw / "training" if (raw / "training").is_dir() else raw
        folders = {
            p.name: p for p in sorted(root.iterdir()) if p.is_dir() and any(p.glob("*.nii.gz"))
        }
        if not folders:
            raise FileNotFoundError(
                f"No case folders with .nii.gz files in {root}. Expected:\n{LAYOUT}"
            )
        plan: dict[str, list[CaseSpec]] = {}
        for split, cases in self.split_cases(list(folders)).items():
            specs = []
            for case in cases:
                if case not in folders:
                    raise FileNotFoundError(
                        f"Case folder {root / case} ({split} split) not found. Expected:\n{LAYOUT}"
                    )
                images = [folders[case] / name for name in IMAGE_FILES]
                label = folders[case] / LABEL_FILE
                for image in images:
                    if not image.is_file():
                        raise FileNotFoundError(
                            f"Case {case}: {image} not found. Expected layout:\n{LAYOUT}"
                        )
                if not label.is_file():
                    raise FileNotFoundError(
                        f"Case {case}: images {images[0].name}, {images[1].name} have no label: "
                        f"expected {label}. Expected layout:\n{LAYOUT}"
                    )
                specs.append(CaseSpec(case, (*images, label)))
            plan[split] = specs
        return plan

    def _load_case(self, spec: CaseSpec) -> CaseData:
        *images, label_path = spec.files
        channels, label, affine, spacing, attrs = load_nifti_case(
            spec.case_id, images, label_path, len(self.class_names)
        )
        return CaseData(
            image=self.preprocess_image(np.stack(channels)),
            label=label,
            spacing=spacing,
            affine=affine,
            attrs=attrs,
        )
