"""Statistics of the comparison: the crossed seeds x cases t test against scipy's t tests where
it reduces to them, its coverage and type-I error by simulation, Wilcoxon, Hodges-Lehmann,
Holm, probability of improvement, bootstrap ranks, and the cells of point 4 (undefined cells).

References are scipy's tests, hand computations, or brute force written here."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from scipy import stats

from lightning_app.compare.statistics import (
    CSV_COLUMNS,
    compare_losses,
    hodges_lehmann,
    holm,
    mean_interval,
    paired_difference,
    probability_of_improvement,
    rank_probabilities,
    wilcoxon_exact,
)


def per_case_rows(tables: dict[str, np.ndarray], classes=("a",), cases=None, **flags) -> list:
    """Comparison per-case rows (as csv.DictReader gives them) from ``{loss: dice (S, U, C)}``;
    NaN is written as an empty cell; ``flags[name]``: optional bool (U, C) per loss."""
    out = io.StringIO()
    header = ["loss", "key", "seed", "run", "case", "class", "dice", "iou", "precision",
              "recall", "hd95", "gt_empty", "pred_empty"]  # fmt: skip
    writer = csv.writer(out)
    writer.writerow(header)
    for loss, x in tables.items():
        s_n, u_n, c_n = x.shape
        names = cases or [f"case{u:03d}" for u in range(u_n)]
        for s in range(s_n):
            for u in range(u_n):
                for c in range(c_n):
                    v = x[s, u, c]
                    text = "" if math.isnan(v) else repr(float(v))
                    gt = flags.get("gt_empty", {}).get(loss)
                    pred = flags.get("pred_empty", {}).get(loss)
                    writer.writerow([
                        loss, loss, 40 + s, f"r{s}", names[u], classes[c], text, text, text, text,
                        "", "" if gt is None else gt[u, c], "" if pred is None else pred[u, c],
                    ])  # fmt: skip
    return list(csv.DictReader(io.StringIO(out.getvalue())))


# ---------------------------------------------------------------------- the t test
def test_one_seed_each_is_scipy_paired_t() -> None:
    rng = np.random.default_rng(0)
    xa, xr = rng.normal(0.7, 0.1, (1, 9)), rng.normal(0.68, 0.1, (1, 9))
    t = paired_difference(xa, xr)
    ref = stats.ttest_rel(xa[0], xr[0])
    ci = ref.confidence_interval(0.95)
    assert t.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert t.ci == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert t.df == pytest.approx(8) and t.conditional


def test_pure_run_variance_is_welch_on_run_means() -> None:
    # x[s, u] = a_s + b_u exactly: no residual, no interaction -> Welch's t on the run means
    rng = np.random.default_rng(1)
    b = rng.normal(0.7, 0.1, 12)
    a_a, a_r = rng.normal(0.02, 0.01, 3), rng.normal(0.0, 0.01, 5)
    t = paired_difference(a_a[:, None] + b, a_r[:, None] + b)
    ref = stats.ttest_ind(a_a, a_r, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert t.p == pytest.approx(ref.pvalue, rel=1e-8)
    assert t.ci == pytest.approx((ci.low, ci.high), rel=1e-8)
    assert t.df == pytest.approx(ref.df, rel=1e-8) and not t.conditional


def test_mean_interval_one_seed_is_one_sample_t_and_crossed_by_hand() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0.7, 0.1, (1, 10))
    ci = stats.ttest_1samp(x[0], 0.0).confidence_interval(0.95)
    assert mean_interval(x).ci == pytest.approx((ci.low, ci.high), rel=1e-10)
    # crossed, by hand: Var = (MS_seed + MS_unit - MS_res) / (S U) when both exceed MS_res
    x = rng.normal(0, 0.05, (3, 8)) + np.array([[-0.1], [0.0], [0.1]]) + rng.normal(0.7, 0.1, 8)
    s, u = x.shape
    r, c, g = x.mean(1), x.mean(0), x.mean()
    ms_s = u * ((r - g) ** 2).sum() / (s - 1)
    ms_u = s * ((c - g) ** 2).sum() / (u - 1)
    ms_e = ((x - r[:, None] - c + g) ** 2).sum() / ((s - 1) * (u - 1))
    assert ms_s > ms_e and ms_u > ms_e
    var = (ms_s + ms_u - ms_e) / (s * u)
    parts = [(ms_s / (s * u), s - 1), (ms_u / (s * u), u - 1), (ms_e / (s * u), (s - 1) * (u - 1))]
    df = var**2 / sum(v**2 / d for v, d in parts)
    t = mean_interval(x)
    assert t.se == pytest.approx(math.sqrt(var)) and t.df == pytest.approx(df)
    # no run effect at all (MS_seed < MS_res): the run component is truncated at 0, and
    # Var = s2_b / U + s2_e / (S U) = MS_unit / (S U)
    x = x - x.mean(axis=1, keepdims=True)
    assert mean_interval(x).se == pytest.approx(math.sqrt(ms_u / (s * u)))


def draw_pair(rng, seeds: int, units: int, share: float, delta: float):
    """Two losses' (seeds, units) tables: case effects b (shared), run effects (variance
    ``share``), case x loss interaction and noise (``(1 - share) / 2`` each)."""
    b = rng.normal(0.0, 3.0, units)
    out = []
    for mu in (delta, 0.0):
        a = rng.normal(0.0, math.sqrt(share), (seeds, 1))
        g = rng.normal(0.0, math.sqrt((1 - share) / 2), (1, units))
        e = rng.normal(0.0, math.sqrt((1 - share) / 2), (seeds, units))
        out.append(mu + a + b + g + e)
    return out


@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("units", [8, 50])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_coverage_and_type_one_error_by_simulation(seeds: int, units: int, share: float) -> None:
    rng = np.random.default_rng([seeds, units, int(10 * share)])
    n, delta = 800, 0.7
    covered = rejected = 0
    for _ in range(n):
        t = paired_difference(*draw_pair(rng, seeds, units, share, delta))
        covered += t.ci[0] <= delta <= t.ci[1]
        rejected += paired_difference(*draw_pair(rng, seeds, units, share, 0.0)).p < 0.05
    assert covered / n >= 0.93
    assert rejected / n <= 0.06


def test_the_simulation_catches_pseudo_replication() -> None:
    # the old test (Wilcoxon over (seed, case) pairs) on the same null tables: far above 6 %
    rng = np.random.default_rng(5)
    n = 300
    rejected = 0
    for _ in range(n):
        xa, xr = draw_pair(rng, 3, 12, 0.8, 0.0)
        rejected += stats.wilcoxon(xa.ravel(), xr.ravel()).pvalue < 0.05
    assert rejected / n > 0.15


# ---------------------------------------------------------------------- nonparametric
def test_wilcoxon_exact_is_scipy_exact_without_ties() -> None:
    d = np.array([0.3, -0.1, 0.25, 0.4, -0.05, 0.6, 0.7])
    p, n, method = wilcoxon_exact(d)
    assert p == stats.wilcoxon(d, method="exact").pvalue and n == 7 and method == "scipy exact"
    # zero differences are removed before the test (Wilcoxon's convention)
    p0, n0, _ = wilcoxon_exact(np.append(d, [0.0, 0.0]))
    assert (p0, n0) == (p, 7)
    assert wilcoxon_exact(np.zeros(4)) == (1.0, 0, "no nonzero difference")


def test_wilcoxon_exact_with_ties_enumerates_the_tied_ranks() -> None:
    d = np.array([0.1, -0.1, 0.3, 0.4, 0.5, 0.6, -0.7, 0.2, 0.2])
    p, n, method = wilcoxon_exact(d)
    ref = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert p == pytest.approx(ref, rel=1e-12) and n == 9 and method == "exact, tied ranks"


def test_hodges_lehmann_and_holm_by_hand() -> None:
    # Walsh averages of 1, 2, 4: 1, 1.5, 2.5, 2, 3, 4 -> median 2.25
    assert hodges_lehmann(np.array([1.0, 2.0, 4.0])) == pytest.approx(2.25)
    # sorted 0.01, 0.03, 0.04 (m = 3): 0.03, max(0.03, 0.06), max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, math.nan])[3])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_probability_of_improvement_and_ranks() -> None:
    # pairs (1, 2), (1, 2), (3, 2), (3, 2) and a tie counting one half
    assert probability_of_improvement(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert probability_of_improvement(np.array([2.0]), np.array([2.0, 1.0])) == 0.75
    rows = per_case_rows({"low": np.full((2, 6, 1), 0.5), "high": np.full((2, 6, 1), 0.9)})
    out = compare_losses(rows, "low", n_boot=1000)
    assert [r["prob_rank1"] for r in out] == [0.0, 1.0]
    assert out[1]["prob_improvement"] == 1.0


def test_rank_probabilities_resample_cases_and_seeds() -> None:
    rng = np.random.default_rng(3)
    tables = {k: rng.normal(m, 0.05, (3, 10, 1)) for k, m in (("x", 0.6), ("y", 0.62), ("z", 0.5))}
    out = compare_losses(per_case_rows(tables), "x", seed=7)
    probs = np.array([r["rank_probs"] for r in out])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0)  # no ties: one loss per rank
    assert out[2]["prob_rank1"] == 0.0 and 0.0 < out[0]["prob_rank1"] < out[1]["prob_rank1"]
    again = compare_losses(per_case_rows(tables), "x", seed=7)
    assert [r["prob_rank1"] for r in again] == [r["prob_rank1"] for r in out]
    with pytest.raises(ValueError, match=r"reference row to be one of"):
        compare_losses(per_case_rows(tables), "w")
    assert rank_probabilities.__defaults__[0] >= 1000


# ---------------------------------------------------------------------- the rows
def test_compare_losses_columns_and_identities() -> None:
    rng = np.random.default_rng(4)
    tables = {k: np.clip(rng.normal(m, 0.08, (3, 12, 2)), 0, 1)
              for k, m in (("CE", 0.6), ("CE + topK-Dice", 0.64))}  # fmt: skip
    out = compare_losses(per_case_rows(tables, classes=("a", "b")), "CE + topK-Dice")
    assert set(CSV_COLUMNS) <= set(out[0]) and [r["loss"] for r in out] == list(tables)
    ce, ref = out
    for key in ("diff", "p_value", "p_wilcoxon", "hodges_lehmann", "prob_improvement"):
        assert math.isnan(ref[key])
    # the same cells for the mean and the test: diff = mdice(row) - mdice(reference)
    assert ce["diff"] == pytest.approx(ce["mdice"] - ref["mdice"])
    units = {k: v.mean(axis=2).mean(axis=0) for k, v in tables.items()}
    d = units["CE"] - units["CE + topK-Dice"]
    assert ce["mdice"] == pytest.approx(100 * tables["CE"].mean())
    assert ce["p_wilcoxon"] == stats.wilcoxon(d, method="exact").pvalue
    assert (ce["cases_better"], ce["cases_worse"]) == ((d > 0).sum(), (d < 0).sum())
    assert ce["n_cases"] == 12 and ce["p_holm"] == ce["p_value"]  # a family of one
    assert ce["diff_ci_low"] < ce["diff"] < ce["diff_ci_high"]
    assert (ce["p_value"] < 0.05) == (ce["diff_ci_high"] < 0 or ce["diff_ci_low"] > 0)
    assert ce["mdice_per_seed"] == pytest.approx(100 * tables["CE"].mean(axis=(1, 2)))


def test_undefined_cells_cannot_improve_a_row() -> None:
    # 2 classes; class b's ground truth is empty in cases 0-3. The reference predicts nothing
    # there (undefined Dice); "fp" predicts something there (Dice 0 under the default protocol)
    # and is better elsewhere. Those cells are in no mean and in no test; they are counted.
    rng = np.random.default_rng(6)
    s, u = 2, 10
    base = rng.uniform(0.6, 0.8, (1, u, 2))
    ref = np.repeat(base, s, axis=0)
    fp = ref + 0.02
    gt_empty = np.zeros((u, 2), bool)
    gt_empty[:4, 1] = True
    ref[:, :4, 1], fp[:, :4, 1] = np.nan, 0.0
    pred_empty = {"ref": gt_empty.copy(), "fp": np.zeros((u, 2), bool)}
    rows = per_case_rows({"fp": fp, "ref": ref}, classes=("a", "b"),
                         gt_empty={"fp": gt_empty, "ref": gt_empty}, pred_empty=pred_empty)  # fmt: skip
    row, reference = compare_losses(rows, "ref")
    present = ~gt_empty
    assert row["mdice"] == pytest.approx(
        100 * np.mean([fp[0, k][present[k]].mean() for k in range(u)])
    )
    assert row["diff"] == pytest.approx(2.0) and row["diff"] == pytest.approx(
        row["mdice"] - reference["mdice"]
    )
    assert (row["fp_on_empty"], row["both_empty"]) == (8, 0)
    assert (reference["fp_on_empty"], reference["both_empty"]) == (0, 8)
    # a row whose hard cells are undefined (an empty CSV cell where the ground truth is not
    # empty) is scored 0 there, never left out: it cannot gain from them
    hard = ref.copy()
    hard[:, :4, 1] = 0.95
    hard[:, 6:, 0] = np.nan
    flags = {"gt_empty": {"hard": gt_empty, "ref": gt_empty}}
    hard_row = compare_losses(
        per_case_rows({"hard": hard, "ref": ref}, ("a", "b"), **flags), "ref"
    )[0]
    zeroed = np.nan_to_num(hard)
    zero_row = compare_losses(
        per_case_rows({"hard": zeroed, "ref": ref}, ("a", "b"), **flags), "ref"
    )[0]
    for key in ("mdice", "diff", "p_value", "p_wilcoxon"):
        assert hard_row[key] == zero_row[key]
    assert hard_row["diff"] < 0


def test_acdc_frames_average_into_their_patient() -> None:
    cases = ["patient101_frame01", "patient101_frame14", "patient102_frame01", "patient102_frame10",
             "patient103_frame01", "patient103_frame08"]  # fmt: skip
    x = np.array([[[0.6], [0.8], [0.5], [0.7], [0.9], [0.7]]])
    rows = per_case_rows({"A": x, "B": x - np.array([0.1, 0.0, 0.0, 0.0, 0.05, 0.05])[None, :, None]},
                         cases=cases)  # fmt: skip
    a = compare_losses(rows, "B")[0]
    assert a["n_cases"] == 3
    assert (a["cases_better"], a["cases_tied"]) == (2, 1)
    # patient differences 0.05, 0, 0.05; Walsh averages 0.05, 0.025, 0.05, 0, 0.025, 0.05
    assert a["hodges_lehmann"] == pytest.approx(100 * 0.0375)
