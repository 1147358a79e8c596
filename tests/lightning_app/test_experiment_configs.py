"""Config roles: data configs hold data only, recipes live in configs/experiment/.

``make train`` and ``make compare`` on the phantom must resolve to the same effective config as
when the phantom's recipe lived in ``configs/data/phantom.yaml`` and the comparison protocol in
``configs/compare/phantom.yaml`` (both kept below as they were, comments left out).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_app.cli import SegmentationCLI
from lightning_app.compare.plan import Comparison, loss_entries
from tests.conftest import CONFIGS, REPO

EXPERIMENTS = CONFIGS / "experiment"

#: configs/data/phantom.yaml when it also carried the phantom's training recipe
PHANTOM_DATA_WITH_RECIPE = """
model:
  optimizer:
    class_path: torch.optim.AdamW
    init_args: {lr: 0.002, weight_decay: 0.0001}
  model_kwargs:
    decoder_channels: [128, 64, 32, 16, 16]
data:
  class_path: datamodules.PhantomDataModule
  init_args:
    data_dir: data/phantom
    num_train: 16
    num_val: 4
    num_test: 4
    volume_shape: [32, 128, 128]
    spacing: [2.0, 1.0, 1.0]
    imbalance: 1.0
    difficulty: 1.0
    noise_std: 0.05
    bias_strength: 0.2
    protocol: default
    image_size: 128
    batch_size: 8
    num_workers: 1
    seed: 1234
trainer:
  max_epochs: 12
"""

#: configs/compare/phantom.yaml, the comparison protocol on the phantom
PHANTOM_COMPARE = """
model:
  optimizer:
    class_path: torch.optim.AdamW
    init_args: {lr: 0.001, weight_decay: 0.0001}
data:
  init_args: {data_dir: data/phantom-compare, num_test: 16}
trainer:
  max_epochs: 5
"""


def effective_config(args: list[str], capsys: pytest.CaptureFixture) -> dict:
    """``python -m lightning_app fit <args> --print_config``, parsed (nothing is built)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        SegmentationCLI(args=["fit", *args, "--print_config"])
    assert stop.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    config.pop("config", None)  # the list of files given, not a setting
    return config


def make_train_args(*make_vars: str) -> list[str]:
    """The Lightning CLI arguments of ``make train <make_vars>`` (from ``make -n``)."""
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "train", *make_vars],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (line,) = [ln for ln in out.splitlines() if " -m lightning_app fit " in ln]
    words = shlex.split(line)
    return words[words.index("fit") + 1 :]


def test_data_configs_describe_data_only() -> None:
    for path in sorted((CONFIGS / "data").glob("*.yaml")):
        assert list(yaml.safe_load(path.read_text())) == ["data"], path


def test_make_train_uses_the_datasets_experiment_when_there_is_one() -> None:
    phantom = make_train_args()
    assert "configs/experiment/phantom.yaml" in phantom
    assert phantom.index("configs/data/phantom.yaml") < phantom.index(
        "configs/experiment/phantom.yaml"
    )
    assert not any("experiment" in a for a in make_train_args("DATASET=synapse"))
    assert not any("experiment" in a for a in make_train_args("EXPERIMENT="))
    chosen = make_train_args("DATASET=synapse", "EXPERIMENT=compare_synapse", "ARGS=--x=1")
    assert "configs/experiment/compare_synapse.yaml" in chosen and chosen[-1] == "--x=1"


def test_make_train_config_is_the_recipe_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(REPO)  # make's paths are relative to the repository
    monkeypatch.setattr(sys, "argv", ["lightning_app"])
    old_data = tmp_path / "phantom.yaml"
    old_data.write_text(PHANTOM_DATA_WITH_RECIPE)
    old = effective_config(
        ["--config", "configs/base.yaml", "--config", str(old_data),
         "--config", "configs/loss/ce_topk_dice.yaml"],
        capsys,
    )  # fmt: skip
    new = effective_config(make_train_args(), capsys)
    assert new == old
    assert new["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert new["trainer"]["max_epochs"] == 12


def test_make_compare_config_is_the_protocol_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning_app"])
    comparison = Comparison(
        dataset="phantom", entries=loss_entries(["ce_dice"]), seeds=[1],
        out_dir=tmp_path / "results", configs_dir=CONFIGS,
    )  # fmt: skip
    (spec,) = comparison.plan(None)
    configs = [a.removeprefix("--config=") for a in spec.args if a.startswith("--config=")]
    assert configs == [
        str(CONFIGS / "base.yaml"),
        str(CONFIGS / "data" / "phantom.yaml"),
        str(comparison.loss_config(spec.entry)),
        str(EXPERIMENTS / "phantom.yaml"),
        str(EXPERIMENTS / "compare_phantom.yaml"),
    ]
    (tmp_path / "data.yaml").write_text(PHANTOM_DATA_WITH_RECIPE)
    (tmp_path / "compare.yaml").write_text(PHANTOM_COMPARE)
    rest = [a for a in spec.args if not a.startswith("--config=")]
    old_args = [
        f"--config={CONFIGS / 'base.yaml'}",
        f"--config={tmp_path / 'data.yaml'}",
        f"--config={comparison.loss_config(spec.entry)}",
        f"--config={tmp_path / 'compare.yaml'}",
        *rest,
    ]
    old = effective_config(old_args, capsys)
    new = effective_config(list(spec.args), capsys)
    assert new == old
    assert new["trainer"]["max_epochs"] == 5
    assert new["data"]["init_args"]["num_test"] == 16
