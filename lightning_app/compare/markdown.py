"""The Markdown report of a comparison (:func:`analysis_markdown`): the statistics table, what
its columns mean, the family and correction, the design's minimal detectable difference, the
empty-cell counts, the poster's columns and the plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_app.compare.analysis import Analysis

__all__ = ["analysis_markdown", "fmt_p"]


def fmt_p(p: float) -> str:
    """p with 3 decimals, or 2 significant digits below 0.001; NaN as a dash."""
    if isinstance(p, str) or math.isnan(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _num(v: float, signed: bool = False) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _ci(low: float, high: float, signed: bool = False) -> str:
    if math.isnan(low):
        return ""
    return f" [{_num(low, signed)}, {_num(high, signed)}]"


def _table(rows: Sequence[Sequence[str]], head: Sequence[str]) -> list[str]:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|",
    ]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _stats_table(a: Analysis) -> list[str]:
    ref = a.reference
    head = ["Loss", "mDice [95% CI]", "per seed", f"Δ vs {ref} [95% CI]", "HL", "p", "p_holm",
            "p Wilcoxon", "better / worse / tied", "P(improve)", "P(rank 1)"]  # fmt: skip
    rows = []
    for r in a.stats:
        seeds = " ".join(f"{v:.2f}" for v in r["mdice_per_seed"])
        name = r["loss"]
        if r["is_reference"]:
            tests = ["(reference)", "", "", "", "", "", "", ""]
        else:
            bold = not math.isnan(r["p_holm"]) and r["p_holm"] < 0.05
            diff = _num(r["diff"], True) + _ci(r["diff_ci_low"], r["diff_ci_high"], True)
            if bold:
                name, diff = f"**{name}**", f"**{diff}**"
            tests = [
                diff, _num(r["hodges_lehmann"], True), fmt_p(r["p_value"]), fmt_p(r["p_holm"]),
                fmt_p(r["p_wilcoxon"]),
                f"{r['cases_better']} / {r['cases_worse']} / {r['cases_tied']}",
                _num(r["prob_improvement"]), "",
            ]  # fmt: skip
        mdice = _num(r["mdice"]) + _ci(r["mdice_ci_low"], r["mdice_ci_high"])
        tests[-1] = f"{r['prob_rank1']:.2f}"
        rows.append([name, mdice, seeds, *tests])
    return _table(rows, head)


def _explanation(a: Analysis) -> list[str]:
    tested = [r for r in a.stats if not r["is_reference"] and not math.isnan(r["p_value"])]
    conditional = any(r["conditional"] for r in a.stats) or a.n_seeds < 2
    lines = [
        f"Unit: the test case ({a.n_units} cases; an ACDC patient averages its ED and ES frames). "
        "A case's score is its Dice averaged over the foreground classes whose ground truth is "
        "not empty; percent. mDice: mean over seeds and cases, 95% CI with seed-to-seed and "
        "case-to-case variance; per seed: each run's mean.",
        f"Δ: row minus {a.reference}, Dice points; its 95% CI and p come from one t test on the "
        "crossed seeds x cases model (run, case x loss and residual variance components, "
        "Satterthwaite degrees of freedom), so p < 0.05 exactly when the CI excludes 0. "
        "HL: Hodges-Lehmann estimate of the case differences. p Wilcoxon: exact two-sided "
        f"signed-rank test over the {a.n_units} seed-averaged case differences, conditional on "
        "the trained networks. better / worse / tied: cases. P(improve): probability that a run "
        "of the row beats a run of the reference, over seed pairs. P(rank 1): share of 2000 "
        "bootstrap resamples (cases, and seeds within each loss) where the row has the highest "
        "mDice.",
        f"Family: the {len(tested)} comparison(s) of this table with {a.reference} (primary t "
        "test on mDice); correction: Holm (p_holm). **Bold**: significant after Holm "
        "(p_holm < 0.05). No other mark: the best mean is not singled out.",
    ]
    if conditional:
        lines.append(
            "**One seed per loss (for at least one row): the run-to-run variance is not "
            "estimable, so these CIs and p-values are conditional on that one run per loss.**"
        )
    if not math.isnan(a.mdd):
        lines.append(
            f"Minimal detectable difference of this design ({a.n_seeds} seed(s) per loss, "
            f"{a.n_units} cases): {a.mdd:.2f} Dice points at 80% power (two-sided t test, "
            "alpha 0.05, before the Holm correction), from this table's variance components; "
            "`python -m lightning_app.compare power` plans a larger design."
        )
    if a.dropped_units:
        lines.append(
            f"Left out: {len(a.dropped_units)} case(s) not scored by every run (no non-empty "
            f"ground truth, or missing): {', '.join(a.dropped_units[:10])}."
        )
    return lines


def _empty_table(a: Analysis) -> list[str]:
    head = ["Loss", "runs", "absent (GT and prediction empty)", "false positive (GT empty)",
            "missed (prediction empty)"]  # fmt: skip
    rows = [
        [r["loss"], str(r["n_seeds"]), str(r["both_empty"]), str(r["fp_on_empty"]),
         str(r["missed"])]
        for r in a.stats
    ]  # fmt: skip
    return _table(rows, head)


def _columns_table(a: Analysis) -> list[str]:
    rows = []
    for r in a.columns:
        cells = []
        for t in a.titles:
            m, s = r.mean[t], r.std[t]
            cells.append(
                "–" if math.isnan(m) else f"{m:.2f}" if math.isnan(s) else f"{m:.2f} ± {s:.2f}"
            )
        rows.append([r.label, *cells])
    return _table(rows, ["Loss", *a.titles])


def analysis_markdown(a: Analysis, title: str, notes: Sequence[str] = ()) -> str:
    """The whole report (see the module docstring)."""
    lines = [f"# {title}", "", *_stats_table(a), ""]
    for line in _explanation(a):
        lines += [line, ""]
    lines += [
        "Cells with an empty ground truth, summed over the runs (not in any mean above; the "
        "counts depend on the test protocol in force):",
        "",
        *_empty_table(a),
        "",
        "The poster's columns: mean ± standard deviation over the seeds, per run the mean over "
        "cases of each class (cells with a non-empty ground truth), then over classes:",
        "",
        *_columns_table(a),
        "",
    ]
    for kind in ("diff_plot", "rank_plot", "per_class_plot", "curves_plot", "k_plot"):
        if kind in a.paths:
            lines.append(f"![{kind}]({a.paths[kind].name})")
    lines += ["", *notes, ""]
    return "\n".join(lines)
