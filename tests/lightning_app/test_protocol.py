"""One setting drives the protocol: ``data.protocol`` selects the training transforms and,
unless ``model.test_protocol`` is set, the model's test path and metric conventions; the
poster's configs select TransUNet's protocol and seed."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import PhantomDataModule
from datamodules.transforms import TransUNetTransform
from lightning_app.cli import SegmentationCLI
from losses import build_loss
from models import SegmentationModel
from tests.conftest import CONFIGS


@pytest.mark.parametrize(
    ("overrides", "data_protocol", "test_protocol"),
    [
        ({}, "default", "default"),
        ({"data__protocol": "transunet"}, "transunet", "transunet"),
        (
            {"data__protocol": "transunet", "model__test_protocol": "default"},
            "transunet",
            "default",
        ),
        ({"model__test_protocol": "transunet"}, "default", "transunet"),
    ],
)
def test_data_protocol_drives_the_test_protocol_unless_set(
    tiny_cli_args, overrides, data_protocol, test_protocol
) -> None:
    cli = SegmentationCLI(run=False, args=tiny_cli_args(**overrides))
    assert cli.datamodule.protocol == data_protocol
    assert cli.model.test_evaluator.protocol == test_protocol
    assert cli.model.test_protocol == test_protocol


@pytest.mark.parametrize(
    ("dataset", "protocol"),
    [("synapse", "transunet"), ("acdc", "transunet"), ("msseg2", "default")],
)
def test_paper_configs_select_transunet_protocol_and_seed(
    dataset: str, protocol: str, tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning_app"])
    cli = SegmentationCLI(
        run=False,
        args=[
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'data' / f'{dataset}.yaml'}",
            f"--config={CONFIGS / 'loss' / 'ce_dice.yaml'}",
            f"--config={CONFIGS / 'experiment' / f'compare_{dataset}.yaml'}",
            f"--data.data_dir={tiny_env / 'data'}",
        ],
    )
    assert cli.config["seed_everything"] == 1234  # TransUNet's seed
    assert cli.datamodule.protocol == protocol
    assert cli.model.test_evaluator.protocol == protocol


def test_model_adopts_the_datamodule_protocol_outside_the_cli(tmp_path: Path) -> None:
    """``Trainer.test(model, datamodule)`` with ``test_protocol=None``: the datamodule's
    protocol, whose test path (one slice per forward pass) the model then runs."""
    dm = PhantomDataModule(
        data_dir=str(tmp_path),
        num_train=1,
        num_val=1,
        num_test=1,
        volume_shape=(4, 40, 44),
        image_size=32,
        num_workers=0,
        progress=False,
        protocol="transunet",
    )
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.train_set.transform, TransUNetTransform)
    model = SegmentationModel(build_loss("ce"), dm.in_channels, dm.num_classes, dm.class_names)
    assert model.test_evaluator.protocol == "default"
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    with torch.no_grad():
        trainer.test(model, datamodule=dm, verbose=False)
    assert model.test_evaluator.protocol == "transunet"
    assert shapes == [(1, 1, 32, 32)] * 4


@pytest.mark.parametrize("protocol", ["default", "transunet"])
def test_make_predict_runs_the_checkpoints_data_protocol(tmp_path: Path, protocol: str) -> None:
    """``lightning_app.predict`` segments under the training datamodule's protocol: under
    ``transunet`` the written mask is TransUNet's ``test_single_volume`` (re-derived with
    scipy) of the canonical volume."""
    import nibabel as nib
    import numpy as np

    from lightning_app.predict import load_checkpoint, main
    from models.inference import predict_volume
    from tests.lightning_app.test_predict import _checkpoint, _run_config, _write
    from tests.models.test_inference import transunet_test_single_volume

    ckpt = _checkpoint(tmp_path)
    init = {"image_size": 32, "progress": False, "protocol": protocol}
    _run_config(ckpt, "datamodules.PhantomDataModule", init)
    raw = np.random.default_rng(0).random((37, 45, 3)).astype(np.float32)  # (X, Y, Z), RAS
    (tmp_path / "in").mkdir()
    src = _write(tmp_path / "in" / "a.nii.gz", raw, np.diag([1.0, 1.0, 3.0, 1.0]))
    (out,) = main(["--ckpt", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o")])
    got = np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0)  # canonical (D, H, W)
    model = load_checkpoint(ckpt).model
    volume = raw.transpose(2, 1, 0)[None]  # (C, D, H, W)
    if protocol == "transunet":
        expected = transunet_test_single_volume(model, volume, 32)
    else:
        expected = predict_volume(model, torch.from_numpy(volume), 32).numpy()
    np.testing.assert_array_equal(got, expected)
