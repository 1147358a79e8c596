"""``python -m lightning_app.compare analyze`` and ``power``: the report from a per-case CSV
alone (the same as ``make compare`` writes), the default reference, and the minimal detectable
difference checked by simulation."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lightning_app.compare import Comparison, loss_entries, main, run_comparison
from lightning_app.compare.analysis import default_reference, read_rows
from lightning_app.compare.power import (
    Components,
    design_se,
    minimal_detectable_difference,
    power_report,
)
from lightning_app.compare.statistics import CSV_COLUMNS, paired_difference
from tests.conftest import CONFIGS
from tests.lightning_app.test_compare import FakeCLI
from tests.lightning_app.test_statistics import per_case_rows

#: Per-case CSV of a real `make compare` run on a tiny phantom (CE and CE + Dice x 2 seeds,
#: 2 epochs of 2 training volumes, 4 test volumes), written by
#: `python -m lightning_app.compare losses` (the overrides of test_compare_e2e.py).
TINY_PER_CASE = Path(__file__).parent / "data" / "tiny_comparison_per_case.csv"


@pytest.fixture
def compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    comparison = Comparison(
        dataset="phantom", entries=loss_entries(["ce", "ce_dice", "ce_topk_dice"]), seeds=[1, 2],
        out_dir=tmp_path / "results", configs_dir=CONFIGS,
        reference=default_reference(["CE", "CE + Dice", "CE + topK-Dice"]),
    )  # fmt: skip
    return run_comparison(comparison, runner=FakeCLI(), log=lambda s: None)


def test_analyze_rebuilds_the_comparison_from_its_per_case_csv(
    compared: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    csv_path = shutil.copy(compared["per_case"], alone / "comparison_per_case.csv")
    paths = main(["analyze", "--per-case", str(csv_path)])
    assert paths["csv"] == alone / "comparison.csv"
    assert paths["csv"].read_text() == compared["csv"].read_text()
    for kind in ("per_class_plot", "diff_plot", "rank_plot", "markdown"):
        assert paths[kind].is_file() and paths[kind].parent == alone
    assert "markdown: " in capsys.readouterr().out
    md = paths["markdown"].read_text()
    assert "Δ vs CE + topK-Dice" in md and "(reference)" in md
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[: len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert [r["loss"] for r in table] == ["CE", "CE + Dice", "CE + topK-Dice"]
    ref = table[2]
    assert all(ref[c] == "" for c in ("diff", "p_value", "p_holm", "p_wilcoxon"))
    # another reference, sign "row minus reference"
    other = main(["analyze", "--per-case", str(csv_path), "--reference", "CE",
                  "--out", str(tmp_path / "other")])  # fmt: skip
    with other["csv"].open() as f:
        flipped = {r["loss"]: r for r in csv.DictReader(f)}
    assert float(flipped["CE + topK-Dice"]["diff"]) == pytest.approx(-float(table[0]["diff"]))


def test_analyze_on_the_per_case_csv_of_a_real_comparison(tmp_path: Path) -> None:
    paths = main(["analyze", "--per-case", str(TINY_PER_CASE), "--out", str(tmp_path)])
    with paths["csv"].open() as f:
        table = {r["loss"]: r for r in csv.DictReader(f)}
    assert list(table) == ["CE", "CE + Dice"]
    rows = read_rows(TINY_PER_CASE)
    assert {"gt_empty", "pred_empty"} <= set(rows[0])
    for loss, row in table.items():
        # by hand: each (seed, case) averages its classes with a non-empty ground truth
        # (an undefined Dice there counts 0), then the mean over seeds and cases
        cells: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            if r["loss"] == loss and r["gt_empty"] == "False":
                cells.setdefault((r["seed"], r["case"]), []).append(float(r["dice"] or 0.0))
        assert row["n_seeds"] == "2" and int(row["n_cases"]) == len({c for _, c in cells})
        expected = 100 * np.mean([np.mean(v) for v in cells.values()])
        assert float(row["mdice"]) == pytest.approx(expected)
    md = paths["markdown"].read_text()
    assert "synthetic_large_organ" in md and "Δ vs CE [95% CI]" in md
    ce_dice = table["CE + Dice"]
    assert float(ce_dice["diff"]) == pytest.approx(
        float(ce_dice["mdice"]) - float(table["CE"]["mdice"])
    )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (["--per-case", "nope.csv"], FileNotFoundError, r"No per-case CSV nope\.csv"),
        (["--reference", "Dice"], ValueError, r"`reference` to be one of \['CE', 'CE \+ Dice'"),
    ],
)
def test_analyze_rejects_bad_input(
    compared: dict[str, Path], args: list[str], error: type, match: str
) -> None:
    base = ["analyze", "--per-case", str(compared["per_case"])]
    with pytest.raises(error, match=match):
        main(base + args if args[0] != "--per-case" else ["analyze", *args])


def test_analyze_names_a_malformed_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad_per_case.csv"
    bad.write_text("loss,seed,case,class,dice,iou,precision,recall\nCE,x,c1,a,0.5,0.3,0.5,0.5\n")
    with pytest.raises(ValueError, match=r"integer seed in the per-case rows line 2"):
        main(["analyze", "--per-case", str(bad)])


def test_default_reference_is_the_proposal() -> None:
    assert default_reference(["CE", "CE + Dice", "CE + topK-Dice"]) == "CE + topK-Dice"
    assert default_reference(["K=5", "K=100"]) == "K=100"
    assert default_reference(["CE", "CE + Dice"]) == "CE"


def test_makefile_passes_reference() -> None:
    root = CONFIGS.parent
    for target in ("compare", "sweep-k"):
        out = subprocess.run(
            ["make", "-n", target, "REFERENCE=ce_dice", "STAMP=Makefile"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert '--reference "ce_dice"' in out
        plain = subprocess.run(["make", "-n", target, "STAMP=Makefile"], cwd=root,
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "--reference" not in plain


def test_minimal_detectable_difference_has_80_percent_power_by_simulation() -> None:
    # components in Dice points^2; tables drawn from them, tested with the real t test
    comps = Components(1.0, 2.0, 3.0, True, 3, 12)
    seeds, units = 3, 12
    mdd = minimal_detectable_difference(comps, seeds, units, n_sim=1000)
    se, _ = design_se(comps, seeds, units)
    assert se == pytest.approx(math.sqrt(2 * 1.0 / 3 + 2.0 / 12 + 2 * 3.0 / 36))
    rng = np.random.default_rng(0)
    n, hits = 2000, 0
    for _ in range(n):
        b = rng.normal(0, 5, units)
        xs = []
        for mu in (mdd, 0.0):  # drawn here, independently of the MDD's own simulation
            a = rng.normal(0, 1.0, (seeds, 1))
            g = rng.normal(0, math.sqrt(2.0 / 2), (1, units))  # s2_g = 2 over the difference
            e = rng.normal(0, math.sqrt(3.0), (seeds, units))
            xs.append(mu + a + b + g + e)
        hits += paired_difference(*xs).p < 0.05
    assert 0.76 <= hits / n <= 0.84  # the power of the test actually run


def test_power_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, (1, 10, 1))
    tables = {k: base + rng.normal(0, 0.02, (3, 10, 1)) + m for k, m in (("A", 0.0), ("B", 0.01))}
    text = power_report(per_case_rows(tables), "B", 1.0, n_sim=200)
    assert "Pilot: 2 rows, 3 seed(s) per loss, 10 cases; reference B." in text
    assert "Minimal detectable difference at 80% power" in text and "To detect 1 points" in text
    with pytest.raises(ValueError, match=r"`effect` to be > 0"):
        power_report(per_case_rows(tables), "B", 0.0)
    one_seed = {k: v[:1] for k, v in tables.items()}
    assert "not estimable (one seed)" in power_report(per_case_rows(one_seed), None, 1.0, 200)


def test_analyze_a_single_case_has_no_interval(tmp_path: Path) -> None:
    from lightning_app.compare.analysis import analyze_rows

    tables = {"A": np.full((2, 1, 1), 0.7), "B": np.full((2, 1, 1), 0.6)}
    result = analyze_rows(per_case_rows(tables), tmp_path, reference="B")
    assert math.isnan(result.mdd) and result.n_units == 1
    a = result.stats[0]
    assert a["diff"] == pytest.approx(10.0) and math.isnan(a["p_value"])
    assert "Minimal detectable difference" not in result.paths["markdown"].read_text()
