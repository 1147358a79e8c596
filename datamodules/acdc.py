"""ACDC cardiac cine MRI: the ED and ES frames of each patient, RV / MYO / LV.

Raw layout (``raw_dir`` is the release root holding ``training/``, or ``training/`` itself):

    <raw_dir>/training/patientNNN/Info.cfg                    (lines "ED: <frame>", "ES: <frame>")
    <raw_dir>/training/patientNNN/patientNNN_frameFF.nii.gz    (ED and ES frames)
    <raw_dir>/training/patientNNN/patientNNN_frameFF_gt.nii.gz (labels 0..3)

Each patient gives two cases, ``patientNNN_frameFF`` for its ED and ES frames. Labels:
0 background, 1 RV, 2 MYO, 3 LV. Short-axis stacks are oblique, so volumes keep the acquired
slice stack as D (``slice_axis="acquisition"``, see ``datamodules.nifti``). Intensities are
normalised per volume: clipped to the [0.5, 99.5] percentiles, then z-scored.

Split: patients by name from a YAML file with keys ``train``, ``val``, ``test``; the shipped
``configs/splits/acdc.yaml`` holds 70 / 10 / 20 patients of training/patient001..100,
stratified by the five pathology groups of 20 consecutive patients (14 / 2 / 4 per group).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datamodules.base import SliceDataModule
from datamodules.raw import CaseData, CaseSpec, load_nifti_case
from datamodules.transforms import DataProtocol

__all__ = ["ACDC_CLASS_NAMES", "ACDCDataModule", "normalize_zscore", "read_split_file"]

ACDC_CLASS_NAMES = ("background", "RV", "MYO", "LV")

LAYOUT = """  <raw_dir>/training/patientNNN/Info.cfg                     (lines 'ED: <frame>', 'ES: <frame>')
  <raw_dir>/training/patientNNN/patientNNN_frameFF.nii.gz     (ED and ES frames)
  <raw_dir>/training/patientNNN/patientNNN_frameFF_gt.nii.gz  (labels 0..3)"""


def normalize_zscore(
    image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> np.ndarray:
    """Per-channel volume normalisation: clip to percentiles, then ``(x - mean) / std``.

    Args:
        image: (C, D, H, W) raw intensities.
        percentiles: clipping percentiles (lower, upper).

    Returns:
        float32 (C, D, H, W); a constant channel becomes zeros.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        x = np.asarray(image[c], dtype=np.float32)
        lo, hi = np.percentile(x, percentiles)
        x = np.clip(x, lo, hi)
        std = float(x.std())
        out[c] = (x - x.mean()) / std if std > 0 else 0.0
    return out


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """Read a split YAML with keys ``train``, ``val``, ``test`` (lists of case names).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a key is missing or not a list of names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Split file {path} not found; expected a YAML file with keys train, val, test "
            f"(lists of names), e.g. configs/splits/acdc.yaml run from the repository root."
        )
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or any(
        not isinstance(data.get(k), list) for k in ("train", "val", "test")
    ):
        raise ValueError(f"Split file {path} must map train, val and test to lists of names.")
    return {k: [str(v) for v in data[k]] for k in ("train", "val", "test")}


def _read_info(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Expected layout:\n{LAYOUT}")
    frames: dict[str, int] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(ED|ES)\s*:\s*(\d+)\s*$", line)
        if m:
            frames[m.group(1)] = int(m.group(2))
    if set(frames) != {"ED", "ES"}:
        raise ValueError(f"{path} must have lines 'ED: <frame>' and 'ES: <frame>'.")
    return frames


class ACDCDataModule(SliceDataModule):
    """ACDC ED/ES frames with RV / MYO / LV labels (see the module docstring).

    Args:
        data_dir: HDF5 output folder (default ``data/acdc``).
        raw_dir: the release root (default ``data/raw/acdc``).
        split_file: YAML split of patient names (default ``configs/splits/acdc.yaml``,
            relative to the working directory).
        image_size, batch_size, num_workers, seed, compression, pin_memory, progress,
            protocol: see :class:`~datamodules.base.SliceDataModule`.
    """

    dataset_name = "acdc"
    slice_axis = "acquisition"
    default_class_names = ACDC_CLASS_NAMES
    default_channel_names = ("cine_mri",)

    def __init__(
        self,
        data_dir: str = "data/acdc",
        raw_dir: str = "data/raw/acdc",
        split_file: str = "configs/splits/acdc.yaml",
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
        self.split_file = Path(split_file)

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "normalisation": "zscore_p0.5_p99.5"}

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Per-volume percentile clip [0.5, 99.5] then z-score; (C, D, H, W) -> float32."""
        return normalize_zscore(image)

    def _plan(self) -> dict[str, list[CaseSpec]]:
        raw = self._require_raw_dir(LAYOUT)
        root = raw / "training" if (raw / "training").is_dir() else raw
        split = read_split_file(self.split_file)
        plan: dict[str, list[CaseSpec]] = {}
        for name, patients in split.items():
            specs: list[CaseSpec] = []
            for patient in patients:
                folder = root / patient
                if not folder.is_dir():
                    raise FileNotFoundError(
                        f"Patient folder {folder} (listed in {self.split_file}) not found. "
                        f"Expected layout:\n{LAYOUT}"
                    )
                info = _read_info(folder / "Info.cfg")
                for phase in ("ED", "ES"):
                    case = f"{patient}_frame{info[phase]:02d}"
                    image, label = folder / f"{case}.nii.gz", folder / f"{case}_gt.nii.gz"
                    if not image.is_file():
                        raise FileNotFoundError(
                            f"{phase} frame of {patient} (Info.cfg) not found: {image}. "
                            f"Expected layout:\n{LAYOUT}"
                        )
                    if not label.is_file():
                        raise FileNotFoundError(
                            f"Image {image} has no label: expected {label}. "
                            f"Expected layout:\n{LAYOUT}"
                        )
                    if all(s.case_id != case for s in specs):  # ED == ES would repeat a frame
                        specs.append(CaseSpec(case, (folder / "Info.cfg", image, label)))
            plan[name] = specs
        return plan

    def _load_case(self, spec: CaseSpec) -> CaseData:
        _, image_path, label_path = spec.files
        (frame,), label, affine, spacing, attrs = load_nifti_case(
            spec.case_id, [image_path], label_path, len(self.class_names), self.slice_axis
        )
        return CaseData(
            image=self.preprocess_image(frame[None]),
            label=label,
            spacing=spacing,
            affine=affine,
            attrs=attrs,
        )
