"""Shared fixtures: tiny CLI settings (tiny phantom, 1 epoch, CPU, no workers, W&B offline
into tmp_path) and a random-tensor datamodule for model unit tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PYTHON = REPO / ".venv" / "bin" / "python"

#: Tiny phantom: 2+1+1 volumes of 8 slices of 64x64; 4 train batches of 4 slices per epoch.
TINY_PHANTOM = {
    "num_train": 2,
    "num_val": 1,
    "num_test": 1,
    "volume_shape": "[8, 64, 64]",
    "image_size": 64,
    "batch_size": 4,
    "num_workers": 0,
    "progress": "false",
}


def tiny_args(
    tmp_path: Path, loss: str = "ce_topk_dice", data_dir: Path | None = None
) -> list[str]:
    """CLI arguments of a tiny CPU run in ``tmp_path`` (run directory ``tmp_path/run``)."""
    data_dir = data_dir or tmp_path / "phantom"
    args = [
        f"--config={CONFIGS / 'base.yaml'}",
        f"--config={CONFIGS / 'loss' / f'{loss}.yaml'}",
    ]
    data_cfg = CONFIGS / "data" / "phantom.yaml"
    if data_cfg.is_file():
        args.append(f"--config={data_cfg}")
    else:
        args.append("--data=datamodules.PhantomDataModule")
    args.append(f"--data.data_dir={data_dir}")
    args += [f"--data.{k}={v}" for k, v in TINY_PHANTOM.items()]
    args += [
        f"--config={CONFIGS / 'trainer' / 'cpu.yaml'}",
        "--trainer.max_epochs=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    return args


@pytest.fixture
def tiny_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B offline and silent, its files and caches in ``tmp_path``; cwd = ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / ".wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb_config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / ".wandb_data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("LIGHTNING_APP_RUN_NAME", raising=False)
    yield tmp_path
    os.environ.pop("LIGHTNING_APP_RUN_NAME", None)


@pytest.fixture
def tiny_cli_args(tiny_env: Path) -> Callable[..., list[str]]:
    """``tiny_cli_args(loss="ce_topk_dice", **overrides)`` -> argument list for the CLI;
    ``overrides`` become ``--key=value`` (dots: ``trainer__max_epochs=2``)."""

    def make(loss: str = "ce_topk_dice", **overrides: object) -> list[str]:
        args = tiny_args(tiny_env, loss)
        args += [f"--{k.replace('__', '.')}={v}" for k, v in overrides.items()]
        return args

    return make


class RandomSlices(Dataset):
    """``n`` random slices: image (C_in, S, S) float32 and label (S, S) int64 in [0, C)."""

    def __init__(self, n: int, in_channels: int, num_classes: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, in_channels, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class RandomSliceDataModule(L.LightningDataModule):
    """Random tensors in the contract's train/val batch format (model unit tests only)."""

    def __init__(
        self, num_classes: int = 3, in_channels: int = 1, size: int = 32, n: int = 8
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, size
        self.class_names = ["background"] + [f"organ {i}" for i in range(1, num_classes)]
        self.n = n

    def train_dataloader(self) -> DataLoader:
        ds = RandomSlices(self.n, self.in_channels, self.num_classes, self.image_size, 0)
        return DataLoader(ds, batch_size=4, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        ds = RandomSlices(self.n, self.in_channels, self.num_classes, self.image_size, 1)
        return DataLoader(ds, batch_size=4)


@pytest.fixture
def random_dm() -> RandomSliceDataModule:
    return RandomSliceDataModule()
