"""The Lightning CLI: config parsing, run directory, W&B offline / disabled, fast fit."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import lightning_app
from lightning_app.callbacks import RunSummary
from lightning_app.cli import SegmentationCLI
from lightning_app.loggers import WandbLogger, has_wandb_credentials, resolve_wandb_mode
from lightning_app.run_dir import dataset_name, loss_name
from models import SegmentationModel
from tests.conftest import CONFIGS, REPO
from tests.lightning_app.wandb_records import history_and_summary, run_meta

LOSS_CONFIGS = sorted((CONFIGS / "loss").glob("*.yaml"))
DATA_CONFIGS = sorted((CONFIGS / "data").glob("*.yaml"))
TRAINER_CONFIGS = sorted((CONFIGS / "trainer").glob("*.yaml"))


def test_lightning_app_is_this_repository() -> None:
    # an old PyPI package ("lightning-app") used the same import name
    assert Path(lightning_app.__file__).resolve().parent == REPO / "lightning_app"
    assert lightning_app.TEMPLATE_PACKAGE == "topk-dice-template"


def test_config_lists_are_not_empty() -> None:
    assert LOSS_CONFIGS and DATA_CONFIGS
    assert {p.stem for p in TRAINER_CONFIGS} == {"cpu", "gpu", "ddp", "debug"}


@pytest.mark.parametrize("loss_cfg", LOSS_CONFIGS, ids=lambda p: p.stem)
def test_every_loss_config_parses(loss_cfg: Path, tiny_env: Path) -> None:
    cli = SegmentationCLI(
        run=False,
        args=[
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'data' / 'phantom.yaml'}",
            f"--config={loss_cfg}",
            f"--data.data_dir={tiny_env / 'phantom'}",
        ],
    )
    assert isinstance(cli.model, SegmentationModel)
    assert cli.model.num_classes == cli.datamodule.num_classes
    assert cli.model.class_names == list(cli.datamodule.class_names)
    assert cli.model.hparams.in_channels == cli.datamodule.in_channels
    assert cli.run_dir == str(Path("logs") / "phantom" / loss_cfg.stem / Path(cli.run_dir).name)
    wb = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert wb and wb[0]._wandb_init["group"] == f"phantom/{loss_cfg.stem}"


@pytest.mark.parametrize("data_cfg", DATA_CONFIGS, ids=lambda p: p.stem)
def test_every_data_config_parses(data_cfg: Path, tiny_env: Path) -> None:
    cfg_data = yaml.safe_load(data_cfg.read_text())["data"]
    cli = SegmentationCLI(
        run=False,
        args=[
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={data_cfg}",
            f"--config={CONFIGS / 'loss' / 'ce_topk_dice.yaml'}",
            f"--data.data_dir={tiny_env / 'data'}",
        ],
    )
    assert type(cli.datamodule).__name__ == cfg_data["class_path"].rsplit(".", 1)[-1]
    assert cli.model.num_classes == cli.datamodule.num_classes >= 2
    assert len(cli.model.class_names) == cli.model.num_classes


@pytest.mark.parametrize("trainer_cfg", TRAINER_CONFIGS, ids=lambda p: p.stem)
def test_trainer_presets_parse(trainer_cfg: Path, tiny_env: Path) -> None:
    preset = yaml.safe_load(trainer_cfg.read_text())["trainer"]
    cli = SegmentationCLI(
        run=False,
        args=[
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'data' / 'phantom.yaml'}",
            f"--config={CONFIGS / 'loss' / 'ce.yaml'}",
            f"--config={trainer_cfg}",
            # the test needs no GPU: keep the preset's other keys, run on one CPU process
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.precision=32-true",
        ],
    )
    trainer_cfg_ns = cli.config.trainer
    for key, value in preset.items():
        if key not in ("accelerator", "devices", "strategy", "precision"):
            assert trainer_cfg_ns[key] == value


def test_fast_dev_run_fit(tiny_cli_args: Callable[..., list[str]]) -> None:
    cli = SegmentationCLI(args=["fit", *tiny_cli_args(trainer__fast_dev_run=2)])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 2
    assert "val/dice/mean" in cli.trainer.callback_metrics


def test_fit_writes_run_directory_and_wandb_offline_run(
    tiny_cli_args: Callable[..., list[str]], tiny_env: Path, capsys: pytest.CaptureFixture
) -> None:
    cli = SegmentationCLI(args=["fit", *tiny_cli_args()])
    run_dir = tiny_env / "run"
    names = cli.model.class_keys
    # config saved in the run dir, derived values left unresolved, seed recorded
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 42
    assert saved["trainer"]["default_root_dir"] == str(run_dir)
    assert saved["trainer"]["logger"][0]["init_args"].get("id") is None
    # checkpoints: best by val/dice/mean and last
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch000-dice") for n in ckpts)
    # CSV metrics with per-class keys
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        header = next(csv.reader(f))
    for key in ("train/loss", "train/loss/ce", "train/loss/topk_dice", "val/dice/mean"):
        assert key in header
    assert all(f"val/dice/{n}" in header and f"val/iou/{n}" in header for n in names)
    # the W&B offline run holds the per-class curves, the table and the images with masks
    (wb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    history, _ = history_and_summary(wb_dir)
    keys = set().union(*history)
    for n in names:
        assert f"val/dice/{n}" in keys and f"val/iou/{n}" in keys
    assert {"val/dice/mean", "val/iou/mean", "train/loss/topk_dice"} <= keys
    assert "val/scores/_type" in keys and "val/examples/all_masks" in keys
    (row,) = [r for r in history if "val/examples/all_masks" in r]
    mask_names = set().union(*(m.keys() for m in row["val/examples/all_masks"]))
    assert any(name.startswith("hard_pixels/") for name in mask_names)
    assert {"prediction", "ground_truth"} <= mask_names
    meta = run_meta(wb_dir)
    assert meta["id"] == "run" and meta["project"] == "topk-dice-phantom"
    assert meta["group"] == "phantom/ce_topk_dice"
    assert set(meta["tags"]) == {"phantom", "ce_topk_dice"}
    # the end-of-fit summary names the checkpoint, logs and W&B run
    out = capsys.readouterr().out
    assert "last ckpt" in out and "wandb sync" in out and str(run_dir) in out
    # starting a new fit in the same run directory without --ckpt_path is refused
    with pytest.raises(ValueError, match="already holds a run"):
        SegmentationCLI(args=["fit", *tiny_cli_args()])


def test_wandb_disabled_runs_csv_only(
    tiny_cli_args: Callable[..., list[str]], tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = SegmentationCLI(args=["fit", *tiny_cli_args(trainer__limit_train_batches=1)])
    assert not any(isinstance(lg, WandbLogger) for lg in cli.trainer.loggers)
    run_dir = tiny_env / "run"
    assert not (run_dir / "wandb").exists()
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()
    assert any("W&B           : off" in line for line in RunSummary().summary_lines(cli.trainer))


def test_default_run_directory_names(tiny_env: Path) -> None:
    cli = SegmentationCLI(
        run=False,
        args=[
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'data' / 'phantom.yaml'}",
            f"--config={CONFIGS / 'loss' / 'topk_dice.yaml'}",
        ],
    )
    parts = Path(cli.run_dir).parts
    assert parts[:3] == ("logs", "phantom", "topk_dice")
    cfg = cli.config
    assert dataset_name(cfg) == "phantom" and loss_name(cfg) == "topk_dice"


def test_wandb_mode_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert not has_wandb_credentials() and resolve_wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / "netrc").chmod(0o600)
    assert has_wandb_credentials() and resolve_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="`WANDB_MODE` to be one of online, offline, disabled"):
        resolve_wandb_mode()
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ValueError, match="`log_model=False` for an offline W&B run"):
        WandbLogger(save_dir=str(tmp_path), log_model=True)


def test_cli_logger_is_offline_without_credentials(
    tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no WANDB_MODE, no key, no netrc entry: offline, never a login prompt
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tiny_env / "no-netrc"))
    cli = SegmentationCLI(
        run=False,
        args=[
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'data' / 'phantom.yaml'}",
            f"--config={CONFIGS / 'loss' / 'ce.yaml'}",
        ],
    )
    (wb,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert wb._wandb_init["mode"] == "offline" and wb.mode == "offline"


def test_logged_dice_is_finite_or_nan_only(tiny_cli_args: Callable[..., list[str]]) -> None:
    cli = SegmentationCLI(args=["fit", *tiny_cli_args(trainer__fast_dev_run=1)])
    for key, value in cli.trainer.callback_metrics.items():
        if key.startswith("val/dice/"):
            v = float(value)
            assert math.isnan(v) or 0.0 <= v <= 1.0
