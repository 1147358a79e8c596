"""``make predict`` on nnU-Net datasets: inputs grouped by case id, outputs ``<case><ending>``
on the input's grid, and nnunetv2's own folder evaluation agreeing with ``make eval``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import datamodules.nnunet as nnunet_module
from datamodules.nnunet import NNUNetDataModule
from lightning_app.cli import SegmentationCLI
from lightning_app.predict import LoadedCheckpoint, find_nnunet_cases, main, predict_files
from tests.datamodules.nnunet_datasets import write_msd, write_png, write_v2
from tests.datamodules.test_nnunet_cli import _args
from tests.lightning_app.test_predict import _HP, ThresholdNet


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_channel_files_are_grouped_by_case_id(tmp_path: Path) -> None:
    folder = tmp_path / "imagesTs"
    for name in ("a_b_0001.nii.gz", "a_b_0000.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz"):
        _touch(folder / name)
    _touch(folder / "._a_b_0000.nii.gz")  # macOS debris
    _touch(folder / "notes.txt")  # another ending
    cases = find_nnunet_cases([folder], ".nii.gz")
    assert [c.name for c in cases] == ["a_b", "c"]  # ids keep their underscores
    assert [p.name for p in cases[0].files] == ["a_b_0000.nii.gz", "a_b_0001.nii.gz"]
    # single files group the same way; the same file twice counts once
    files = [folder / "c_0001.nii.gz", folder / "c_0000.nii.gz", folder / "c_0000.nii.gz"]
    (case,) = find_nnunet_cases(files, ".nii.gz")
    assert case.name == "c" and [p.name for p in case.files] == ["c_0000.nii.gz", "c_0001.nii.gz"]
    # MSD: one 4D file per case, named after the case
    (msd,) = find_nnunet_cases([_touch(tmp_path / "msd" / "la_003.nii.gz")], ".nii.gz", msd=True)
    assert msd.name == "la_003"


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["x_0000.nii.gz", "x_0002.nii.gz"], r"Case x: channel file .*x_0001\.nii\.gz is missing"),
        (["scan.nii.gz"], r"scan\.nii\.gz: nnU-Net input files are named <case>_XXXX\.nii\.gz"),
        (["x_0000.png"], r"holds no file ending in '\.nii\.gz'"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path: Path, names: list[str], match: str) -> None:
    for name in names:
        _touch(tmp_path / "in" / name)
    with pytest.raises(ValueError, match=match):
        find_nnunet_cases([tmp_path / "in"], ".nii.gz")
    with pytest.raises(ValueError, match=r"does not end in the dataset's file_ending '\.png'"):
        find_nnunet_cases([_touch(tmp_path / "y_0000.nii.gz")], ".png")


def test_png_prediction_keeps_the_size_and_is_the_known_answer(tmp_path: Path) -> None:
    """RGB ``<case>_0000.png`` -> grey ``<case>.png`` of the input's size; the threshold
    network's answer (R channel z-scored per image > 0.5) computed by hand."""
    ds = write_png(tmp_path, size=(16, 16))
    dm = NNUNetDataModule(raw_dir=str(ds), data_dir=str(tmp_path / "h5"), progress=False)
    net = ThresholdNet(in_channels=3)
    net.hparams = _HP(in_channels=3)
    loaded = LoadedCheckpoint(net, dm, 16, dm.slice_axis, "test")
    written = predict_files(loaded, [ds / "imagesTr"], tmp_path / "out", log=None)
    assert [p.name for p in written] == [f"img_{i}.png" for i in range(5)]
    for path in written:
        rgb = np.asarray(Image.open(ds / "imagesTr" / f"{path.stem}_0000.png"), np.float64)
        red = rgb[..., 0]
        expected = (red - red.mean()) / red.std() > 0.5
        mask = np.asarray(Image.open(path))
        assert mask.shape == red.shape and mask.dtype == np.uint8
        assert np.array_equal(mask, expected.astype(np.uint8))


def test_msd_4d_inputs_are_one_case_each(tmp_path: Path) -> None:
    ds = write_msd(tmp_path, n_test=2)
    dm = NNUNetDataModule(raw_dir=str(ds), data_dir=str(tmp_path / "h5"), progress=False)
    net = ThresholdNet(in_channels=2)
    net.hparams = _HP(in_channels=2)
    loaded = LoadedCheckpoint(net, dm, 16, dm.slice_axis, "test")
    written = predict_files(loaded, [ds / "imagesTs"], tmp_path / "out", log=None)
    assert [p.name for p in written] == ["tiny_100.nii.gz", "tiny_101.nii.gz"]
    source = nib.load(str(ds / "imagesTs" / "tiny_100.nii.gz"))
    out = nib.load(str(written[0]))
    assert out.shape == source.shape[:3]
    np.testing.assert_allclose(out.affine, source.affine)


def _per_case_dice(path: Path) -> dict[tuple[str, int], float]:
    with open(path) as f:
        return {(r["case"], int(r["label"])): float(r["dice"]) for r in csv.DictReader(f)}


def test_nnunet_folder_evaluation_of_predictions_equals_make_eval(
    tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fit 1 epoch on a two-channel dataset with an ignore label, ``make eval`` it
    (``python -m lightning_app test``), ``make predict`` imagesTs, and evaluate those
    predictions against labelsTs with nnunetv2's ``compute_metrics_on_folder``.

    The two per-case Dice tables agree class by class to float precision. Both conventions
    give NaN where reference and prediction are both empty for a class (nnU-Net: ``tp + fp + fn
    == 0``; ours: ``2 TP / (|P| + |G|)`` with ``0 / 0``), so the NaN cells must coincide and
    the finite ones are compared; ignore-label voxels leave both (nnU-Net's ``ignore_label``).
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    monkeypatch.setattr(nnunet_module, "TOTAL_FOREGROUND_SAMPLES", 6000)
    torch.manual_seed(0)
    ds = write_v2(tiny_env)
    fit = SegmentationCLI(args=["fit", *_args(tiny_env, ds, "--trainer.limit_train_batches=4")])
    run_dir = Path(fit.run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    test = SegmentationCLI(
        args=["test", f"--config={run_dir / 'config.yaml'}", f"--ckpt_path={ckpt}",
              "--trainer.default_root_dir=null"]
    )  # fmt: skip
    ours = _per_case_dice(Path(test.run_dir) / "per_case.csv")

    out = tiny_env / "predictions"
    written = main(["--ckpt", str(ckpt), "--input", str(ds / "imagesTs"), "--output", str(out)])
    assert [p.name for p in written] == ["tiny_case_100.nii.gz", "tiny_case_101.nii.gz"]
    for path in written:
        source = nib.load(str(ds / "imagesTs" / path.name.replace(".nii.gz", "_0000.nii.gz")))
        mask = nib.load(str(path))
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine)

    result = compute_metrics_on_folder(
        str(ds / "labelsTs"), str(out), None, NibabelIO(), ".nii.gz", [1, 2],
        ignore_label=3, num_processes=1,
    )  # fmt: skip
    theirs = {
        (Path(case["prediction_file"]).name.removesuffix(".nii.gz"), label): float(m["Dice"])
        for case in result["metric_per_case"]
        for label, m in case["metrics"].items()
    }
    assert set(theirs) == set(ours) == {(c, k) for c in ("tiny_case_100", "tiny_case_101")
                                        for k in (1, 2)}  # fmt: skip
    finite = 0
    for key, dice in ours.items():
        assert math.isnan(dice) == math.isnan(theirs[key]), key
        if not math.isnan(dice):
            assert dice == pytest.approx(theirs[key], rel=1e-12, abs=1e-12), key
            finite += dice > 0
    assert finite >= 1  # the network segments something, so the comparison has content
