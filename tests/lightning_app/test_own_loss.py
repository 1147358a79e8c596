"""A user's own loss, as docs/losses.md tells it: a plain ``nn.Module(logits, target)`` in the
user's module (outside ``losses/``), a ``configs/loss/<name>.yaml`` naming it, alone or as a
term of a ``CompoundLoss``; then training through the real CLI and a comparison row titled
from the config. Nothing in the package is edited."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_app.cli import SegmentationCLI, loss_name
from lightning_app.compare.plan import Comparison, loss_entries
from losses import SoftDiceLoss
from tests.conftest import CONFIGS, tiny_args

TVERSKY_MODULE = '''
from torch import nn


class TverskyLoss(nn.Module):
    """1 - mean_c (TP_c + s) / (TP_c + alpha FP_c + beta FN_c + s), sums over the batch."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1e-5):
        super().__init__()
        self.alpha, self.beta, self.smooth = alpha, beta, smooth

    def forward(self, logits, target):
        probs = logits.softmax(1)
        onehot = nn.functional.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        dims = (0, *range(2, logits.ndim))
        tp = (probs * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1 - score.mean()
'''

TVERSKY_CONFIG = """
name: Tversky
model:
  loss:
    class_path: my_losses.TverskyLoss
    init_args:
      alpha: 0.3
      beta: 0.7
"""

CE_TVERSKY_CONFIG = """
model:
  loss:
    class_path: losses.CompoundLoss
    init_args:
      terms:
        ce:
          class_path: losses.CrossEntropyLoss
        tversky:
          class_path: my_losses.TverskyLoss
      weights:
        ce: 0.5
        tversky: 0.5
"""


@pytest.fixture
def user_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of ``configs/`` with the user's two loss configs; ``my_losses`` importable."""
    code = tmp_path / "user_code"
    code.mkdir()
    (code / "my_losses.py").write_text(textwrap.dedent(TVERSKY_MODULE))
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "my_losses", raising=False)
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    (configs / "loss" / "tversky.yaml").write_text(TVERSKY_CONFIG)
    (configs / "loss" / "ce_tversky.yaml").write_text(CE_TVERSKY_CONFIG)
    return configs


def test_the_recipe_loss_is_a_tversky_loss(user_configs: Path) -> None:
    from my_losses import TverskyLoss

    # alpha = beta = 1/2 without smoothing is the batch-pooled Dice with plain denominators
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, 7, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 9, 7), generator=gen)
    dice = SoftDiceLoss(squared=False, batch=True, smooth=0.0)(logits, target)
    torch.testing.assert_close(TverskyLoss(0.5, 0.5, smooth=0.0)(logits, target), dice)


def user_args(tmp_path: Path, config: Path) -> list[str]:
    args = tiny_args(tmp_path)
    return [
        f"--config={config}" if a.startswith("--config=") and "/loss/" in a else a for a in args
    ]


@pytest.mark.parametrize("preset", ["tversky", "ce_tversky"])
def test_own_loss_trains_through_the_cli(preset: str, user_configs: Path, tiny_env: Path) -> None:
    from my_losses import TverskyLoss

    args = user_args(tiny_env, user_configs / "loss" / f"{preset}.yaml")
    cli = SegmentationCLI(
        args=["fit", *args, "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    assert loss_name(cli.config["fit"]) == preset  # runs go to logs/<dataset>/<preset>/
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    if preset == "tversky":
        assert isinstance(cli.model.loss, TverskyLoss)
    else:  # the compound logs each term
        assert isinstance(cli.model.loss.terms["tversky"], TverskyLoss)
        assert {"train/loss/ce", "train/loss/tversky"} <= set(metrics)


def test_comparison_rows_are_titled_from_the_configs(user_configs: Path, tmp_path: Path) -> None:
    entries = loss_entries(["ce_dice", "tversky", "ce_tversky"], user_configs)
    assert [e.label for e in entries] == ["CE + Dice", "Tversky", "ce_tversky"]
    comparison = Comparison(
        dataset="phantom", entries=entries, seeds=[1], out_dir=tmp_path / "out",
        configs_dir=user_configs, reference="CE + Dice",
    )  # fmt: skip
    specs = comparison.plan(None)
    assert [s.entry.key for s in specs] == ["ce_dice", "tversky", "ce_tversky"]
    assert f"--config={user_configs / 'loss' / 'tversky.yaml'}" in specs[1].args
