"""Benchmark the data pipeline (``make bench-data``).

1. Preprocessing one Synapse-sized case (512 x 512 x 150 int16 CT NIfTI + uint8 label, written
   to a temporary folder) into HDF5, against only loading the same NIfTI files with nibabel
   (target: at most 1.5x the image+label load time).
2. Training loader throughput (slices/s) at 224 x 224 from 512 x 512 stored slices, one worker
   process, against the augmentation alone on in-memory slices and a plain ``DataLoader`` of
   the same dataset (int64 labels between the processes), for both data protocols:
   ``default`` (target: at least 1000 slices/s) and ``transunet`` (scipy's cubic zoom of every
   full-size slice; target: at least 100 slices/s).
3. nnU-Net-format datasets (``NNUNetDataModule.prepare_data``, folds, normalization and all)
   against reading every file of the dataset once (nibabel / PIL; target: at most 1.5x), and
   the training loader's slices/s on the result (target: at least 1000 per worker): a 3D
   two-channel set (CT + T2, int16 NIfTI: stored as int16, the CT statistics sampled while the
   files are read) and a 2D RGB png set (stored as uint8); the loader normalizes as it reads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from torch.utils.data import DataLoader

from datamodules import NNUNetDataModule, SynapseDataModule
from datamodules.hdf5 import SliceDataset
from datamodules.loader import SliceLoader
from datamodules.transforms import build_train_transform


def write_case(root: Path, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
    """CT-like int16 volume (smooth body + noise, air outside) and a blocky BTCV label."""
    x, y, z = shape
    yy, xx = np.mgrid[:x, :y]
    body = ((xx - y / 2) ** 2 / (0.4 * y) ** 2 + (yy - x / 2) ** 2 / (0.35 * x) ** 2) <= 1
    img = np.full(shape, -1000, np.int16)
    tissue = (40 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0)).astype(np.int16)
    img[body] = tissue[body][:, None]
    img += rng.integers(-20, 20, shape, dtype=np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[x // 3 : x // 2, y // 3 : y // 2, z // 4 : z // 2] = 6
    lab[x // 2 : x // 2 + 40, y // 2 : y // 2 + 30, z // 3 : z // 2] = 1
    affine = np.diag([-0.78, -0.78, 2.5, 1.0])
    (root / "RawData/Training/img").mkdir(parents=True)
    (root / "RawData/Training/label").mkdir(parents=True)
    nib.save(nib.Nifti1Image(img, affine), str(root / "RawData/Training/img/img0005.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(root / "RawData/Training/label/label0005.nii.gz"))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-slices", type=int, default=2400)
    parser.add_argument(
        "--transunet-slices", type=int, default=480, help="slices timed in the transunet protocol"
    )
    parser.add_argument("--only", choices=("synapse", "nnunet"), default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.only != "synapse":
        bench_nnunet(args.repeats, args.loader_slices)
    if args.only == "nnunet":
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        write_case(raw, (512, 512, args.slices), rng)
        img_path = raw / "RawData/Training/img/img0005.nii.gz"
        lab_path = raw / "RawData/Training/label/label0005.nii.gz"

        def load_image() -> None:
            np.asanyarray(nib.load(str(img_path)).dataobj)

        def load_both() -> None:
            load_image()
            np.asanyarray(nib.load(str(lab_path)).dataobj)

        dm = SynapseDataModule(data_dir=str(tmp / "h5"), raw_dir=str(raw), progress=False)
        spec = dm._nifti_spec(raw / "RawData/Training", 5)
        out = tmp / "case.h5"

        def preprocess() -> None:
            case = dm._load_case(spec)
            dm._check_case(spec.case_id, case)
            with h5py.File(out, "w") as f:
                dm._write_case(f, spec.case_id, case)

        t_img = best_of(load_image, args.repeats)
        t_both = best_of(load_both, args.repeats)
        t_pre = best_of(preprocess, args.repeats)
        print(f"== Preprocessing one 512x512x{args.slices} int16 case (best of {args.repeats})")
        print(f"  nibabel load, image only        {t_img:7.3f} s")
        print(f"  nibabel load, image + label     {t_both:7.3f} s   (reference)")
        print(
            f"  preprocess -> HDF5 (ours)       {t_pre:7.3f} s   = {t_pre / t_both:.2f}x "
            f"image+label load, {t_pre / t_img:.2f}x image load (target <= 1.5x)"
        )

        # ---- loader throughput, one block per data protocol
        for protocol, target in (("default", 1000), ("transunet", 100)):
            bench_loader(out, protocol, target, args.loader_slices, args.transunet_slices)


def bench_loader(
    path: Path, protocol: str, target: int, max_slices: int, tu_slices: int, rounds: int = 3
) -> None:
    """Slices/s of the transform alone (in memory) and of a one-worker DataLoader."""
    ds = SliceDataset(path, build_train_transform(224, protocol))
    n = min(max_slices if protocol == "default" else tu_slices, 16 * len(ds))
    with h5py.File(path, "r") as f:
        slices = [f["case0005"]["image"][0, z] for z in range(len(ds))]
        masks = [f["case0005"]["label"][z] for z in range(len(ds))]
    transform = build_train_transform(224, protocol)
    transform.set_random_seed(0)
    t = time.perf_counter()
    for i in range(n):
        transform(image=slices[i % len(slices)][:, :, None], mask=masks[i % len(masks)])
    t_aug = time.perf_counter() - t
    # one-worker loaders, timed in alternating rounds so that the machine's drift hits both
    classes = {"SliceLoader": SliceLoader}
    if protocol == "default":
        classes["DataLoader"] = DataLoader
    loaders = {
        name: cls(ds, batch_size=24, shuffle=True, num_workers=1, persistent_workers=True)
        for name, cls in classes.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, loader in loaders.items():
            rates[name].append(loader_rate(loader, -(-n // rounds)))
    rate = {name: statistics.median(values) for name, values in rates.items()}
    alone = "albumentations" if protocol == "default" else "scipy RandomGenerator"
    print(
        f"== Training loader, 512x512 stored slices -> 224x224, protocol {protocol!r} "
        f"(median of {rounds} alternating rounds)"
    )
    print(f"  {alone + ' alone (in memory, main process)':46s} {n / t_aug:8.0f} slices/s")
    if "DataLoader" in rate:
        print(
            f"  {'plain DataLoader (int64 labels, 1 worker)':46s} {rate['DataLoader']:8.0f} "
            "slices/s   (reference)"
        )
    ratio = (
        f", {rate['SliceLoader'] / rate['DataLoader']:.2f}x plain" if "DataLoader" in rate else ""
    )
    print(
        f"  {'SliceLoader (ours, 1 worker, batch 24)':46s} {rate['SliceLoader']:8.0f} slices/s "
        f"(target >= {target}{ratio})"
    )


def write_nnunet_3d(root: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    """``Dataset950_Bench``: n cases of CT (int16) + T2 (int16) and a label; returns the files."""
    rng = np.random.default_rng(1)
    ds = root / "Dataset950_Bench"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
    meta = {"channel_names": {"0": "CT", "1": "T2"}, "labels": {"background": 0, "organ": 1},
            "numTraining": n, "file_ending": ".nii.gz"}  # fmt: skip
    (ds / "dataset.json").write_text(json.dumps(meta))
    affine = np.diag([-0.78, -0.78, 2.5, 1.0])
    files = []
    for i in range(n):
        ct = rng.integers(-200, 300, shape, dtype=np.int16)
        t2 = rng.integers(0, 2000, shape, dtype=np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2, 2:-2] = 1
        for path, data in (
            (ds / "imagesTr" / f"bench_{i:03d}_0000.nii.gz", ct),
            (ds / "imagesTr" / f"bench_{i:03d}_0001.nii.gz", t2),
            (ds / "labelsTr" / f"bench_{i:03d}.nii.gz", lab),
        ):
            nib.save(nib.Nifti1Image(data, affine), str(path))
            files.append(path)
    return files


def write_nnunet_png(root: Path, n: int, size: int) -> list[Path]:
    """``Dataset951_BenchPng``: n RGB png images (3 channels) and grey labels."""
    from PIL import Image

    rng = np.random.default_rng(2)
    ds = root / "Dataset951_BenchPng"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
    meta = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1},
            "numTraining": n, "file_ending": ".png"}  # fmt: skip
    (ds / "dataset.json").write_text(json.dumps(meta))
    files = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        label = np.zeros((size, size), np.uint8)
        label[size // 4 : size // 2, :] = 1
        for path, data in (
            (ds / "imagesTr" / f"img_{i:04d}_0000.png", image),
            (ds / "labelsTr" / f"img_{i:04d}.png", label),
        ):
            Image.fromarray(data).save(path)
            files.append(path)
    return files


def read_all(files: list[Path]) -> None:
    """Read every file once, as the plain libraries do (the reference)."""
    from PIL import Image

    for path in files:
        if path.suffix == ".png":
            with Image.open(path) as img:
                np.asarray(img)
        else:
            np.asanyarray(nib.load(str(path)).dataobj)


def bench_nnunet(repeats: int, loader_slices: int) -> None:
    """nnU-Net-format preprocessing against one read of the files, and the loader on it."""
    cases = {
        "3D CT + T2, 5 cases of 512x512x60 int16 NIfTI": (write_nnunet_3d, (5, (512, 512, 60))),
        "2D RGB png, 400 images of 512x512": (write_nnunet_png, (400, 512)),
    }
    for title, (writer, writer_args) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            files = writer(Path(tmp) / "raw", *writer_args)
            train = bench_nnunet_case(Path(tmp), title, files, repeats) / "train.h5"
            loader = SliceLoader(
                SliceDataset(train, build_train_transform(224, "default")),
                batch_size=24, shuffle=True, num_workers=1, persistent_workers=True,
            )  # fmt: skip
            rate = statistics.median(loader_rate(loader, loader_slices // 3) for _ in range(3))
            print(
                f"  SliceLoader (1 worker, batch 24, 224x224)  {rate:8.0f} slices/s "
                "(target >= 1000)"
            )


def bench_nnunet_case(tmp: Path, title: str, files: list[Path], repeats: int) -> Path:
    """Time ``prepare_data`` into fresh folders ``tmp/h5_<i>`` against one read of ``files``;
    returns the last folder (the only one kept: the page cache holds it, as it holds a
    training's data after its first epoch)."""
    raw_dir = files[0].parent.parent
    runs = iter(range(repeats))
    out = tmp / "h5_none"

    def prepare() -> None:
        nonlocal out
        shutil.rmtree(out, ignore_errors=True)
        out = tmp / f"h5_{next(runs)}"  # a fresh folder: a full preprocessing each time
        NNUNetDataModule(raw_dir=str(raw_dir), data_dir=str(out), progress=False).prepare_data()

    t_read = best_of(lambda: read_all(files), repeats)
    t_pre = best_of(prepare, repeats)
    print(f"== nnU-Net format: {title} (best of {repeats})")
    print(f"  read every file once (nibabel / PIL)  {t_read:7.3f} s   (reference)")
    print(
        f"  NNUNetDataModule.prepare_data (ours)  {t_pre:7.3f} s   = "
        f"{t_pre / t_read:.2f}x (target <= 1.5x)"
    )
    return out


def loader_rate(loader: DataLoader, n: int) -> float:
    """Slices/s over at least ``n`` slices from a started loader (batch 24); the first batch
    of each round (worker start, or the wait for the prefetch) is not timed."""
    it = iter(loader)
    next(it)
    seen, t = 0, time.perf_counter()
    while seen < n:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
