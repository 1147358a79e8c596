"""``python -m lightning_app.predict``: input discovery, bad input, oblique NIfTI round trip."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from torch import nn

from datamodules import MSSEG2DataModule, PhantomDataModule
from lightning_app.predict import (
    InputCase,
    LoadedCheckpoint,
    find_cases,
    load_checkpoint,
    main,
    predict_files,
)
from models import SegmentationModel

PHANTOM_NAMES = list(PhantomDataModule(progress=False).class_names)
TINY_NET = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def _oblique_affine() -> np.ndarray:
    """Raw voxel axes rotated 30 degrees off the scanner axes, permuted and flipped."""
    t = np.deg2rad(30)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    axes = np.array([[0.0, 0.0, 1.2], [-0.9, 0.0, 0.0], [0.0, 2.5, 0.0]])  # columns: x, y, z
    aff = np.eye(4)
    aff[:3, :3] = rot @ axes
    aff[:3, 3] = [-40.0, 12.0, 7.5]
    return aff


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


class ThresholdNet(nn.Module):
    """A 'network' with a known answer: class 1 where channel 0 > 0.5."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.hparams = {"in_channels": in_channels}
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - 0.5], dim=1)


class _HP(dict):
    __getattr__ = dict.__getitem__


# --------------------------------------------------------------------------------------------
# round trip with a known structure
# --------------------------------------------------------------------------------------------
def test_oblique_round_trip_keeps_shape_affine_and_aligns_the_mask(tmp_path: Path) -> None:
    shape = (30, 26, 9)  # raw (X, Y, Z); in-plane sizes differ from the training size 32
    raw = np.zeros(shape, dtype=np.float32)
    box = (slice(4, 16), slice(3, 11), slice(2, 6))  # off-centre: a flip would move it
    raw[box] = 1.0
    affine = _oblique_affine()
    src = _write(tmp_path / "scan.nii.gz", raw, affine)
    net = ThresholdNet()
    net.hparams = _HP(in_channels=1)
    loaded = LoadedCheckpoint(
        model=net,
        datamodule=PhantomDataModule(progress=False),
        image_size=32,
        slice_axis="superior",
        source="test",
    )
    (out,) = predict_files(loaded, [src], tmp_path / "out", batch_size=4, log=None)
    assert out == tmp_path / "out" / "scan.nii.gz"
    img = nib.load(str(out))
    assert img.shape == shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(img.header.get_sform(), affine, atol=1e-5)
    mask = np.asarray(img.dataobj)
    assert mask.dtype == np.uint8
    truth = raw > 0.5
    # resized to 32 and back with nearest: labels may move by at most one voxel, so they
    # agree with the box everywhere except on its one-voxel rim (inside or outside)
    rim = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth)
    assert np.array_equal(mask.astype(bool) & ~rim, truth & ~rim)
    dice = 2 * (mask.astype(bool) & truth).sum() / (mask.astype(bool).sum() + truth.sum())
    assert dice > 0.9
    assert mask[10, 7, 4] == 1 and mask[25, 20, 8] == 0 and mask[0, 0, 0] == 0
    # slices were fed at the training size, several per batch
    assert all(c[2:] == (32, 32) for c in net.calls) and max(c[0] for c in net.calls) > 1


def test_acquisition_slice_axis_keeps_the_raw_stack(tmp_path: Path) -> None:
    shape = (20, 18, 5)
    raw = np.zeros(shape, dtype=np.float32)
    raw[3:12, 5:15, 1:4] = 1.0
    src = _write(tmp_path / "sax.nii.gz", raw, _oblique_affine())
    net = ThresholdNet()
    net.hparams = _HP(in_channels=1)
    loaded = LoadedCheckpoint(net, PhantomDataModule(progress=False), 16, "acquisition", "t")
    (out,) = predict_files(loaded, [src], tmp_path / "o", log=None)
    # the raw z axis (5 slices) is the slice axis: every call sees slices of one z
    assert sum(c[0] for c in net.calls) == shape[2]
    mask = np.asarray(nib.load(str(out)).dataobj)
    assert mask.shape == shape and mask[7, 10, 2] == 1 and mask[0, 0, 0] == 0


# --------------------------------------------------------------------------------------------
# end to end with a real checkpoint
# --------------------------------------------------------------------------------------------
def _checkpoint(tmp_path: Path, in_channels: int = 1, class_names=None) -> Path:
    class_names = class_names or PHANTOM_NAMES
    torch.manual_seed(0)
    model = SegmentationModel(
        loss=nn.CrossEntropyLoss(),
        in_channels=in_channels,
        num_classes=len(class_names),
        class_names=class_names,
        model_kwargs=TINY_NET,
    )
    trainer = L.Trainer(
        logger=False,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(model)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _run_config(ckpt: Path, class_path: str, init_args: dict) -> Path:
    cfg = ckpt.parent.parent / "config.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"class_path": class_path, "init_args": init_args}}))
    return cfg


def test_cli_predicts_with_a_real_checkpoint_and_run_config(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path)
    _run_config(ckpt, "datamodules.PhantomDataModule", {"image_size": 32, "progress": False})
    affine = _oblique_affine()
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    a = _write(inputs / "a.nii.gz", rng.random((20, 22, 6)).astype(np.float32), affine)
    b = _write(
        inputs / "b.nii", rng.random((12, 10, 3)).astype(np.float32), np.diag([1, 1, 3, 1.0])
    )
    (inputs / "notes.txt").write_text("ignored: not NIfTI")
    written = main(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "o")])
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz"]
    for src, out in zip((a, b), written, strict=True):
        ref, got = nib.load(str(src)), nib.load(str(out))
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
        labels = np.asarray(got.dataobj)
        assert labels.dtype == np.uint8 and labels.max() < len(PHANTOM_NAMES)
    out = capsys.readouterr().out
    assert "PhantomDataModule" in out and "slices at 32x32" in out and "config.yaml" in out


def test_dataset_from_saved_datamodule_hyperparameters(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["datamodule_hyper_parameters"] = {
        "_class_path": "datamodules.PhantomDataModule",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        "image_size": 48,
        "progress": False,
    }
    torch.save(checkpoint, ckpt)
    loaded = load_checkpoint(ckpt)  # no config.yaml next to it
    assert isinstance(loaded.datamodule, PhantomDataModule) and loaded.image_size == 48
    assert loaded.source == str(ckpt)


def test_model_image_size_hyperparameter_wins(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["image_size"] = 64
    torch.save(checkpoint, ckpt)
    _run_config(ckpt, "datamodules.PhantomDataModule", {"image_size": 32, "progress": False})
    assert load_checkpoint(ckpt).image_size == 64


def test_msseg_case_folders_two_channels(tmp_path: Path) -> None:
    names = list(MSSEG2DataModule().class_names)
    ckpt = _checkpoint(tmp_path, in_channels=2, class_names=names)
    cfg = _run_config(ckpt, "datamodules.MSSEG2DataModule", {"image_size": 32, "progress": False})
    root = tmp_path / "msseg"
    rng = np.random.default_rng(1)
    for case in ("013", "015"):
        folder = root / case
        folder.mkdir(parents=True)
        for t in ("flair_time01_on_middle_space", "flair_time02_on_middle_space", "ground_truth"):
            _write(folder / f"{t}.nii.gz", rng.random((16, 14, 4)).astype(np.float32),
                   _oblique_affine())  # fmt: skip
    written = main(["--ckpt", str(ckpt), "--config", str(cfg), "--input", str(root),
                    "--output", str(tmp_path / "o")])  # fmt: skip
    assert [p.name for p in written] == ["013.nii.gz", "015.nii.gz"]
    assert nib.load(str(written[0])).shape == (16, 14, 4)
    # one case folder given directly
    (one,) = main(["--ckpt", str(ckpt), "--input", str(root / "015"), "--output",
                   str(tmp_path / "o2")])  # fmt: skip
    assert one.name == "015.nii.gz"
    # a single file for a 2-channel model is refused, naming the file and the layout
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(ckpt), "--input", str(root / "013" / "ground_truth.nii.gz"),
              "--output", str(tmp_path / "o3")])  # fmt: skip
    assert exc.value.code == 2


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
CHANNELS = ["flair_time01", "flair_time02"]


def test_find_cases_rules(tmp_path: Path) -> None:
    f = _write(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    assert find_cases([f], ["ct"]) == [InputCase("x", (f,))]
    case = tmp_path / "c1"
    case.mkdir()
    t2 = _write(case / "flair_time02_b.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    t1 = _write(case / "flair_time01_a.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    assert find_cases([case], CHANNELS) == [InputCase("c1", (t1, t2))]


@pytest.mark.parametrize(
    ("setup", "channels", "error", "match"),
    [
        ("missing", ["ct"], FileNotFoundError, r"Input .*nope.nii.gz does not exist"),
        ("text", ["ct"], ValueError, r"Input .*scan.txt is not a NIfTI file"),
        ("empty_dir", ["ct"], ValueError, r"Input folder .*empty holds no .nii"),
        ("file_multi", CHANNELS, ValueError, r"x.nii.gz is a single file, but the model takes 2"),
        ("missing_channel", CHANNELS, ValueError, r"c1: no file for channel 'flair_time02'"),
        ("ambiguous", CHANNELS, ValueError, r"c1: 2 files .* for channel 'flair_time01'"),
        ("no_case", CHANNELS, ValueError, r"Input folder .*empty holds no case"),
        ("duplicate", ["ct"], ValueError, r"case names \['x'\]"),
    ],
)
def test_find_cases_bad_input(tmp_path: Path, setup: str, channels, error, match) -> None:
    vol = np.zeros((4, 4, 4), np.float32)
    inputs: list[Path]
    if setup == "missing":
        inputs = [tmp_path / "nope.nii.gz"]
    elif setup == "text":
        (tmp_path / "scan.txt").write_text("x")
        inputs = [tmp_path / "scan.txt"]
    elif setup in ("empty_dir", "no_case"):
        (tmp_path / "empty").mkdir()
        inputs = [tmp_path / "empty"]
    elif setup == "file_multi":
        inputs = [_write(tmp_path / "x.nii.gz", vol, np.eye(4))]
    elif setup in ("missing_channel", "ambiguous"):
        (tmp_path / "c1").mkdir()
        _write(tmp_path / "c1" / "flair_time01.nii.gz", vol, np.eye(4))
        if setup == "ambiguous":
            _write(tmp_path / "c1" / "flair_time01_copy.nii.gz", vol, np.eye(4))
            _write(tmp_path / "c1" / "flair_time02.nii.gz", vol, np.eye(4))
        inputs = [tmp_path / "c1"]
    else:  # duplicate
        (tmp_path / "d").mkdir()
        inputs = [_write(tmp_path / "x.nii.gz", vol, np.eye(4)),
                  _write(tmp_path / "d" / "x.nii", vol, np.eye(4))]  # fmt: skip
    with pytest.raises(error, match=match):
        find_cases(inputs, channels)


@pytest.fixture
def phantom_ckpt(tmp_path: Path) -> Path:
    ckpt = _checkpoint(tmp_path)
    _run_config(ckpt, "datamodules.PhantomDataModule", {"image_size": 32, "progress": False})
    return ckpt


def _expect_exit(capsys, argv: list[str], match: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_cli_rejects_4d_series_naming_the_file(tmp_path: Path, phantom_ckpt: Path, capsys):
    src = _write(tmp_path / "cine_4d.nii.gz", np.zeros((8, 8, 3, 5), np.float32), np.eye(4))
    _expect_exit(
        capsys,
        ["--ckpt", str(phantom_ckpt), "--input", str(src), "--output", str(tmp_path / "o")],
        f"{src} is a 4D series of shape (8, 8, 3, 5)",
    )


def test_cli_rejects_corrupt_nifti_naming_the_file(tmp_path: Path, phantom_ckpt: Path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    _expect_exit(
        capsys,
        ["--ckpt", str(phantom_ckpt), "--input", str(bad), "--output", str(tmp_path / "o")],
        f"Cannot read NIfTI file {bad}",
    )


def test_cli_refuses_to_overwrite_an_input(tmp_path: Path, phantom_ckpt: Path, capsys):
    src = _write(tmp_path / "scan.nii.gz", np.zeros((8, 8, 3), np.float32), np.eye(4))
    _expect_exit(
        capsys,
        ["--ckpt", str(phantom_ckpt), "--input", str(src), "--output", str(tmp_path)],
        "would overwrite an input",
    )


def test_checkpoint_without_dataset_config(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path)  # no config.yaml, no datamodule hyperparameters
    src = _write(tmp_path / "s.nii.gz", np.zeros((8, 8, 3), np.float32), np.eye(4))
    _expect_exit(
        capsys,
        ["--ckpt", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o")],
        "Pass --config <run dir>/config.yaml",
    )
    with pytest.raises(FileNotFoundError, match="Checkpoint .*missing.ckpt does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_dataset_and_network_must_agree(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)  # 1 channel, phantom classes
    _run_config(ckpt, "datamodules.MSSEG2DataModule", {"progress": False})
    with pytest.raises(ValueError, match="has 2 input channels, but the network .* takes 1"):
        load_checkpoint(ckpt)
    _run_config(ckpt, "torch.nn.Linear", {})
    with pytest.raises(ValueError, match="is not a LightningDataModule"):
        load_checkpoint(ckpt)


# --------------------------------------------------------------------------------------------
# every input and the output folder are checked before the first forward pass
# --------------------------------------------------------------------------------------------
def _good_scan(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write(path, np.zeros((8, 8, 3), np.float32), np.eye(4))


@pytest.mark.parametrize(
    "content",
    [b"", b"plain text, not a NIfTI header", None],
    ids=["empty", "text", "gzip-of-text"],
)
def test_cli_rejects_empty_or_non_nifti_file_naming_it(
    tmp_path: Path, phantom_ckpt: Path, capsys, content: bytes | None
):
    import gzip

    bad = tmp_path / "in" / "b_bad.nii.gz"
    _good_scan(tmp_path / "in" / "a_good.nii.gz")
    bad.write_bytes(gzip.compress(b"not a header" * 10) if content is None else content)
    out = tmp_path / "out"
    _expect_exit(
        capsys,
        ["--ckpt", str(phantom_ckpt), "--input", str(tmp_path / "in"), "--output", str(out)],
        f"Cannot read NIfTI file {bad}",
    )
    assert not out.exists()  # checked before anything was written


def test_read_nifti_names_an_empty_file(tmp_path: Path) -> None:
    # the same reader serves prepare_data
    from datamodules.nifti import read_nifti

    bad = tmp_path / "img0001.nii.gz"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=f"Cannot read NIfTI file {bad}"):
        read_nifti(bad)


def test_4d_file_in_the_middle_of_a_folder_stops_before_any_output(
    tmp_path: Path, phantom_ckpt: Path, capsys
):
    folder = tmp_path / "in"
    _good_scan(folder / "a.nii.gz")
    four_d = _write(folder / "b.nii.gz", np.zeros((8, 8, 3, 2), np.float32), np.eye(4))
    _good_scan(folder / "c.nii.gz")
    out = tmp_path / "out"
    _expect_exit(
        capsys,
        ["--ckpt", str(phantom_ckpt), "--input", str(folder), "--output", str(out)],
        f"{four_d} is a 4D series of shape (8, 8, 3, 2)",
    )
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under-file", "input-folder"])
def test_bad_output_folder_is_refused_before_any_work(
    tmp_path: Path, phantom_ckpt: Path, capsys, where: str
):
    folder = tmp_path / "in"
    scan = folder / "case.nii"  # .nii: the mask case.nii.gz would land beside it
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), str(scan))
    a_file = tmp_path / "masks.txt"
    a_file.write_text("x")
    out, match = {
        "file": (a_file, f"Output {a_file} is a file"),
        "under-file": (a_file / "sub", f"Output folder {a_file / 'sub'} cannot be created"),
        "input-folder": (folder, f"Output folder {folder} holds the input {scan}"),
    }[where]
    _expect_exit(
        capsys, ["--ckpt", str(phantom_ckpt), "--input", str(folder), "--output", str(out)], match
    )
    assert sorted(p.name for p in folder.iterdir()) == ["case.nii"]
    assert a_file.read_text() == "x"


def test_unwritable_output_folder_is_refused(tmp_path: Path, phantom_ckpt: Path, capsys):
    import os

    scan = _good_scan(tmp_path / "in" / "case.nii.gz")
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        out = Path("/proc/topk-dice-predictions")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "masks"
    _expect_exit(
        capsys,
        ["--ckpt", str(phantom_ckpt), "--input", str(scan), "--output", str(out)],
        f"Output folder {out} cannot be created or written",
    )


# --------------------------------------------------------------------------------------------
# make phantom-nifti: a scan to try make predict on
# --------------------------------------------------------------------------------------------
def test_phantom_nifti_export_round_trips_and_predicts(
    tmp_path: Path, phantom_ckpt: Path, capsys
) -> None:
    import importlib.util

    from datamodules.phantom import generate_phantom
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "phantom_nifti", REPO / "scripts" / "phantom_nifti.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = tmp_path / "phantom.yaml"
    init = {"num_train": 1, "num_val": 1, "num_test": 2, "volume_shape": [8, 40, 48], "seed": 7}
    config.write_text(yaml.safe_dump({"data": {"init_args": init}}))
    written = module.main(["--config", str(config), "--output", str(tmp_path / "nifti")])
    assert [p.name for p, _ in written] == ["phantom002.nii.gz", "phantom003.nii.gz"]
    image_path, label_path = written[1]
    # the volume prepare_data draws for case 3, in raw (x, y, z) order with the spacing
    image, label = generate_phantom(np.random.default_rng([7, 3]), shape=(8, 40, 48))
    img = nib.load(str(image_path))
    assert img.shape == (48, 40, 8)
    np.testing.assert_array_equal(np.asarray(img.dataobj), image.transpose(2, 1, 0))
    np.testing.assert_array_equal(np.asarray(nib.load(str(label_path)).dataobj).T, label)
    np.testing.assert_allclose(img.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    # the README walkthrough: predict on the exported images folder (labels kept apart)
    out = tmp_path / "masks"
    masks = main(
        ["--ckpt", str(phantom_ckpt), "--input", str(tmp_path / "nifti" / "images"),
         "--output", str(out)]
    )  # fmt: skip
    assert [p.name for p in masks] == ["phantom002.nii.gz", "phantom003.nii.gz"]
    assert nib.load(str(masks[1])).shape == (48, 40, 8)
