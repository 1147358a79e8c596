"""Cross-validation comparisons (``make compare FOLDS="0 1 2 3 4"``): the plan, every launcher
with a fake CLI, the pooled per-case CSV and its statistics; the real CLI on a tiny nnU-Net
dataset with two folds (slow).

Reference values are computed here from the synthetic per-case rows with numpy / scipy.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from lightning_app.compare import Comparison, LocalPool, loss_entries, main, run_comparison
from lightning_app.compare.per_case import group_comparison_rows
from lightning_app.compare.runs import spec_from_json, spec_to_json
from lightning_app.compare.slurm import SlurmLauncher
from tests.conftest import CONFIGS, REPO
from tests.lightning_app.test_compare import synthetic_rows, write_per_case

FOLD_CASES = 3  # held-out cases per fold of the fake CLI
NAME = re.compile(r"compare-(.+)-seed(\d+)-fold(\d+)-[0-9a-f]{8}")


def fold_dice(key: str, seed: int, fold: int) -> np.ndarray:
    """Per-case Dice (FOLD_CASES cases, 2 classes) of a fake fold run."""
    rng = np.random.default_rng([seed, fold, len(key)])
    return rng.uniform(0.3, 0.9, (FOLD_CASES, 2))


class FoldFakeCLI:
    """Stands in for ``python -m lightning_app`` and its data preparation: fold ``k`` tests
    the cases ``pat_<k>_<i>`` (what ``--data.test_split=held_out`` gives)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []

    def __call__(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
        sub = cmd[3]
        args = dict(a.split("=", 1) for a in cmd[4:] if "=" in a and not a.startswith("--config"))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"fake {sub}\n")
        if sub == "prepare":
            self.calls.append((sub, args["--data.fold"], cmd))
            return 0
        run_dir = Path(args["--trainer.default_root_dir"])
        self.calls.append((sub, run_dir.name, cmd))
        key, seed, fold = NAME.fullmatch(run_dir.name).groups()
        assert args["--data.fold"] == fold and args["--data.test_split"] == "held_out"
        if sub == "fit":
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text("fake: 1\n")
            (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
        else:
            rows = synthetic_rows(fold_dice(key, int(seed), int(fold)), ["organ", "lesion"])
            for row in rows:
                row["case"] = f"pat_{fold}_{row['case'][-1]}"
            write_per_case(run_dir / "per_case.csv", rows)
        return 0


def fold_comparison(out: Path, folds=(0, 1, 2), **kwargs) -> Comparison:
    kwargs.setdefault("entries", loss_entries(["ce", "ce_dice"]))
    kwargs.setdefault("seeds", [1, 2])
    kwargs.setdefault("reference", "CE + Dice")
    return Comparison(
        dataset="nnunet", out_dir=out, configs_dir=CONFIGS, folds=list(folds), **kwargs
    )


@pytest.fixture
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


# ---------------------------------------------------------------------- plan
@pytest.mark.parametrize(
    ("user_args", "name"),
    [
        (["--data.raw_dir=/data/nnUNet_raw/Dataset900_Phantom/"], "Dataset900_Phantom"),
        (["--data.raw_dir", "Task04_Hippocampus", "--data.image_size=64"], "Task04_Hippocampus"),
        (["--data.image_size=64"], "nnunet"),
    ],
)
def test_the_data_is_named_after_its_folder(tmp_path: Path, user_args, name) -> None:
    """Titles, plots, the W&B project and the default output folder name an nnU-Net dataset
    by its folder, as its runs' logs/<folder>/ do."""
    comparison = fold_comparison(tmp_path, user_args=user_args)
    assert comparison.data_name == name
    comparison.out_dir = None
    comparison.__post_init__()
    assert comparison.out_dir == Path("results") / name


def test_plan_runs_every_loss_seed_and_fold(tmp_path: Path) -> None:
    comparison = fold_comparison(tmp_path, user_args=["--data.raw_dir=x"])
    specs = comparison.plan(None)
    assert comparison.n_runs == len(specs) == 2 * 2 * 3
    assert [(s.entry.key, s.seed, s.fold) for s in specs] == [
        (key, seed, fold) for key in ("ce", "ce_dice") for seed in (1, 2) for fold in (0, 1, 2)
    ]
    for spec in specs:
        assert NAME.fullmatch(spec.name) and spec.run_dir == tmp_path / "runs" / spec.name
        assert f"--data.fold={spec.fold}" in spec.args
        assert "--data.test_split=held_out" in spec.args
        assert spec.args[-1] == "--data.raw_dir=x"  # ARGS last
    assert len({s.run_dir for s in specs}) == len(specs)  # no two runs share a directory
    # the fold is part of the name, not of the settings hash
    assert len({s.name.rsplit("-", 1)[1] for s in specs if s.entry.key == "ce"}) == 1
    for spec in specs:
        back, _, _ = spec_from_json(spec_to_json(spec, "python", "last"))
        assert back == spec and back.fold == spec.fold


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "phantom"}, r"--folds needs a datamodule with `fold` and `test_split`"),
        ({"folds": [0, 0]}, r"`folds` without repeats"),
        ({"folds": [-1]}, r"`folds` to hold fold numbers >= 0"),
        ({"folds": []}, r"`folds` to name at least one fold"),
        ({"user_args": ["--data.fold=2"]}, r"sets --data.fold itself"),
        ({"user_args": ["--data.test_split=auto"]}, r"sets --data.test_split itself"),
    ],
)
def test_bad_fold_settings(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"dataset": "nnunet", "entries": loss_entries(["ce"]), "seeds": [1],
            "out_dir": tmp_path, "configs_dir": CONFIGS, "folds": [0, 1], **kwargs}  # fmt: skip
    with pytest.raises(ValueError, match=match):
        Comparison(**args)


def test_main_dry_run_with_folds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(REPO)
    out = tmp_path / "dry"
    assert main(["losses", "--dataset", "nnunet", "--losses", "ce", "--seeds", "1", "--folds",
                 "0", "1", "--out", str(out), "--dry-run"]) == {}  # fmt: skip
    text = capsys.readouterr().out
    assert "1 rows x 1 seeds x 2 folds on nnunet" in text
    for fold in (0, 1):
        assert re.search(rf"\[new\] compare-ce-seed42-fold{fold}-[0-9a-f]{{8}}", text)
        assert f"--data.fold={fold} --data.test_split=held_out" in text
    with pytest.raises(ValueError, match=r"`folds` to hold fold numbers"):
        main(["losses", "--dataset", "nnunet", "--folds", "0", "all", "--dry-run"])


# ---------------------------------------------------------------------- launchers + report
def _check_pooled_report(paths: dict[str, Path]) -> None:
    """Every case once per (loss, seed), with its fold; the table's Wilcoxon test and n_cases
    on the pooled cases, computed here from the CSV."""
    with paths["per_case"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3 * FOLD_CASES * 2  # losses x seeds x folds x cases x classes
    for row in rows:
        assert row["case"].startswith(f"pat_{row['fold']}_")
        assert row["run"].endswith(f"-fold{row['fold']}-" + row["run"].rsplit("-", 1)[1])
    cases = sorted({r["case"] for r in rows})
    assert len(cases) == 3 * FOLD_CASES
    per_seed = {}
    for r in rows:
        per_seed.setdefault((r["loss"], r["seed"], r["case"]), []).append(float(r["dice"]))
    assert all(len(v) == 2 for v in per_seed.values())  # 2 classes: each case once per seed
    case_mean = {k: np.mean(v) for k, v in per_seed.items()}
    d = [
        np.mean([case_mean[("CE", s, c)] for s in ("1", "2")])
        - np.mean([case_mean[("CE + Dice", s, c)] for s in ("1", "2")])
        for c in cases
    ]
    with paths["csv"].open() as f:
        table = {r["loss"]: r for r in csv.DictReader(f)}
    assert int(table["CE"]["n_cases"]) == 3 * FOLD_CASES
    assert float(table["CE"]["diff"]) == pytest.approx(100 * np.mean(d))
    assert float(table["CE"]["p_wilcoxon"]) == pytest.approx(wilcoxon(d, method="exact").pvalue)
    md = paths["markdown"].read_text()
    assert "- Folds: 0, 1, 2" in md and "Incomplete" not in md


def test_inprocess_runs_every_fold_and_pools_the_cases(tmp_path: Path, no_wandb: None) -> None:
    fake = FoldFakeCLI()
    comparison = fold_comparison(tmp_path / "out")
    paths = run_comparison(comparison, runner=fake, log=lambda s: None)
    assert [c[0] for c in fake.calls] == ["fit", "test"] * 12
    _check_pooled_report(paths)
    fake.calls.clear()
    run_comparison(comparison, runner=fake, log=lambda s: None)  # all done: nothing runs
    assert fake.calls == []


def test_local_pool_prepares_each_fold_once(tmp_path: Path, no_wandb: None) -> None:
    fake = FoldFakeCLI()
    comparison = fold_comparison(tmp_path / "out")
    pool = LocalPool(jobs=2, gpus=[], cpus=2)
    paths = run_comparison(comparison, runner=fake, log=lambda s: None, launcher=pool)
    prepared = [c for c in fake.calls if c[0] == "prepare"]
    assert sorted(fold for _, fold, _ in prepared) == ["0", "1", "2"]
    assert all("--data.test_split=held_out" in cmd for _, _, cmd in prepared)
    assert sum(c[0] == "fit" for c in fake.calls) == 12
    _check_pooled_report(paths)


def test_slurm_submits_one_job_per_fold_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_wandb: None
) -> None:
    """A fake ``sbatch`` on PATH records the scripts; the jobs are left queued (``--no-wait``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path / "sbatch.txt"}\n'
        f"n=$(wc -l < {tmp_path / 'sbatch.txt'})\necho $((1000 + n))\n"
    )
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    fake = FoldFakeCLI()
    comparison = fold_comparison(tmp_path / "out", folds=(0, 1))
    launcher = SlurmLauncher(wait=False)
    assert run_comparison(comparison, runner=fake, log=lambda s: None, launcher=launcher) == {}
    assert sorted(fold for sub, fold, _ in fake.calls if sub == "prepare") == ["0", "1"]
    jobs = comparison.runs_dir / "slurm"
    specs = sorted(jobs.glob("*.json"))
    assert len(specs) == 2 * 2 * 2 == len((tmp_path / "sbatch.txt").read_text().splitlines())
    for path in specs:
        spec = json.loads(path.read_text())
        assert spec["fold"] == int(NAME.fullmatch(spec["name"]).group(3))
        assert f"--data.fold={spec['fold']}" in spec["args"]


def test_a_case_tested_by_two_folds_is_refused() -> None:
    base = {"loss": "CE", "seed": "1", "class": "organ", "dice": "0.5", "iou": "0.3",
            "precision": "0.5", "recall": "0.5"}  # fmt: skip
    rows = [{**base, "fold": "0", "case": "a"}, {**base, "fold": "1", "case": "a"}]
    with pytest.raises(ValueError, match=r"Case 'a' is tested by folds 0 and 1 of 'CE', seed 1"):
        group_comparison_rows(rows)
    rows[1]["case"] = "b"
    (table,) = group_comparison_rows(rows)["CE"].values()
    assert table.cases == ("a", "b")  # the folds of one seed form one case set


# ---------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_make_compare_over_two_folds_of_an_nnunet_dataset(tiny_env: Path) -> None:
    """2 losses x 1 seed x 2 folds of ``splits_final.json`` on a tiny nnU-Net dataset that has
    an imagesTs: every training case is tested exactly once, by the fold that held it out."""
    from tests.datamodules.nnunet_datasets import write_v2

    ds = write_v2(tiny_env, n_train=6, ignore=False)
    ids = [f"tiny_case_{i:03d}" for i in range(6)]
    splits = [{"train": ids[3:], "val": ids[:3]}, {"train": ids[:3], "val": ids[3:]}]
    (ds / "splits_final.json").write_text(json.dumps(splits))
    args = [
        f"--data.raw_dir={ds}", "--data.image_size=16", "--data.batch_size=4",
        "--data.num_workers=0", "--data.progress=false", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu",
        "--trainer.devices=1",
    ]  # fmt: skip
    os.symlink(CONFIGS, tiny_env / "configs")
    paths = main(["losses", "--dataset", "nnunet", "--losses", "ce", "ce_dice", "--seeds", "1",
                  "--folds", "0", "1", "--out", str(tiny_env / "results"), "--", *args])  # fmt: skip
    with paths["per_case"].open() as f:
        rows = list(csv.DictReader(f))
    for loss in ("CE", "CE + Dice"):
        tested = {(r["case"], r["fold"]) for r in rows if r["loss"] == loss}
        assert sorted(tested) == sorted((c, str(i // 3)) for i, c in enumerate(ids))
    assert (tiny_env / "data" / "nnunet" / "Dataset001_Tiny" / "fold_1_held_out").is_dir()
    assert paths["markdown"].read_text().startswith("# Loss comparison on Dataset001_Tiny")
