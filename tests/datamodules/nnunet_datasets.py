"""Small nnU-Net v2 and MSD raw datasets written into a folder, for the nnU-Net tests.

- :func:`write_v2`: ``Dataset001_Tiny``: two channels (CT, T2) as ``<case>_0000/_0001.nii.gz``,
  labels 0..2 plus an ``ignore`` label 3, ids with underscores, imagesTs + labelsTs, macOS
  ``._`` debris;
- :func:`write_png`: ``Dataset002_Png``: RGB ``<case>_0000.png`` (3 channels R, G, B) and grey
  labels;
- :func:`write_msd`: ``Task01_Tiny``: MSD layout, 4D images (X, Y, Z, 2), ``int -> name`` labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

#: raw voxel grid (X, Y, Z) and spacing of the 3D fixtures: the third axis is the thick one
SHAPE = (12, 10, 5)
AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def label_volume(rng: np.random.Generator, shape=SHAPE, values: int = 3) -> np.ndarray:
    """Blocky labels holding every value 0..values-1."""
    lab = rng.integers(0, values, size=shape).astype(np.uint8)
    lab.reshape(-1)[:values] = np.arange(values)
    return lab


def write_v2(
    root: Path,
    n_train: int = 6,
    n_test: int = 2,
    ignore: bool = True,
    seed: int = 0,
) -> Path:
    """``root/Dataset001_Tiny`` (see the module docstring); returns the dataset folder."""
    ds = root / "Dataset001_Tiny"
    rng = np.random.default_rng(seed)
    labels = {"background": 0, "organ": 1, "lesion": 2}
    if ignore:
        labels["ignore"] = 3
    meta = {
        "channel_names": {"0": "CT", "1": "T2"},
        "labels": labels,
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    ds.mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps(meta))
    for split, n in (("Tr", n_train), ("Ts", n_test)):
        for i in range(n):
            case = f"tiny_case_{i + (100 if split == 'Ts' else 0):03d}"
            lab = label_volume(rng)
            if ignore and i == 0:
                lab[0, 0, :] = 3
            ct = rng.normal(40, 200, SHAPE).astype(np.int16) + 300 * (lab == 1)
            t2 = rng.normal(500, 50, SHAPE).astype(np.float32)
            _nifti(ds / f"images{split}" / f"{case}_0000.nii.gz", ct.astype(np.int16))
            _nifti(ds / f"images{split}" / f"{case}_0001.nii.gz", t2)
            _nifti(ds / f"labels{split}" / f"{case}.nii.gz", lab)
    (ds / "imagesTr" / "._tiny_case_000_0000.nii.gz").write_bytes(b"\x00\x05mac")
    return ds


def write_png(
    root: Path, n_train: int = 5, size: tuple[int, int] = (20, 24), seed: int = 0
) -> Path:
    """``root/Dataset002_Png``: RGB images, one file per case, 3 channels."""
    from PIL import Image

    ds = root / "Dataset002_Png"
    rng = np.random.default_rng(seed)
    meta = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "road": 1},
        "numTraining": n_train,
        "file_ending": ".png",
    }
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    (ds / "dataset.json").write_text(json.dumps(meta))
    for i in range(n_train):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        lab = label_volume(rng, size, 2)
        Image.fromarray(rgb).save(ds / "imagesTr" / f"img_{i}_0000.png")
        Image.fromarray(lab).save(ds / "labelsTr" / f"img_{i}.png")
    return ds


def write_msd(root: Path, n_train: int = 5, n_test: int = 1, seed: int = 0) -> Path:
    """``root/Task01_Tiny``: MSD layout, 4D images (X, Y, Z, 2) modality last."""
    ds = root / "Task01_Tiny"
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n_train):
        case = f"tiny_{i:03d}"
        lab = label_volume(rng, values=2)
        image = rng.normal(100, 20, (*SHAPE, 2)).astype(np.float32)
        _nifti(ds / "imagesTr" / f"{case}.nii.gz", image)
        _nifti(ds / "labelsTr" / f"{case}.nii.gz", lab)
        # the real MSD archives hold macOS debris next to every file
        (ds / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"\x00\x05")
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
    for i in range(n_test):
        _nifti(ds / "imagesTs" / f"tiny_{100 + i:03d}.nii.gz", rng.normal(0, 1, (*SHAPE, 2)))
    meta = {
        "name": "Tiny",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "tumour"},
        "numTraining": n_train,
        "numTest": n_test,
        "training": training,
        "test": [f"./imagesTs/tiny_{100 + i:03d}.nii.gz" for i in range(n_test)],
    }
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds
