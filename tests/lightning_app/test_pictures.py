"""What a comparison shows: the validation curves' axes (whole epochs from 1, Dice in percent),
the one W&B comparison run a rerun of the same plan updates, and ``make help`` off a terminal."""

from __future__ import annotations

import subprocess

import matplotlib.pyplot as plt
import pytest

from lightning_app.compare.plots import curves_figure
from tests.conftest import REPO


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
