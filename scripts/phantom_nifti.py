"""Export phantom volumes as NIfTI files, to try ``make predict`` without a scan of your own.

``make phantom-nifti`` writes the test split of ``configs/data/phantom.yaml`` (the volumes
``make train`` never trains on) as::

    data/phantom-nifti/images/phantomNNN.nii.gz   float32 intensities, raw voxel order (x, y, z)
    data/phantom-nifti/labels/phantomNNN.nii.gz   uint8 labels 0..5 (ground truth, to compare)

with the phantom's voxel spacing in a diagonal RAS affine (qform and sform code 1, scanner
coordinates), so ``make predict INPUT=data/phantom-nifti/images`` reads them as it reads any
scan. The volumes are drawn exactly as ``prepare_data`` draws them (same seed and case number).

With ``--nnunet-output data/nnUNet_raw`` it also writes the whole phantom as the nnU-Net v2
dataset ``Dataset900_Phantom`` (``dataset.json``; ``imagesTr/phantomNNN_0000.nii.gz`` and
``labelsTr/`` hold the train and validation volumes, ``imagesTs/`` and ``labelsTs/`` the test
volumes; one ``noNorm`` channel, so ``DATASET=nnunet`` sees the phantom's own intensities).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from datamodules.phantom import generate_phantom

_KNOBS = ("imbalance", "difficulty", "noise_std", "bias_strength")


def export_phantom_nifti(
    init_args: dict, output: str | Path, split: str = "test"
) -> list[tuple[Path, Path]]:
    """Write the ``split`` volumes of a phantom configuration as NIfTI image / label pairs.

    Args:
        init_args: ``PhantomDataModule`` arguments (``data.init_args`` of a config); missing
            ones take the datamodule's defaults.
        output: folder receiving ``images/`` and ``labels/``.
        split: ``train``, ``val`` or ``test``.

    Returns:
        ``(image path, label path)`` per volume.

    Raises:
        ValueError: unknown split.
    """
    from datamodules import PhantomDataModule

    dm = PhantomDataModule(**{**init_args, "progress": False})
    plan = dm._plan()
    if split not in plan:
        raise ValueError(f"Expected argument `split` to be one of {sorted(plan)}, got {split!r}")
    out = Path(output)
    return [
        _write_case(dm, spec.case_id, out / "images", out / "labels", "") for spec in plan[split]
    ]


def _write_case(
    dm: Any, case_id: str, images: Path, labels: Path, suffix: str
) -> tuple[Path, Path]:
    """Draw one phantom case and write ``images/<case><suffix>.nii.gz`` and its label."""
    number = int(case_id.removeprefix("phantom"))
    image, label = generate_phantom(
        np.random.default_rng([dm.seed, number]),
        shape=dm.volume_shape,
        spacing=dm.spacing,
        **{k: getattr(dm, k) for k in _KNOBS},
    )
    sd, sh, sw = dm.spacing
    affine = np.diag([sw, sh, sd, 1.0])  # voxel (x, y, z) = (W, H, D) -> RAS mm
    pair = []
    for folder, name, volume in (
        (images, f"{case_id}{suffix}.nii.gz", image.astype(np.float32)),
        (labels, f"{case_id}.nii.gz", label),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        nifti = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        nib.save(nifti, str(folder / name))
        pair.append(folder / name)
    return pair[0], pair[1]


def export_phantom_nnunet(init_args: dict, output: str | Path) -> Path:
    """Write the phantom as the nnU-Net v2 dataset ``<output>/Dataset900_Phantom``.

    Train and validation volumes go to ``imagesTr`` / ``labelsTr``, test volumes to
    ``imagesTs`` / ``labelsTs``; returns the dataset folder.
    """
    from datamodules import PhantomDataModule
    from datamodules.phantom import PHANTOM_CLASS_NAMES

    dm = PhantomDataModule(**{**init_args, "progress": False})
    plan = dm._plan()
    root = Path(output) / "Dataset900_Phantom"
    training = [spec.case_id for split in ("train", "val") for spec in plan[split]]
    for case_id in training:
        _write_case(dm, case_id, root / "imagesTr", root / "labelsTr", "_0000")
    for spec in plan["test"]:
        _write_case(dm, spec.case_id, root / "imagesTs", root / "labelsTs", "_0000")
    meta = {
        "name": "Phantom",
        "description": "The template's synthetic phantom (datamodules.phantom)",
        "channel_names": {"0": "noNorm"},
        "labels": {name: value for value, name in enumerate(PHANTOM_CLASS_NAMES)},
        "numTraining": len(training),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> list[tuple[Path, Path]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/data/phantom.yaml", help="phantom config")
    parser.add_argument("--output", default="data/phantom-nifti", help="output folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument(
        "--nnunet-output",
        default=None,
        help="also write the nnU-Net v2 dataset Dataset900_Phantom into this folder",
    )
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    init_args = dict((config.get("data") or {}).get("init_args") or {})
    if args.nnunet_output:
        root = export_phantom_nnunet(init_args, args.nnunet_output)
        print(f"nnU-Net v2 dataset: {root}  (try: make train DATA={root})")
    written = export_phantom_nifti(init_args, args.output, args.split)
    for image, label in written:
        print(f"{image}  (ground truth: {label})")
    print(
        f"Try: make predict INPUT={Path(args.output) / 'images'} OUTPUT=predictions "
        "(after make train)"
    )
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
