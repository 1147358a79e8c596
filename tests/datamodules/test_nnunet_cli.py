"""An nnU-Net dataset through the CLI: fit and test, run naming, ignore label, phantom export."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import datamodules.nnunet as nnunet_module
from datamodules.nnunet import NNUNetDataModule
from lightning_app.cli import SegmentationCLI
from tests.conftest import CONFIGS, REPO
from tests.datamodules.nnunet_datasets import write_v2


def _args(tmp_path: Path, raw_dir: Path, *extra: str) -> list[str]:
    return [
        f"--config={CONFIGS / 'base.yaml'}",
        f"--config={CONFIGS / 'data' / 'nnunet.yaml'}",
        f"--config={CONFIGS / 'loss' / 'ce_topk_dice.yaml'}",
        f"--config={CONFIGS / 'trainer' / 'cpu.yaml'}",
        f"--data.raw_dir={raw_dir}",
        f"--data.data_dir={tmp_path / 'prepared'}",
        "--data.image_size=16",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--data.progress=false",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def test_fit_and_test_on_an_nnunet_dataset(tiny_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nnunet_module, "TOTAL_FOREGROUND_SAMPLES", 6000)
    ds = write_v2(tiny_env)
    cli = SegmentationCLI(args=["fit", *_args(tiny_env, ds)])
    # runs go under logs/<dataset folder name>/<loss>/
    run_dir = Path(cli.run_dir)
    assert run_dir.parent.parent == Path("logs") / "Dataset001_Tiny"
    assert run_dir.parent.name == "ce_topk_dice"
    # the ignore label reaches every loss term, and the model's metrics leave it out
    assert cli.model.ignore_index == 3 == cli.datamodule.ignore_index
    terms = [m for m in cli.model.loss.modules() if hasattr(m, "ignore_index")]
    assert terms and all(m.ignore_index == 3 for m in terms)
    assert cli.model.hparams.in_channels == 2
    assert cli.model.class_names == ["background", "organ", "lesion"]
    assert "val/dice/organ" in cli.trainer.callback_metrics
    # test: imagesTs + labelsTs (2 cases), one row each in per_case.csv
    ckpt = next(run_dir.glob("checkpoints/last.ckpt"))
    test = SegmentationCLI(
        args=["test", f"--config={run_dir / 'config.yaml'}", f"--ckpt_path={ckpt}",
              "--trainer.default_root_dir=null"]
    )  # fmt: skip
    with open(Path(test.run_dir) / "per_case.csv") as f:
        cases = sorted({row["case"] for row in csv.DictReader(f)})
    assert cases == ["tiny_case_100", "tiny_case_101"]


def test_evaluation_needs_no_raw_data_once_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nnunet_module, "TOTAL_FOREGROUND_SAMPLES", 6000)
    ds = write_v2(tmp_path)
    kwargs = {"data_dir": str(tmp_path / "out"), "num_workers": 0, "progress": False}
    dm = NNUNetDataModule(raw_dir=str(ds), **kwargs)
    dm.prepare_data()
    (ds / "dataset.json").unlink()
    again = NNUNetDataModule(raw_dir=str(ds), **kwargs)
    assert again.class_names == dm.class_names and again.ignore_index == 3
    assert again.preprocess_image(np.zeros((2, 1, 2, 2))).shape == (2, 1, 2, 2)


def test_phantom_exports_as_dataset900(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "phantom_nifti", REPO / "scripts" / "phantom_nifti.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = tmp_path / "phantom.yaml"
    init = {"num_train": 3, "num_val": 2, "num_test": 1, "volume_shape": [4, 24, 24], "seed": 7}
    config.write_text(yaml.safe_dump({"data": {"init_args": init}}))
    module.main(
        ["--config", str(config), "--output", str(tmp_path / "flat"),
         "--nnunet-output", str(tmp_path / "raw")]
    )  # fmt: skip
    root = tmp_path / "raw" / "Dataset900_Phantom"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 5 and meta["channel_names"] == {"0": "noNorm"}
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == ["phantom005_0000.nii.gz"]
    assert (root / "labelsTs" / "phantom005.nii.gz").is_file()
    # the same volumes as the phantom datamodule's own HDF5 (noNorm keeps the intensities)
    from datamodules import PhantomDataModule

    ph = PhantomDataModule(data_dir=str(tmp_path / "ph"), progress=False, **init)
    ph.prepare_data()
    nn = NNUNetDataModule(
        raw_dir=str(root), data_dir=str(tmp_path / "nn"), fold="all", progress=False
    )
    nn.prepare_data()
    with h5py.File(ph.split_path("test"), "r") as a, h5py.File(nn.split_path("test"), "r") as b:
        np.testing.assert_allclose(b["phantom005"]["image"][...], a["phantom005"]["image"][...])
        np.testing.assert_array_equal(b["phantom005"]["label"][...], a["phantom005"]["label"][...])


def test_bad_dataset_is_one_line_without_traceback(tiny_env: Path, capsys) -> None:
    from lightning_app.cli import main
    from lightning_app.errors import run_reporting_errors

    ds = write_v2(tiny_env)
    (ds / "labelsTr" / "tiny_case_002.nii.gz").unlink()
    assert run_reporting_errors(main, ["fit", *_args(tiny_env, ds)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Case tiny_case_002: label file")
    assert not any("Traceback" in line for line in err)
    assert not (tiny_env / "prepared").exists() or not list((tiny_env / "prepared").glob("*.h5"))
