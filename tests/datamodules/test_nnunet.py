"""NNUNetDataModule on small nnU-Net v2 and MSD datasets written by the tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
    CTNormalization,
    ZScoreNormalization,
)
from nnunetv2.utilities.crossval_split import generate_crossval_split

import datamodules.nnunet as nnunet_module
from datamodules.hdf5 import SliceDataset, VolumeDataset
from datamodules.nnunet import NNUNetDataModule, default_data_dir
from datamodules.nnunet_layout import DatasetError
from tests.datamodules.nnunet_datasets import AFFINE, SHAPE, write_msd, write_png, write_v2


@pytest.fixture(autouse=True)
def _few_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    # nnU-Net draws 10^8 foreground samples per CT channel in total; the tiny sets need fewer
    monkeypatch.setattr(nnunet_module, "TOTAL_FOREGROUND_SAMPLES", 6000)


def _dm(ds: Path, tmp_path: Path, **kwargs) -> NNUNetDataModule:
    kwargs = {
        "data_dir": str(tmp_path / "out"),
        "image_size": 16,
        "batch_size": 2,
        "num_workers": 0,
        "progress": False,
        **kwargs,
    }
    return NNUNetDataModule(raw_dir=str(ds), **kwargs)


def _volumes(ds: Path) -> list[Path]:
    return [p for p in ds.rglob("*.nii.gz") if not p.name.startswith(".")]


def _cases(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return sorted(f.keys())


def _read(path: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared case as training and evaluation read it: (image float32, label)."""
    volumes = VolumeDataset(path)
    item = volumes[volumes.cases.index(case)]
    volumes.close()
    return item["image"].numpy(), item["label"].numpy()


def test_v2_two_channels_ignore_label_and_test_split(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    dm = _dm(ds, tmp_path)
    assert (dm.in_channels, dm.num_classes, dm.ignore_index) == (2, 3, 3)
    assert dm.class_names == ["background", "organ", "lesion"]
    assert dm.dataset_name == "Dataset001_Tiny"
    dm.prepare_data()
    ids = [f"tiny_case_{i:03d}" for i in range(6)]
    fold0 = generate_crossval_split(ids, seed=12345, n_splits=5)[0]
    assert _cases(dm.split_path("val")) == sorted(fold0["val"])
    assert _cases(dm.split_path("train")) == sorted(fold0["train"])
    assert _cases(dm.split_path("test")) == ["tiny_case_100", "tiny_case_101"]
    with h5py.File(dm.split_path("train"), "r") as f:
        stats = json.loads(f.attrs["intensity_statistics"])
        assert stats[1] is None and set(stats[0]) >= {"mean", "std"}
        case = "tiny_case_000" if "tiny_case_000" in f else sorted(f)[0]
        # int16 CT + float32 T2: stored raw as float32, normalized as it is read
        assert f[case]["image"].dtype == np.float32 and "intensity" in f[case].attrs
    image, label = _read(dm.split_path("train"), case)
    assert image.shape == (2, SHAPE[2], SHAPE[1], SHAPE[0])  # (C, D, H, W): D the 3 mm axis
    # the raw files, normalized by nnunetv2's own classes, then reoriented (RAS, diagonal)
    raw = [
        nib.load(ds / "imagesTr" / f"{case}_000{c}.nii.gz").get_fdata().astype(np.float32)
        for c in range(2)
    ]
    ct = CTNormalization(False, stats[0], np.float32).run(raw[0].copy())
    t2 = ZScoreNormalization(False, {}, np.float32).run(raw[1].copy())
    np.testing.assert_allclose(image[0], ct.transpose(2, 1, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(image[1], t2.transpose(2, 1, 0), rtol=1e-5, atol=1e-5)
    raw_label = np.asarray(nib.load(ds / "labelsTr" / f"{case}.nii.gz").dataobj)
    np.testing.assert_array_equal(label, raw_label.transpose(2, 1, 0))
    slices = SliceDataset(dm.split_path("train"), None)  # a training slice: that volume's slice
    item = slices[int(np.flatnonzero(slices.case_index == slices.cases.index(case))[2])]
    np.testing.assert_array_equal(item["image"].numpy(), image[:, item["slice"]])
    with h5py.File(dm.split_path("train"), "r") as f:
        assert max(int(f[c]["label"][...].max()) for c in f) == 3  # the ignore label is kept


def test_default_data_dir_and_fold_all(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    assert default_data_dir(ds, 2) == Path("data/nnunet/Dataset001_Tiny/fold_2")
    dm = _dm(ds, tmp_path, fold="all")
    dm.prepare_data()
    ids = [f"tiny_case_{i:03d}" for i in range(6)]
    assert _cases(dm.split_path("train")) == ids == _cases(dm.split_path("val"))


def test_held_out_fold_is_the_test_split_without_labels_ts(tmp_path: Path) -> None:
    ds = write_msd(tmp_path)
    dm = _dm(ds, tmp_path, fold=3)
    dm.prepare_data()
    ids = [f"tiny_{i:03d}" for i in range(5)]
    fold3 = generate_crossval_split(ids, seed=12345, n_splits=5)[3]
    assert _cases(dm.split_path("test")) == _cases(dm.split_path("val")) == list(fold3["val"])
    image, _ = _read(dm.split_path("train"), _cases(dm.split_path("train"))[0])
    assert image.shape == (2, SHAPE[2], SHAPE[1], SHAPE[0])
    assert abs(float(image[0].mean())) < 1e-4  # z-scored per image


def test_test_split_held_out_even_with_images_ts(tmp_path: Path) -> None:
    """Cross-validation tests the held-out fold although imagesTs + labelsTs exist."""
    ds = write_v2(tmp_path)
    dm = _dm(ds, tmp_path, fold=1, test_split="held_out")
    dm.prepare_data()
    ids = [f"tiny_case_{i:03d}" for i in range(6)]
    fold1 = generate_crossval_split(ids, seed=12345, n_splits=5)[1]
    assert _cases(dm.split_path("test")) == _cases(dm.split_path("val")) == sorted(fold1["val"])
    assert default_data_dir(ds, 1, "held_out") == Path(
        "data/nnunet/Dataset001_Tiny/fold_1_held_out"
    )
    with pytest.raises(ValueError, match=r"`test_split` to be one of"):
        _dm(ds, tmp_path, test_split="val")
    with pytest.raises(ValueError, match=r"fold='all' holds no case out"):
        _dm(ds, tmp_path, fold="all", test_split="held_out")
    msd = _dm(write_msd(tmp_path), tmp_path, test_split="imagesTs", data_dir=str(tmp_path / "m"))
    with pytest.raises(
        DatasetError, match=r"test_split='imagesTs' needs .*imagesTs and .*labelsTs"
    ):
        msd.prepare_data()


def test_splits_final_json_in_the_dataset_folder(tmp_path: Path) -> None:
    ds = write_msd(tmp_path)
    ids = [f"tiny_{i:03d}" for i in range(5)]
    (ds / "splits_final.json").write_text(json.dumps([{"train": ids[1:], "val": ids[:1]}]))
    dm = _dm(ds, tmp_path)
    dm.prepare_data()
    assert _cases(dm.split_path("val")) == ids[:1]
    other = tmp_path / "splits.json"
    other.write_text(json.dumps([{"train": ids[:3], "val": ids[3:]}]))
    dm = _dm(ds, tmp_path, splits_file=str(other), data_dir=str(tmp_path / "out2"))
    dm.prepare_data()
    assert _cases(dm.split_path("val")) == ids[3:]


def test_png_rgb_dataset_is_single_slices(tmp_path: Path) -> None:
    ds = write_png(tmp_path)
    dm = _dm(ds, tmp_path)
    assert dm.in_channels == 3
    dm.prepare_data()
    from PIL import Image

    case = _cases(dm.split_path("train"))[0]
    rgb = np.asarray(Image.open(ds / "imagesTr" / f"{case}_0000.png"))
    with h5py.File(dm.split_path("train"), "r") as f:  # stored as the png's bytes
        np.testing.assert_array_equal(f[case]["image"][:, 0], rgb.transpose(2, 0, 1))
    image, label = _read(dm.split_path("train"), case)
    assert image.shape == (3, 1, 20, 24) and label.shape == (1, 20, 24)
    # R, G, B are "any other name": z-scored per image, as nnU-Net would
    ref = ZScoreNormalization(False, {}, np.float32).run(rgb[..., 1].astype(np.float32))
    np.testing.assert_allclose(image[1, 0], ref, rtol=1e-5, atol=1e-5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)


def test_anisotropic_slicing_axis(tmp_path: Path) -> None:
    """The largest spacing is the raw first axis here: it becomes D."""
    ds = write_v2(tmp_path, ignore=False)
    for path in _volumes(ds):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([3.0, 0.8, 0.8, 1.0])), path)
    dm = _dm(ds, tmp_path)
    dm.prepare_data()
    with h5py.File(dm.split_path("train"), "r") as f:
        group = f[sorted(f)[0]]
        assert group["label"].shape == (SHAPE[0], SHAPE[2], SHAPE[1])
        np.testing.assert_allclose(group.attrs["spacing"], [3.0, 0.8, 0.8])
        assert group.attrs["slice_axis"] == "voxel0"


def test_isotropic_keeps_superior_axis(tmp_path: Path) -> None:
    ds = write_v2(tmp_path, ignore=False)
    for path in _volumes(ds):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.eye(4)), path)
    dm = _dm(ds, tmp_path)
    dm.prepare_data()
    with h5py.File(dm.split_path("train"), "r") as f:
        assert f[sorted(f)[0]].attrs["slice_axis"] == "superior"


# ---------------------------------------------------------------- bad datasets (point 9)
def _break_geometry(ds: Path) -> str:
    path = ds / "imagesTr" / "tiny_case_002_0001.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), AFFINE @ np.diag([1, 1, 1.5, 1])), path)
    return "tiny_case_002"


def _break_shape(ds: Path) -> str:
    path = ds / "labelsTr" / "tiny_case_004.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), AFFINE), path)
    return "tiny_case_004"


def _undeclared_label(ds: Path) -> str:
    path = ds / "labelsTr" / "tiny_case_001.nii.gz"
    data = np.asarray(nib.load(path).dataobj).copy()
    data[1, 1, 1] = 7
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return "tiny_case_001"


def _missing_channel(ds: Path) -> str:
    (ds / "imagesTr" / "tiny_case_005_0000.nii.gz").unlink()
    return "tiny_case_005"


def _corrupt_file(ds: Path) -> str:
    (ds / "imagesTr" / "tiny_case_003_0000.nii.gz").write_bytes(b"\x1f\x8b garbage")
    return "tiny_case_003"


@pytest.mark.parametrize(
    ("breaker", "match"),
    [
        (_break_geometry, "affine .* differs .*misaligned"),
        (_break_shape, "shape"),
        (_undeclared_label, r"values \[7\] not declared in dataset.json"),
        (_missing_channel, "channel file"),
        (_corrupt_file, "Cannot read"),
    ],
)
def test_bad_cases_one_line_and_no_partial_hdf5(tmp_path: Path, breaker, match: str) -> None:
    ds = write_v2(tmp_path)
    case = breaker(ds)
    dm = _dm(ds, tmp_path)
    with pytest.raises(DatasetError, match=match) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "\n" not in message and case in message
    out = tmp_path / "out"
    assert not list(out.glob("*.h5")) and not list(out.glob("*.tmp"))


def test_missing_dataset_json_at_construction(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    (ds / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="dataset.json not found"):
        _dm(ds, tmp_path)


def test_sitk_endings_need_the_extra_or_read(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    import SimpleITK as sitk

    ds = write_v2(tmp_path, ignore=False)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["file_ending"] = ".nrrd"
    (ds / "dataset.json").write_text(json.dumps(meta))
    for path in list(ds.rglob("*.nii.gz")):
        if path.name.startswith("."):
            path.unlink()
            continue
        img = sitk.ReadImage(str(path))
        sitk.WriteImage(img, str(path).replace(".nii.gz", ".nrrd"))
        path.unlink()
    dm = _dm(ds, tmp_path)
    dm.prepare_data()
    with h5py.File(dm.split_path("train"), "r") as f:
        group = f[sorted(f)[0]]
        assert group["image"].shape == (2, SHAPE[2], SHAPE[1], SHAPE[0])
        np.testing.assert_allclose(group.attrs["spacing"], [3.0, 0.8, 0.8], rtol=1e-6)


@pytest.mark.parametrize("slice_axis", ["voxel0", "voxel1", "acquisition"])
def test_slice_axis_round_trips_to_the_raw_grid(slice_axis: str) -> None:
    """The chosen raw axis becomes D, and predictions go back onto the raw grid exactly."""
    from datamodules.nifti import canonical_to_raw, raw_to_canonical

    raw = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    affine = np.array([[0, 0, -2.0, 0], [1.5, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]])
    array, _, spacing = raw_to_canonical(raw, affine, slice_axis)
    stack = {"voxel0": 0, "voxel1": 1, "acquisition": 2}[slice_axis]
    assert array.shape[0] == raw.shape[stack]
    assert spacing[0] == pytest.approx(np.linalg.norm(affine[:3, stack]))
    np.testing.assert_array_equal(canonical_to_raw(array, affine, slice_axis), raw)


def test_ct_samples_pool_in_case_order_whatever_loads_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cases load in threads (``base.LOAD_AHEAD``); the CT foreground samples are pooled in
    the order the cases are written, as one case at a time pools them, so the statistics do
    not depend on which load finishes first."""
    import datamodules.base as base_module

    ds = write_v2(tmp_path)
    pooled: list[list[np.ndarray]] = []
    statistics = nnunet_module.foreground_statistics

    def recording(samples):
        pooled.append(list(samples))
        return statistics(pooled[-1])

    monkeypatch.setattr(nnunet_module, "foreground_statistics", recording)
    read = NNUNetDataModule._read

    def later_cases_first(self, spec):  # each case id's load takes longer than the next one's
        time.sleep(0.05 * (200 - int(spec.case_id.rsplit("_", 1)[1])) / 200)
        return read(self, spec)

    runs = {}
    for depth in (0, 3):
        monkeypatch.setattr(base_module, "LOAD_AHEAD", depth)
        monkeypatch.setattr(NNUNetDataModule, "_read", later_cases_first if depth else read)
        dm = _dm(ds, tmp_path, data_dir=str(tmp_path / f"out_{depth}"))
        dm.prepare_data()
        with h5py.File(dm.split_path("train"), "r") as f:
            runs[depth] = f.attrs["intensity_statistics"]
    serial, ahead = pooled
    assert len(serial) == len(ahead) == 6  # every training case (5 train + 1 val), in order
    for a, b in zip(serial, ahead, strict=True):
        np.testing.assert_array_equal(a, b)
    assert runs[0] == runs[3]
