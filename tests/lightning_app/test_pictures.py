"""What a comparison shows: the validation curves' axes (whole epochs from 1, Dice in percent),
the one W&B comparison run a rerun of the same plan updates, and ``make help`` off a terminal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from lightning_app.compare import loss_entries, run_comparison, sweep_k_entries
from lightning_app.compare.plots import curves_figure
from lightning_app.compare.report import comparison_run_id
from tests.conftest import REPO
from tests.lightning_app.test_compare import FakeCLI, make_comparison
from tests.lightning_app.wandb_records import history_and_summary, run_meta


def _visible_xticks(ax: plt.Axes) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


@pytest.mark.parametrize("n_epochs", [1, 2, 12])
def test_curves_use_whole_epochs_from_one_and_percent(n_epochs: int) -> None:
    # Lightning's epochs 0..n-1 (the CSV column) as one seed, and a second seed one epoch short
    seed_a = {e: 0.5 + 0.01 * e for e in range(n_epochs)}
    seed_b = {e: 0.3 + 0.01 * e for e in range(max(1, n_epochs - 1))}
    fig = curves_figure({"CE": [seed_a, seed_b]}, "t")
    assert fig is not None
    (ax,) = fig.axes
    ticks = _visible_xticks(ax)
    assert ticks, "no epoch tick in view"
    assert all(t == int(t) and 1 <= t <= n_epochs for t in ticks), ticks
    if n_epochs == 1:
        assert ticks == [1.0]
    lo, hi = ax.get_xlim()
    assert lo > 0 and lo < 1 and n_epochs < hi < n_epochs + 1
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == list(range(1, n_epochs + 1))
    # mean over the seeds that logged the epoch, in percent (by hand)
    expected = [
        100 * (seed_a[e] + seed_b[e]) / 2 if e in seed_b else 100 * seed_a[e]
        for e in range(n_epochs)
    ]
    assert list(line.get_ydata()) == pytest.approx(expected)
    assert "%" in ax.get_ylabel()
    plt.close(fig)


def test_curves_figure_none_without_values() -> None:
    assert curves_figure({"CE": [{}], "Dice": []}, "t") is None


def test_make_help_is_plain_off_a_terminal() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "\033" not in done.stdout
    lines = done.stdout.splitlines()
    for target in ("train", "eval", "predict", "compare", "test"):
        assert any(line.split()[:1] == [target] for line in lines), target


def test_predictions_are_ignored_by_git() -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", "predictions/case.nii.gz"], cwd=REPO, capture_output=True
    )
    assert done.returncode == 0, "predictions/ is not in .gitignore"


def test_comparison_run_id_follows_the_plan(tmp_path: Path) -> None:
    base = comparison_run_id(make_comparison(tmp_path / "a"))
    assert re.fullmatch(r"comparison-phantom-[0-9a-f]{12}", base)
    # the same plan, built again elsewhere with another reference row: the same id
    assert comparison_run_id(make_comparison(tmp_path / "b", reference="CE")) == base
    others = {
        "seeds": comparison_run_id(make_comparison(tmp_path / "a", seeds=[1, 3])),
        "losses": comparison_run_id(
            make_comparison(tmp_path / "a", entries=loss_entries(["ce", "ce_topk_dice"]))
        ),
        "overrides": comparison_run_id(
            make_comparison(tmp_path / "a", user_args=["--trainer.max_epochs=1"])
        ),
        "k": comparison_run_id(
            make_comparison(tmp_path / "a", entries=sweep_k_entries([5, 10]), mode="sweepk")
        ),
    }
    assert base not in others.values() and len(set(others.values())) == len(others), others


def test_rerun_of_a_comparison_updates_one_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "results"
    for _ in range(2):  # the second call finds every run finished and only reports again
        comparison = make_comparison(out, seeds=[1])
        run_comparison(comparison, runner=FakeCLI(), log=lambda s: None)
    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2
    ids = {run_meta(d)["id"] for d in run_dirs}
    assert ids == {comparison_run_id(comparison)}
    _, summary = history_and_summary(run_dirs[-1])
    assert summary["comparison/table/_type"] == "table-file"
