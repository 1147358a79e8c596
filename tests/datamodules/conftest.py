"""Fake raw releases in the real layouts (tiny volumes written with nibabel into tmp_path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from datamodules import ACDCDataModule, MSSEG2DataModule, SynapseDataModule
from datamodules.base import SliceDataModule

# Raw voxel grid (X, Y, Z) = (32, 32, 4): stored as (D, H, W) = (4, 32, 32).
RAW_SHAPE = (32, 32, 4)
# x towards Left, y towards Posterior (LPS, as DICOM-derived CT often is), 0.8 mm in-plane,
# 2.5 mm slices: canonical RAS flips x and y.
LPS_AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def expected_dhw(raw: np.ndarray) -> np.ndarray:
    """Hand-derived canonical (D, H, W) array of a raw (X, Y, Z) array with LPS_AFFINE:
    flip x and y to RAS, then (x, y, z) -> (z, y, x)."""
    return raw[::-1, ::-1, :].transpose(2, 1, 0)


def random_label(rng: np.random.Generator, num_values: int, shape=RAW_SHAPE) -> np.ndarray:
    """Blocky label: every value 0..num_values-1 present."""
    lab = rng.integers(0, num_values, size=(shape[0] // 4, shape[1] // 4, shape[2]))
    lab = lab.repeat(4, axis=0).repeat(4, axis=1)
    lab.reshape(-1)[:num_values] = np.arange(num_values)
    return lab.astype(np.uint8)


@dataclass
class Fake:
    """A fake raw release and how to build its datamodule."""

    name: str
    raw_dir: Path
    data_dir: Path
    factory: Callable[..., SliceDataModule]
    kwargs: dict[str, Any]
    case: str  # a training case
    images: list[Path]  # its image file(s)
    label: Path  # its label file
    num_label_values: int  # raw label values 0..n-1
    empty_val: dict[str, Any] = field(default_factory=dict)  # kwargs giving an empty val split

    def dm(self, **overrides: Any) -> SliceDataModule:
        kw = {
            "data_dir": str(self.data_dir),
            "raw_dir": str(self.raw_dir),
            "num_workers": 0,
            "batch_size": 4,
            "image_size": 16,
            "progress": False,
            **self.kwargs,
            **overrides,
        }
        return self.factory(**kw)


def make_synapse(tmp_path: Path, cases=(5, 6, 7, 1), seed: int = 0) -> dict[int, tuple]:
    """BTCV layout: RawData/Training/img/imgNNNN.nii.gz (int16 HU) + label/labelNNNN.nii.gz."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in cases:
        lab = random_label(rng, 14)
        img = rng.integers(-1000, 1000, size=RAW_SHAPE).astype(np.int16)
        root = tmp_path / "raw" / "RawData" / "Training"
        write_nifti(root / "img" / f"img{n:04d}.nii.gz", img)
        write_nifti(root / "label" / f"label{n:04d}.nii.gz", lab)
        out[n] = (img, lab)
    return out


def fake_synapse(tmp_path: Path) -> Fake:
    make_synapse(tmp_path)
    root = tmp_path / "raw" / "RawData" / "Training"
    return Fake(
        name="synapse",
        raw_dir=tmp_path / "raw",
        data_dir=tmp_path / "h5",
        factory=SynapseDataModule,
        kwargs={"train_cases": [5, 6], "val_cases": [7], "test_cases": [1]},
        case="case0005",
        images=[root / "img" / "img0005.nii.gz"],
        label=root / "label" / "label0005.nii.gz",
        num_label_values=14,
        empty_val={"val_cases": []},
    )


def write_acdc_patient(
    root: Path, patient: str, rng: np.random.Generator, ed: int = 1, es: int = 12, affine=None
) -> dict[str, tuple]:
    folder = root / "training" / patient
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n"
    )
    affine = np.diag([1.5, 1.5, 8.0, 1.0]) if affine is None else affine
    out = {}
    for frame in (ed, es):
        case = f"{patient}_frame{frame:02d}"
        img = rng.uniform(0, 500, size=RAW_SHAPE).astype(np.float32)
        lab = random_label(rng, 4)
        write_nifti(folder / f"{case}.nii.gz", img, affine)
        write_nifti(folder / f"{case}_gt.nii.gz", lab, affine)
        out[case] = (img, lab)
    return out


def write_split(path: Path, train, val, test) -> Path:
    lines = []
    for key, names in (("train", train), ("val", val), ("test", test)):
        lines.append(f"{key}:" + ("" if names else " []"))
        lines += [f"  - {n}" for n in names]
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_acdc(tmp_path: Path) -> Fake:
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    for i in range(1, 5):
        write_acdc_patient(raw, f"patient{i:03d}", rng)
    split = write_split(
        tmp_path / "split.yaml", ["patient001", "patient002"], ["patient003"], ["patient004"]
    )
    empty = write_split(
        tmp_path / "split_empty.yaml", ["patient001", "patient002"], [], ["patient004"]
    )
    folder = raw / "training" / "patient001"
    return Fake(
        name="acdc",
        raw_dir=raw,
        data_dir=tmp_path / "h5",
        factory=ACDCDataModule,
        kwargs={"split_file": str(split)},
        case="patient001_frame01",
        images=[folder / "patient001_frame01.nii.gz"],
        label=folder / "patient001_frame01_gt.nii.gz",
        num_label_values=4,
        empty_val={"split_file": str(empty)},
    )


def write_msseg2_case(root: Path, case: str, rng: np.random.Generator) -> tuple:
    folder = root / case
    t1 = rng.uniform(0, 300, size=RAW_SHAPE).astype(np.float32)
    t2 = rng.uniform(0, 300, size=RAW_SHAPE).astype(np.float32)
    gt = random_label(rng, 2)
    write_nifti(folder / "flair_time01_on_middle_space.nii.gz", t1)
    write_nifti(folder / "flair_time02_on_middle_space.nii.gz", t2)
    write_nifti(folder / "ground_truth.nii.gz", gt)
    write_nifti(folder / "ground_truth_expert1.nii.gz", gt)
    return t1, t2, gt


def fake_msseg2(tmp_path: Path) -> Fake:
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    for case in ("013", "015", "016", "018"):
        write_msseg2_case(raw, case, rng)
    return Fake(
        name="msseg2",
        raw_dir=raw,
        data_dir=tmp_path / "h5",
        factory=MSSEG2DataModule,
        kwargs={"train_cases": ["013", "015"], "val_cases": ["016"], "test_cases": ["018"]},
        case="013",
        images=[
            raw / "013" / "flair_time01_on_middle_space.nii.gz",
            raw / "013" / "flair_time02_on_middle_space.nii.gz",
        ],
        label=raw / "013" / "ground_truth.nii.gz",
        num_label_values=2,
        empty_val={"val_cases": []},
    )


FAKES = {"synapse": fake_synapse, "acdc": fake_acdc, "msseg2": fake_msseg2}


@pytest.fixture(params=sorted(FAKES))
def fake(request: pytest.FixtureRequest, tmp_path: Path) -> Fake:
    """Each raw dataset in turn, written in its real layout."""
    return FAKES[request.param](tmp_path)
