"""Slow end-to-end checks: real 2-process CPU DDP, resume from `last`, overfitting."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lightning_app.cli import SegmentationCLI
from losses import build_loss
from models import SegmentationModel
from tests.conftest import tiny_args
from tests.lightning_app.wandb_records import run_meta

pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict[str, str]], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key)][-1]


def test_ddp_two_processes_cpu(tiny_env: Path) -> None:
    # no default_root_dir: both ranks must agree on the generated run directory
    args = [a for a in tiny_args(tiny_env) if not a.startswith("--trainer.default_root_dir")]
    cmd = [
        sys.executable, "-m", "lightning_app", "fit", *args,
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tiny_env, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = list((tiny_env / "logs" / "phantom" / "ce_topk_dice").iterdir())
    assert len(runs) == 1, runs  # one run directory for both processes
    run_dir = runs[0]
    assert (run_dir / "config.yaml").is_file()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # rank 0 only
    rows = read_csv(run_dir / "csv" / "version_0" / "metrics.csv")
    # global_step: 2 train volumes x 8 slices / (batch 4 x 2 processes) = 2 steps
    assert last_value(rows, "step") == 1
    # synced metrics: the logged pooled Dice equals a single-process count over the WHOLE
    # validation set with the final weights (each rank only saw half of it)
    model = SegmentationModel.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", loss=build_loss("ce_topk_dice")
    )
    model.eval()
    from datamodules import PhantomDataModule

    dm = PhantomDataModule(data_dir=str(tiny_env / "phantom"), num_train=2, num_val=1,
                           num_test=1, volume_shape=(8, 64, 64), image_size=64, batch_size=4,
                           num_workers=0, progress=False)  # fmt: skip
    dm.setup("fit")
    c = model.num_classes
    tp, fp, fn = np.zeros(c), np.zeros(c), np.zeros(c)
    n_slices = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            pred = model(batch["image"]).argmax(1).numpy()
            tgt = batch["label"].numpy()
            n_slices += len(tgt)
            for k in range(c):
                tp[k] += np.sum((pred == k) & (tgt == k))
                fp[k] += np.sum((pred == k) & (tgt != k))
                fn[k] += np.sum((pred != k) & (tgt == k))
    assert n_slices == 8
    union = tp + fp + fn
    for k, key in enumerate(model.class_keys):
        logged = last_value(rows, f"val/dice/{key}") if union[k] else None
        if union[k]:
            assert logged == pytest.approx(2 * tp[k] / (2 * tp[k] + fp[k] + fn[k]), abs=1e-5)


class StopAfterFirstEpoch(L.Callback):
    """Ends the fit after epoch 0 as if the job had been stopped there (test helper)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.should_stop = True


def test_resume_from_last_continues_the_run(
    tiny_cli_args: Callable[..., list[str]], tiny_env: Path
) -> None:
    run_dir = tiny_env / "run"
    SegmentationCLI(
        args=[
            "fit",
            *tiny_cli_args(trainer__max_epochs=2),
            f"--trainer.callbacks+={__name__}.StopAfterFirstEpoch",
        ]
    )
    first = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert (first["epoch"], first["global_step"]) == (0, 4)
    # resume from the saved config: same run directory, checkpoints, W&B run id
    cli = SegmentationCLI(args=["fit", f"--config={run_dir / 'config.yaml'}", "--ckpt_path=last"])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 8
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8
    # scheduler continued over the 8-step horizon: lr_t = lr_0 (1 - t/8)^0.9, by hand, with
    # lr_0 the run's configured lr
    lr_0 = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["optimizer"]
    lr_0 = float(lr_0["init_args"]["lr"])
    lr_first = first["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr_first == pytest.approx(lr_0 * (1 - 4 / 8) ** 0.9)
    assert last["lr_schedulers"][0]["last_epoch"] == 8
    # CSV: one version per attempt; the second starts at epoch 1
    rows = read_csv(run_dir / "csv" / "version_1" / "metrics.csv")
    epochs = {int(float(r["epoch"])) for r in rows if r.get("epoch")}
    assert epochs == {1}
    # W&B: both attempts write the same run id
    metas = [run_meta(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]
    assert len(metas) == 2 and {m["id"] for m in metas} == {"run"}


def test_overfit_tiny_phantom_reaches_dice_090(tiny_env: Path) -> None:
    """Classic overfit check: validate on the training slices themselves; the pooled
    foreground Dice must reach 0.9 within 400 optimizer steps."""
    from datamodules import PhantomDataModule

    L.seed_everything(0)
    dm = PhantomDataModule(
        data_dir=str(tiny_env / "phantom"), num_train=2, num_val=1, num_test=1,
        volume_shape=(8, 64, 64), image_size=64, batch_size=4, num_workers=0, progress=False,
        imbalance=0.5, difficulty=0.5, bias_strength=0.0, noise_std=0.01,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    train_eval = torch.utils.data.DataLoader(dm.train_dataloader().dataset, batch_size=8)
    model = SegmentationModel(
        loss=build_loss("ce_dice"),
        in_channels=dm.in_channels,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0),
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=400, check_val_every_n_epoch=20,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=dm.train_dataloader(), val_dataloaders=train_eval)
    dice = float(trainer.callback_metrics["val/dice/mean"])
    assert dice >= 0.9, dice
