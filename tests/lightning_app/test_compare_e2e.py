"""End to end: a 2 losses x 1 seed comparison on a tiny phantom through the real CLI
(``python -m lightning_app fit`` and ``test`` in subprocesses), then the resume skip."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from lightning_app.compare import (
    FIT_DONE,
    Comparison,
    loss_entries,
    main,
    run_comparison,
    run_state,
)
from tests.conftest import CONFIGS, TINY_PHANTOM

pytestmark = pytest.mark.slow


def test_two_losses_one_seed_through_the_cli(tiny_env: Path) -> None:
    overrides = [f"--data.{k}={v}" for k, v in TINY_PHANTOM.items()]
    overrides += [
        f"--data.data_dir={tiny_env / 'phantom'}",
        "--data.num_test=3",
        f"--config={CONFIGS / 'trainer' / 'cpu.yaml'}",
        "--trainer.max_epochs=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
    ]
    out = tiny_env / "results" / "phantom"
    comparison = Comparison(
        dataset="phantom",
        entries=loss_entries(["ce", "ce_dice"], CONFIGS),
        seeds=[7],
        user_args=overrides,
        out_dir=out,
        reference="CE + Dice",
        configs_dir=CONFIGS,
    )
    messages: list[str] = []
    start = time.monotonic()
    paths = run_comparison(comparison, log=messages.append)
    first = time.monotonic() - start

    specs = comparison.plan(None)
    for spec in specs:
        assert run_state(spec.run_dir) == "done"
        assert (spec.run_dir / "checkpoints" / "last.ckpt").is_file()
        assert (spec.run_dir / "summary.md").is_file()
    for kind in ("markdown", "csv", "per_case", "per_class_plot", "curves_plot"):
        assert paths[kind].is_file() and paths[kind].parent == out
    md = paths["markdown"].read_text()
    assert md.index("| CE |") < md.index("| CE + Dice |")
    poster = md.split("The poster's columns")[1]  # per-class columns, as the poster has them
    assert "\n| Loss | mDice | mIoU | synthetic_large_organ | " in poster

    # the table's Wilcoxon p is scipy's exact test on the case differences of the per-case
    # CSV, and `analyze` rebuilds the same table from that CSV alone
    with paths["per_case"].open() as f:
        rows = list(csv.DictReader(f))
    assert {"gt_empty", "pred_empty"} <= set(rows[0])
    per_case: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["gt_empty"] == "False":
            per_case.setdefault((r["loss"], r["case"]), []).append(float(r["dice"] or 0.0))
    cases = sorted({c for _, c in per_case})
    assert len(cases) == 3
    d = [np.mean(per_case[("CE", c)]) - np.mean(per_case[("CE + Dice", c)]) for c in cases]
    with paths["csv"].open() as f:
        table = {r["loss"]: r for r in csv.DictReader(f)}
    assert int(table["CE"]["n_cases"]) == 3
    assert float(table["CE"]["diff"]) == pytest.approx(100 * np.mean(d))
    if any(d):
        assert float(table["CE"]["p_wilcoxon"]) == pytest.approx(wilcoxon(d, method="exact").pvalue)
    again = main(["analyze", "--per-case", str(paths["per_case"]), "--out", str(tiny_env / "again"),
                  "--reference", "CE + Dice"])  # fmt: skip
    assert again["csv"].read_text() == paths["csv"].read_text()

    # the validation curves came from each run's CSV logger (2 epochs)
    assert "curves_plot" in paths

    # resume: a second invocation launches nothing and rewrites the same table
    messages.clear()
    start = time.monotonic()
    run_comparison(comparison, log=messages.append)
    assert sum("finished, skipped" in m for m in messages) == 2
    assert not any(": fit (" in m or "test done" in m for m in messages)
    assert time.monotonic() - start < first / 2

    # an interrupted fit (checkpoint, no completion marker, no test output) is continued with
    # `fit --ckpt_path=<last.ckpt>` through the real CLI, then tested
    ce_run = specs[0].run_dir
    (ce_run / FIT_DONE).unlink()
    (ce_run / "per_case.csv").unlink()
    assert run_state(ce_run) == "resume"
    messages.clear()
    run_comparison(comparison, log=messages.append)
    assert any(f"{ce_run.name}: fit (continued from last.ckpt)" in m for m in messages)
    assert sum("finished, skipped" in m for m in messages) == 1
    assert run_state(ce_run) == "done"
    log = (ce_run / "compare.log").read_text()
    assert f"--ckpt_path={ce_run / 'checkpoints' / 'last.ckpt'}" in log
