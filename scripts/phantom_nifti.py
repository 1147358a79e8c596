"""Export phantom volumes as NIfTI files, to try ``make predict`` without a scan of your own.

``make phantom-nifti`` writes the test split of ``configs/data/phantom.yaml`` (the volumes
``make train`` never trains on) as::

    data/phantom-nifti/images/phantomNNN.nii.gz   float32 intensities, raw voxel order (x, y, z)
    data/phantom-nifti/labels/phantomNNN.nii.gz   uint8 labels 0..5 (ground truth, to compare)

with the phantom's voxel spacing in a diagonal RAS affine (qform and sform code 1, scanner
coordinates), so ``make predict INPUT=data/phantom-nifti/images`` reads them as it reads any
scan. The volumes are drawn exactly as ``prepare_data`` draws them (same seed and case number).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    sd, sh, sw = dm.spacing
    affine = np.diag([sw, sh, sd, 1.0])  # voxel (x, y, z) = (W, H, D) -> RAS mm
    written = []
    for spec in plan[split]:
        number = int(spec.case_id.removeprefix("phantom"))
        image, label = generate_phantom(
            np.random.default_rng([dm.seed, number]),
            shape=dm.volume_shape,
            spacing=dm.spacing,
            **{k: getattr(dm, k) for k in _KNOBS},
        )
        pair = []
        for kind, volume in (("images", image.astype(np.float32)), ("labels", label)):
            nifti = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
            nifti.set_qform(affine, code=1)
            nifti.set_sform(affine, code=1)
            path = out / kind / f"{spec.case_id}.nii.gz"
            nib.save(nifti, str(path))
            pair.append(path)
        written.append((pair[0], pair[1]))
    return written


def main(argv: Sequence[str] | None = None) -> list[tuple[Path, Path]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/data/phantom.yaml", help="phantom config")
    parser.add_argument("--output", default="data/phantom-nifti", help="output folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    init_args = dict((config.get("data") or {}).get("init_args") or {})
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
