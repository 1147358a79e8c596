"""Loss comparison: per-case CSV reading, table statistics, plots and the run orchestration
(with a fake runner that writes what the real CLI writes; the real CLI: test_compare_e2e.py).

Reference values are computed here by hand or with numpy / scipy directly from the synthetic
per-case rows, never with the functions under test.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon

from lightning_app.compare import (
    FIT_DONE,
    Comparison,
    loss_entries,
    main,
    run_comparison,
    run_state,
    sweep_k_entries,
)
from lightning_app.plots import plot_against, plot_columns, plot_curves, read_val_curve
from lightning_app.statistics import (
    CaseTable,
    Column,
    RunScores,
    comparison_rows,
    dataset_columns,
    read_per_case_csv,
    run_column_value,
    wilcoxon_vs_reference,
)
from tests.conftest import CONFIGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = ["index", "case", "class", "label", "dice", "iou", "hd95", "precision", "recall"]


def write_per_case(path: Path, rows: list[dict], header: list[str] = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})
    return path


def synthetic_rows(dice: np.ndarray, classes: list[str], iou: np.ndarray | None = None) -> list:
    """Rows of a per_case.csv from ``dice`` (cases, classes); NaN is written as ``nan``."""
    iou = dice / (2 - dice) if iou is None else iou
    rows = []
    for k in range(dice.shape[0]):
        for c, name in enumerate(classes):
            rows.append(
                {
                    "index": k,
                    "case": f"case{k:04d}",
                    "class": name,
                    "label": c + 1,
                    "dice": repr(float(dice[k, c])),
                    "iou": repr(float(iou[k, c])),
                    "hd95": "1.5",
                    "precision": repr(float(min(1.0, dice[k, c] + 0.05))),
                    "recall": repr(float(dice[k, c] - 0.05)),
                }
            )
    return rows


# ---------------------------------------------------------------------- reading
def test_read_per_case_csv_layout_of_the_test_report(tmp_path: Path) -> None:
    rows = synthetic_rows(np.array([[0.5, 0.25], [1.0, np.nan]]), ["liver", "spleen"])
    rows.insert(0, {"case": "case0000", "class": "background", "dice": "0.99"})
    rows.append({"case": "case0000", "class": "mean", "dice": "0.1"})
    table = read_per_case_csv(write_per_case(tmp_path / "per_case.csv", rows))
    assert table.cases == ("case0000", "case0001")
    assert table.classes == ("liver", "spleen")
    np.testing.assert_array_equal(table.values["dice"], [[0.5, 0.25], [1.0, np.nan]])
    np.testing.assert_allclose(table.values["hd95"], 1.5)
    assert table.class_index("Liver") == 0


def test_read_per_case_csv_missing_pair_is_nan(tmp_path: Path) -> None:
    rows = synthetic_rows(np.array([[0.5, 0.25], [1.0, 0.75]]), ["a", "b"])[:3]
    table = read_per_case_csv(write_per_case(tmp_path / "p.csv", rows))
    assert math.isnan(table.values["dice"][1, 1])


@pytest.mark.parametrize(
    ("header", "rows", "match"),
    [
        (["case", "dice", "iou", "precision", "recall"], [], r"column named class or class_name"),
        (["case", "class", "dice", "iou", "precision"], [], r"column named recall"),
        (["id", "class", "dice", "iou", "precision", "recall"], [], r"case or case_id"),
        (HEADER, [], r"at least one foreground row"),
        (HEADER, [{"case": "c1", "class": "a", "dice": "x"}], r"number or empty cell.*dice"),
        (HEADER, [{"case": "c1", "class": "a"}, {"case": "c1", "class": "a"}], r"Duplicate row"),
        (HEADER, [{"case": "", "class": "a"}], r"Expected a case and a class"),
    ],
)
def test_read_per_case_csv_rejects_bad_files(
    tmp_path: Path, header: list[str], rows: list, match: str
) -> None:
    path = write_per_case(tmp_path / "bad.csv", rows, header)
    with pytest.raises(ValueError, match=match):
        read_per_case_csv(path)


def test_read_per_case_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        read_per_case_csv(tmp_path / "nope.csv")


# ---------------------------------------------------------------------- statistics
def table_of(dice: np.ndarray, classes: list[str]) -> CaseTable:
    iou = dice / (2 - dice)
    return CaseTable(
        tuple(f"case{k}" for k in range(dice.shape[0])),
        tuple(classes),
        {"dice": dice, "iou": iou, "precision": dice, "recall": dice},
    )


def test_run_column_value_cases_first_then_classes() -> None:
    # class a: cases 0.2, 0.6 -> 0.4; class b: 0.8 and NaN -> 0.8; mean (0.4 + 0.8) / 2 = 0.6
    # (the other order, nanmean over each case's classes first, would give (0.5 + 0.6) / 2)
    dice = np.array([[0.2, 0.8], [0.6, np.nan]])
    table = table_of(dice, ["a", "b"])
    assert run_column_value(table, Column("mDice", "dice")) == pytest.approx(0.6)
    assert run_column_value(table, Column("B", "dice", "b")) == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"Expected class 'c'"):
        run_column_value(table, Column("C", "dice", "c"))


def test_dataset_columns_follow_the_poster() -> None:
    titles = {d: [c.title for c in dataset_columns(d, [])] for d in ("synapse", "acdc", "msseg2")}
    # copied from the poster's three table headers
    assert titles["synapse"] == [
        "mDice", "mIoU", "Aorta", "Gallbladder", "Kidney left", "Kidney right",
        "Liver", "Pancreas", "Spleen", "Stomach",
    ]  # fmt: skip
    assert titles["acdc"] == ["mDice", "mIoU", "RV", "MYO", "LV"]
    assert titles["msseg2"] == ["mDice", "mIoU", "mPrec", "mRec"]
    assert [c.title for c in dataset_columns("phantom", ["x", "y"])] == ["mDice", "mIoU", "x", "y"]


def test_synapse_columns_pick_the_right_class() -> None:
    names = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta",
             "pancreas"]  # fmt: skip
    dice = np.tile(np.arange(1, 9) / 10, (2, 1))  # class i+1 scores (i+1)/10
    table = table_of(dice, names)
    cols = {c.title: c for c in dataset_columns("synapse", names)}
    assert run_column_value(table, cols["Kidney left"]) == pytest.approx(0.3)
    assert run_column_value(table, cols["Kidney right"]) == pytest.approx(0.2)
    assert run_column_value(table, cols["Aorta"]) == pytest.approx(0.7)


def make_runs(rng: np.random.Generator, labels: list[str], seeds: list[int], n_cases: int):
    runs = []
    for i, label in enumerate(labels):
        for seed in seeds:
            dice = np.clip(rng.normal(0.6 + 0.05 * i, 0.1, (n_cases, 3)), 0.01, 0.99)
            dice[0, 2] = np.nan  # an absent class in one case
            runs.append(RunScores(label, seed, table_of(dice, ["a", "b", "c"])))
    return runs


def test_comparison_rows_mean_std_best_and_wilcoxon() -> None:
    rng = np.random.default_rng(0)
    labels, seeds = ["CE", "CE + Dice", "CE + topK-Dice"], [1, 2, 3]
    runs = make_runs(rng, labels, seeds, n_cases=6)
    columns = dataset_columns("phantom", ["a", "b", "c"])
    rows = comparison_rows(runs, columns, labels, reference="CE + Dice")
    assert [r.label for r in rows] == labels
    for row in rows:
        mine = [r for r in runs if r.label == row.label]
        # hand computation: class means over cases, then over classes; then seeds
        per_run = []
        for r in mine:
            d = r.table.values["dice"]
            per_class = [np.mean(d[~np.isnan(d[:, c]), c]) for c in range(3)]
            per_run.append(100 * np.mean(per_class))
        assert row.mean["mDice"] == pytest.approx(np.mean(per_run))
        assert row.std["mDice"] == pytest.approx(np.std(per_run, ddof=1))
        assert row.per_seed["mDice"] == pytest.approx(per_run)
        assert row.seeds == seeds
    best = max(rows, key=lambda r: round(r.mean["mDice"], 2))
    assert "mDice" in best.best
    assert sum("mDice" in r.best for r in rows) == 1
    ref = rows[1]
    assert ref.is_reference and math.isnan(ref.p_value) and ref.n_pairs == 0
    for row in (rows[0], rows[2]):
        x, y = [], []
        for seed in seeds:
            a = next(r for r in runs if r.label == row.label and r.seed == seed)
            b = next(r for r in runs if r.label == "CE + Dice" and r.seed == seed)
            x += [np.nanmean(v) for v in a.table.values["dice"]]
            y += [np.nanmean(v) for v in b.table.values["dice"]]
        assert row.n_pairs == 18
        assert row.p_value == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-12)


def test_single_seed_has_no_std_and_pairs_skip_nan() -> None:
    a = table_of(np.array([[0.5, 0.7], [np.nan, np.nan], [0.9, 0.8]]), ["a", "b"])
    b = table_of(np.array([[0.4, 0.6], [0.3, 0.2], [0.5, 0.5]]), ["a", "b"])
    rows = comparison_rows(
        [RunScores("L", 1, a), RunScores("R", 1, b)],
        dataset_columns("phantom", ["a", "b"]),
        ["L", "R", "absent"],
        reference="R",
    )
    assert [r.label for r in rows] == ["L", "R"]
    assert math.isnan(rows[0].std["mDice"])
    assert rows[0].n_pairs == 2  # case 1 has no defined Dice for L
    assert rows[0].p_value == pytest.approx(wilcoxon([0.6, 0.85], [0.5, 0.5]).pvalue)


def test_wilcoxon_only_pairs_matching_seeds_and_rejects_repeats() -> None:
    a = table_of(np.array([[0.5], [0.7]]), ["a"])
    b = table_of(np.array([[0.4], [0.6]]), ["a"])
    p, n = wilcoxon_vs_reference([RunScores("L", 1, a)], [RunScores("R", 2, b)])
    assert math.isnan(p) and n == 0
    with pytest.raises(ValueError, match=r"seed 1 repeats"):
        wilcoxon_vs_reference([RunScores("L", 1, a), RunScores("L", 1, a)], [RunScores("R", 1, b)])


# ---------------------------------------------------------------------- plots
def test_read_val_curve_later_versions_win(tmp_path: Path) -> None:
    for version, rows in (
        (0, [("0", "0.1"), ("1", "0.2"), ("", "")]),
        (1, [("1", "0.25"), ("2", "0.3")]),
        (10, []),  # e.g. a test run: no val/dice/mean column
    ):
        d = tmp_path / "csv" / f"version_{version}"
        d.mkdir(parents=True)
        with (d / "metrics.csv").open("w") as f:
            if version == 10:
                f.write("epoch,test/dice\n0,0.5\n")
                continue
            f.write("epoch,step,train/loss,val/dice/mean\n0,3,0.9,\n")
            f.writelines(f"{e},5,,{v}\n" for e, v in rows)
    assert read_val_curve(tmp_path) == {0: 0.1, 1: 0.25, 2: 0.3}
    assert read_val_curve(tmp_path / "nothing") == {}


def test_plots_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    runs = make_runs(rng, ["K=5", "K=10"], [1, 2], n_cases=4)
    rows = comparison_rows(runs, dataset_columns("phantom", ["a", "b", "c"]), ["K=5", "K=10"])
    for path in (
        plot_columns(rows, ["mDice", "a", "b", "c"], tmp_path / "bars.png", "t"),
        plot_curves({"K=5": [{0: 0.1, 1: 0.3}, {0: 0.2}], "K=10": [{}]}, tmp_path / "c.png", "t"),
        plot_against([5, 10], rows, "mDice", tmp_path / "k.png", "t"),
    ):
        assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
    assert plot_curves({"x": [{}]}, tmp_path / "none.png", "t") is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match=r"one x value per row"):
        plot_against([5], rows, "mDice", tmp_path / "k.png", "t")
    with pytest.raises(ValueError, match=r"at least one row"):
        plot_columns([], ["mDice"], tmp_path / "b.png", "t")


# ---------------------------------------------------------------------- orchestration
def default_dice(key: str, seed: int) -> np.ndarray:
    """Per-case Dice (5 cases, 2 classes) of a fake test run, drawn from (row key, seed)."""
    rng = np.random.default_rng([seed, len(key)])
    return rng.uniform(0.3, 0.9, (5, 2))


class FakeCLI:
    """Stands in for ``python -m lightning_app``: a fit writes config.yaml, last.ckpt and a
    CSV log; a test writes per_case.csv with Dice ``dice_fn(row key, seed)``."""

    def __init__(
        self,
        fail_on: str | None = None,
        dice_fn: Callable[[str, int], np.ndarray] = default_dice,
    ) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []
        self.fail_on = fail_on
        self.dice_fn = dice_fn

    def __call__(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
        sub = cmd[3]
        args = dict(a.split("=", 1) for a in cmd[4:] if "=" in a and not a.startswith("--config"))
        run_dir = Path(args["--trainer.default_root_dir"])
        assert env["LIGHTNING_APP_RUN_NAME"] == run_dir.name
        self.calls.append((sub, run_dir.name, cmd))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"fake {sub}\n")
        if self.fail_on and self.fail_on in run_dir.name:
            return 3
        seed = int(args["--seed_everything"])
        key = re.fullmatch(r"(?:compare|sweepk)-(.+)-seed\d+-[0-9a-f]{8}", run_dir.name).group(1)
        if sub == "fit":
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text("fake: 1\n")
            (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
            n = len(list(run_dir.glob("csv/version_*")))
            (run_dir / "csv" / f"version_{n}").mkdir(parents=True)
            (run_dir / "csv" / f"version_{n}" / "metrics.csv").write_text(
                "epoch,step,val/dice/mean\n0,1,0.2\n1,2,0.4\n"
            )
        else:
            assert args["--ckpt_path"].endswith("last.ckpt")
            dice = self.dice_fn(key, seed)
            write_per_case(run_dir / "per_case.csv", synthetic_rows(dice, ["organ", "lesion"]))
        return 0


@pytest.fixture
def compare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path


def make_comparison(out: Path, **kwargs) -> Comparison:
    kwargs.setdefault("entries", loss_entries(["ce", "ce_dice"]))
    kwargs.setdefault("seeds", [1, 2])
    kwargs.setdefault("reference", "CE + Dice")
    return Comparison(dataset="phantom", out_dir=out, configs_dir=CONFIGS, **kwargs)


def test_run_comparison_outputs_and_resume_skip(compare_env: Path) -> None:
    out = compare_env / "results"
    fake = FakeCLI()
    comparison = make_comparison(out, user_args=["--trainer.max_epochs=1"])
    paths = run_comparison(comparison, runner=fake, log=lambda s: None)
    assert [c[0] for c in fake.calls] == ["fit", "test"] * 4
    for kind in ("markdown", "csv", "per_case", "per_class_plot", "curves_plot"):
        assert paths[kind].is_file(), kind
    assert paths["per_class_plot"].read_bytes()[:8] == PNG_MAGIC
    md = paths["markdown"].read_text()
    assert "| Loss functions | mDice | mIoU | organ | lesion | p vs CE + Dice | pairs |" in md
    assert "(reference)" in md and "**" in md
    assert not (out / "wandb").exists()  # WANDB_MODE=disabled: no comparison run
    # every run command carries the settings, the seed, the run dir and the ARGS last
    fit_cmd = fake.calls[0][2]
    assert fit_cmd[-1] == "--trainer.max_epochs=1"
    assert "--config=" + str(CONFIGS / "loss" / "ce.yaml") in fit_cmd
    assert any(a.startswith("--config=") and a.endswith(".logger.yaml") for a in fit_cmd)

    # the table's p-value is scipy's Wilcoxon on the per-case rows of the companion CSV
    with paths["per_case"].open() as f:
        per_case = list(csv.DictReader(f))
    assert len(per_case) == 2 * 2 * 5 * 2  # losses x seeds x cases x classes
    scores: dict[tuple[str, str, str], list[float]] = {}
    for r in per_case:
        scores.setdefault((r["loss"], r["seed"], r["case"]), []).append(float(r["dice"]))
    pairs = sorted({(s, c) for (_, s, c) in scores})
    x = [np.mean(scores[("CE", s, c)]) for s, c in pairs]
    y = [np.mean(scores[("CE + Dice", s, c)]) for s, c in pairs]
    with paths["csv"].open() as f:
        table = {r["loss"]: r for r in csv.DictReader(f)}
    assert list(table) == ["CE", "CE + Dice"]
    assert float(table["CE"]["wilcoxon p"]) == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-9)
    assert int(table["CE"]["wilcoxon pairs"]) == 10
    assert table["CE + Dice"]["wilcoxon p"] == ""
    ce_mdice = [
        100 * np.mean([np.mean([float(r["dice"]) for r in per_case
                                if r["loss"] == "CE" and r["seed"] == s and r["class"] == cls])
                       for cls in ("organ", "lesion")])
        for s in ("1", "2")
    ]  # fmt: skip
    assert float(table["CE"]["mDice"]) == pytest.approx(np.mean(ce_mdice))
    assert float(table["CE"]["mDice std"]) == pytest.approx(np.std(ce_mdice, ddof=1))

    # second invocation: everything is finished, nothing is launched
    fake.calls.clear()
    run_comparison(comparison, runner=fake, log=lambda s: None)
    assert fake.calls == []


def test_resume_states(compare_env: Path) -> None:
    out = compare_env / "results"
    comparison = make_comparison(out, seeds=[1])
    specs = comparison.plan(None)
    ce, ce_dice = specs[0].run_dir, specs[1].run_dir
    # ce: fit interrupted after a checkpoint -> fit continues from last.ckpt, then test
    (ce / "checkpoints").mkdir(parents=True)
    (ce / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (ce / "config.yaml").write_text("x: 1\n")
    # ce_dice: died before its first checkpoint -> moved aside, started anew
    ce_dice.mkdir(parents=True)
    (ce_dice / "config.yaml").write_text("x: 1\n")
    assert run_state(ce) == "resume" and run_state(ce_dice) == "stale"
    fake = FakeCLI()
    run_comparison(comparison, runner=fake, log=lambda s: None)
    ce_fit = [c for c in fake.calls if c[1] == ce.name and c[0] == "fit"][0][2]
    assert ce_fit[-1] == f"--ckpt_path={ce / 'checkpoints' / 'last.ckpt'}"
    dice_fit = [c for c in fake.calls if c[1] == ce_dice.name and c[0] == "fit"][0][2]
    assert not any(a.startswith("--ckpt_path") for a in dice_fit)
    assert len(list(out.glob(f"runs/{ce_dice.name}.stale-*"))) == 1
    assert (ce / FIT_DONE).is_file() and run_state(ce) == "done"
    # fit finished but the test did not: only the test runs
    (ce / "per_case.csv").unlink()
    assert run_state(ce) == "fitted"
    fake.calls.clear()
    run_comparison(comparison, runner=fake, log=lambda s: None)
    assert [(c[0], c[1]) for c in fake.calls] == [("test", ce.name)]


def test_failed_run_names_its_log(compare_env: Path) -> None:
    comparison = make_comparison(compare_env / "results", seeds=[1])
    with pytest.raises(
        RuntimeError, match=r"Fit of compare-ce_dice-seed1-\w+ failed; log .*compare\.log"
    ):
        run_comparison(comparison, runner=FakeCLI(fail_on="ce_dice"), log=lambda s: None)


def test_report_only_tabulates_finished_runs(compare_env: Path) -> None:
    out = compare_env / "results"
    comparison = make_comparison(out, seeds=[1])
    with pytest.raises(FileNotFoundError, match=r"No finished run"):
        run_comparison(comparison, runner=FakeCLI(), report_only=True, log=lambda s: None)
    fake = FakeCLI()
    spec = comparison.plan(None)[0]
    fake(["py", "-m", "x", "fit", *spec.args], spec.run_dir / "l.log", {
        "LIGHTNING_APP_RUN_NAME": spec.name})  # fmt: skip
    fake(["py", "-m", "x", "test", *spec.args, f"--ckpt_path={spec.run_dir}/last.ckpt"],
         spec.run_dir / "l.log", {"LIGHTNING_APP_RUN_NAME": spec.name})  # fmt: skip
    paths = run_comparison(comparison, runner=fake, report_only=True, log=lambda s: None)
    md = paths["markdown"].read_text()
    assert "Incomplete: 1 of 2 runs finished" in md
    assert "| CE |" in md and "CE + Dice |" not in md.split("| Loss functions")[1]


def test_run_names_are_deterministic_and_follow_the_settings(compare_env: Path) -> None:
    out = compare_env / "results"
    a = make_comparison(out).plan(None)
    b = make_comparison(out).plan(None)
    c = make_comparison(out, user_args=["--trainer.max_epochs=3"]).plan(None)
    assert [s.name for s in a] == [s.name for s in b]
    assert all(re.fullmatch(r"compare-(ce|ce_dice)-seed[12]-[0-9a-f]{8}", s.name) for s in a)
    assert {s.name for s in a}.isdisjoint({s.name for s in c})
    # the seeds are not settings: a 1-seed comparison shares its run with the 2-seed one
    one = make_comparison(out, seeds=[1]).plan(None)
    assert {s.name for s in one} < {s.name for s in a}
    assert a[0].run_dir == out / "runs" / a[0].name


def test_sweep_k_entries_and_override(compare_env: Path) -> None:
    entries = sweep_k_entries([5, 12.5, 100])
    assert [e.label for e in entries] == ["K=5", "K=12.5", "K=100"]
    assert entries[1].extra_args == ("--model.loss.init_args.terms.topk_dice.init_args.k=12.5",)
    assert {e.loss for e in entries} == {"ce_topk_dice"}
    for bad, match in (([0], r"in \(0, 100\], but got 0"), ([101], r"but got 101"),
                       ([5, 5], r"without repeats"), ([], r"at least one value")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            sweep_k_entries(bad)


def test_sweep_k_writes_table_and_k_plot(compare_env: Path) -> None:
    def dice_fn(key: str, seed: int) -> np.ndarray:
        # K=k: every class scores 0.5 + k/1000 plus a case offset of 0.00, 0.01, 0.02, 0.03
        k = float(key[1:])
        return np.full((4, 2), 0.5 + k / 1000) + np.arange(4)[:, None] / 100

    out = compare_env / "sweep"
    comparison = Comparison(
        dataset="phantom", entries=sweep_k_entries([5, 100]), seeds=[1], out_dir=out,
        name="sweep_k", mode="sweepk", reference="K=100", configs_dir=CONFIGS,
    )  # fmt: skip
    fake = FakeCLI(dice_fn=dice_fn)
    paths = run_comparison(comparison, runner=fake, log=lambda s: None)
    k5_fit = fake.calls[0][2]
    assert "--model.loss.init_args.terms.topk_dice.init_args.k=5" in k5_fit
    assert "--config=" + str(CONFIGS / "loss" / "ce_topk_dice.yaml") in k5_fit
    assert paths["k_plot"].name == "sweep_k_mdice_vs_k.png"
    assert paths["k_plot"].read_bytes()[:8] == PNG_MAGIC
    md = paths["markdown"].read_text()
    assert "| K=5 |" in md and "| K=100 |" in md and "p vs K=100" in md
    assert "With 4 pairs a two-sided p cannot fall below 0.125" in md
    with paths["csv"].open() as f:
        table = {r["loss"]: r for r in csv.DictReader(f)}
    assert float(table["K=100"]["mDice"]) == pytest.approx(100 * (0.6 + 0.015))
    assert float(table["K=5"]["mDice"]) == pytest.approx(100 * (0.505 + 0.015))
    assert table["K=100"]["best"] == "mDice;mIoU;organ;lesion"
    # 4 pairs, every difference -0.095: scipy's exact two-sided p = 2 / 2**4
    assert float(table["K=5"]["wilcoxon p"]) == pytest.approx(0.125)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dataset": "mnist"}, FileNotFoundError, r"configs/data/mnist\.yaml.*one of \["),
        ({"entries": loss_entries(["nope"])}, FileNotFoundError, r"loss/nope\.yaml"),
        ({"seeds": []}, ValueError, r"at least one seed"),
        ({"seeds": [1, 1]}, ValueError, r"distinct seeds"),
        ({"test_ckpt": "first"}, ValueError, r"'last' or 'best'"),
        ({"user_args": ["--seed_everything=3"]}, ValueError, r"sets --seed_everything itself"),
        ({"user_args": ["--trainer.default_root_dir=x"]}, ValueError, r"default_root_dir itself"),
    ],
)
def test_comparison_rejects_bad_settings(
    compare_env: Path, kwargs: dict, error: type, match: str
) -> None:
    args = {"dataset": "phantom", "entries": loss_entries(["ce"]), "seeds": [1],
            "out_dir": compare_env, "configs_dir": CONFIGS, **kwargs}  # fmt: skip
    with pytest.raises(error, match=match):
        Comparison(**args)


def test_loss_entries_use_the_poster_names() -> None:
    entries = loss_entries(["ce", "ce_dice", "focal_dice", "topk_ce_dice", "ce_topk_dice", "dice"])
    assert [e.label for e in entries] == [
        "CE", "CE + Dice", "Focal-CE + Dice", "topK-CE + Dice", "CE + topK-Dice", "dice",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"without repeats"):
        loss_entries(["ce", "ce"])
    with pytest.raises(ValueError, match=r"at least one loss preset"):
        loss_entries([])


def test_main_dry_run_and_bad_arguments(
    compare_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(CONFIGS.parent)
    out = compare_env / "dry"
    assert main(["losses", "--losses", "ce,ce_dice", "--out", str(out), "--dry-run",
                 "--", "--trainer.max_epochs=1"]) == {}  # fmt: skip
    text = capsys.readouterr().out
    assert "2 rows x 3 seeds on phantom" in text  # 3 seeds by default, the phantom too
    for seed in (42, 43, 44):
        assert re.search(rf"\[new\] compare-ce-seed{seed}-[0-9a-f]{{8}}", text)
    assert "--trainer.max_epochs=1" in text and not out.exists()
    with pytest.raises(ValueError, match=r"`seeds` to be >= 1"):
        main(["losses", "--seeds", "0", "--dry-run"])
    with pytest.raises(ValueError, match=r"`k` to hold numbers"):
        main(["sweep-k", "--k", "5", "ten", "--dry-run"])


def test_wandb_table_logged_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.lightning_app.wandb_records import history_and_summary, run_meta

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    comparison = make_comparison(tmp_path / "results", seeds=[1])
    run_comparison(comparison, runner=FakeCLI(), log=lambda s: None)
    (run_dir,) = (tmp_path / "results" / "wandb").glob("offline-run-*")
    meta = run_meta(run_dir)
    assert meta["project"] == "topk-dice-phantom" and meta["group"] == comparison.group
    _, summary = history_and_summary(run_dir)
    assert summary["comparison/table/_type"] == "table-file"
    assert summary["comparison/table/nrows"] == 2
    assert summary["comparison/table/ncols"] == len(
        next(csv.reader((tmp_path / "results" / "comparison.csv").open()))
    )
    for plot in ("per_class_plot", "curves_plot"):
        assert summary[f"comparison/{plot}/_type"] == "image-file"


COMPARE_CONFIGS = sorted((CONFIGS / "experiment").glob("compare_*.yaml"))


@pytest.mark.parametrize("cfg", COMPARE_CONFIGS, ids=lambda p: p.stem.removeprefix("compare_"))
def test_compare_configs_parse_with_their_dataset(
    cfg: Path, tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_app.cli import SegmentationCLI

    monkeypatch.setattr(sys, "argv", ["lightning_app"])  # the CLI warns about pytest's argv

    comparison = Comparison(
        dataset=cfg.stem.removeprefix("compare_"), entries=loss_entries(["ce_topk_dice"]), seeds=[1],
        out_dir=tiny_env / "results", configs_dir=CONFIGS,
    )  # fmt: skip
    (spec,) = comparison.plan(comparison.logger_overlay())
    assert f"--config={cfg}" in spec.args
    cli = SegmentationCLI(run=False, args=[*spec.args, f"--data.data_dir={tiny_env / 'data'}"])
    expected = yaml.safe_load(cfg.read_text())["trainer"]["max_epochs"]
    assert cli.trainer.max_epochs == expected
    assert cli.trainer.default_root_dir == str(spec.run_dir)
    wb = [lg for lg in cli.trainer.loggers if type(lg).__name__ == "WandbLogger"]
    assert wb and wb[0]._wandb_init["group"] == comparison.group
    optimizer = cli.model.optimizer_factory(cli.model.parameters())
    dataset = cfg.stem.removeprefix("compare_")
    if dataset == "phantom":  # the CPU demo trains with AdamW (configs/experiment/compare_phantom)
        assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["lr"] == 1e-3
        assert cli.datamodule.num_test == 16
    else:  # the poster's datasets keep TransUNet's SGD recipe
        assert type(optimizer).__name__ == "SGD" and optimizer.defaults["lr"] == 0.01
        assert optimizer.defaults["momentum"] == 0.9
    if dataset in ("synapse", "acdc"):
        assert cli.model.test_evaluator.protocol == "transunet"
    if dataset == "synapse":
        assert cli.datamodule.train_on_all is True  # TransUNet trains on all 18 cases


def test_main_reference_outside_the_rows(
    compare_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(CONFIGS.parent)
    main(["losses", "--losses", "ce", "--out", str(compare_env / "o"), "--dry-run"])
    assert (
        "reference row 'CE + Dice' is not part of this run: no p-values" in capsys.readouterr().out
    )
    with pytest.raises(ValueError, match=r"`reference` to be a K value, but got 'all'"):
        main(["sweep-k", "--reference", "all", "--dry-run"])


def test_hash_follows_yaml_contents_not_comments(compare_env: Path) -> None:
    import shutil

    configs = compare_env / "configs"
    shutil.copytree(CONFIGS, configs)

    def names(c: Comparison) -> list[str]:
        return [s.name for s in c.plan(None)]

    def new() -> Comparison:
        return Comparison(
            dataset="phantom", entries=loss_entries(["ce"]), seeds=[1],
            out_dir=compare_env / "out", configs_dir=configs,
        )  # fmt: skip

    first = new()
    before, group = names(first), first.group
    base = configs / "base.yaml"
    base.write_text("# a new comment\n" + base.read_text())
    assert names(new()) == before  # comments do not count
    settings = yaml.safe_load(base.read_text())
    settings["trainer"]["max_epochs"] += 1
    base.write_text(yaml.safe_dump(settings))
    assert names(new()) != before and new().group != group
    assert names(first) == before and first.group == group  # computed once per comparison


def test_best_marks_ties_at_the_printed_precision_and_never_nan() -> None:
    from lightning_app.statistics import TableRow, best_columns

    def row(label: str, a: float, b: float) -> TableRow:
        return TableRow(label, [1], {"a": a, "b": b}, {"a": math.nan, "b": math.nan}, {})

    rows = [row("x", 50.004, math.nan), row("y", 49.996, 10.0), row("z", 49.0, 20.0)]
    # 50.004 and 49.996 both print as 50.00: a tie; NaN is never the best
    assert best_columns(rows, ["a", "b"]) == {"x": ["a"], "y": ["a"], "z": ["b"]}
