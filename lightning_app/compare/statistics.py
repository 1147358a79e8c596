"""Statistics of a loss comparison: every row against a reference row, on per-case scores.

Unit = test case (an ACDC patient: its ED and ES frames averaged). ``x[l, s, u]``: for loss
``l`` and seed ``s``, the Dice of unit ``u`` averaged over its analysis cells
(:func:`lightning_app.compare.per_case.analysis_table`). Model, seeds crossed with units::

    x[l, s, u] = mu_l + a[l, s] + b[u] + g[l, u] + e[l, s, u]

(run, case, case x loss, residual). Seeds are independent trainings, not paired across losses.
``D = mean x[A] - mean x[R]`` (row minus reference) has
``Var D = s2_a[A]/S_A + s2_a[R]/S_R + (s2_g + s2_e[A]/S_A + s2_e[R]/S_R) / U``, estimated from
each loss's two-way ANOVA (``s2_a = (MS_seed - MS_res) / U``, truncated at 0) and the variance
over units of the seed-averaged differences; Satterthwaite degrees of freedom; CI and p from the
same t (:func:`paired_difference`). With one seed for a loss its run variance is not
estimable: the CI and p are conditional on that run. Beside it: an exact Wilcoxon signed-rank
test over units, Hodges-Lehmann, Holm, probability of improvement, bootstrap ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lightning_app.compare.per_case import (
    CaseTable,
    analysis_table,
    empty_counts,
    group_comparison_rows,
    unit_of,
)

__all__ = [
    "CSV_COLUMNS",
    "LossScores",
    "TTest",
    "compare_losses",
    "crossed_anova",
    "hodges_lehmann",
    "holm",
    "loss_scores",
    "mean_interval",
    "paired_difference",
    "rank_probabilities",
    "wilcoxon_exact",
]

#: The statistics columns of ``comparison.csv`` (differences and means in Dice percent).
CSV_COLUMNS: tuple[str, ...] = (
    "loss", "mdice", "mdice_ci_low", "mdice_ci_high", "diff", "diff_ci_low", "diff_ci_high",
    "hodges_lehmann", "p_value", "p_holm", "p_wilcoxon", "cases_better", "cases_worse",
    "cases_tied", "n_cases", "prob_improvement", "prob_rank1",
)  # fmt: skip
_ZERO = 1e-12  # |difference| at or below this is a tie (fractions of Dice)
N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class LossScores:
    """Unit scores of one loss: ``x`` float64 (seeds, units), fractions; ``counts``: empty-cell
    counts summed over its runs (:func:`~lightning_app.compare.per_case.empty_counts`)."""

    label: str
    seeds: tuple[int, ...]
    units: tuple[str, ...]
    x: np.ndarray
    counts: Mapping[str, int]


def _unit_scores(table: CaseTable) -> dict[str, float]:
    """``{unit: mean over its cases of (mean Dice over the case's analysis cells)}``."""
    dice = analysis_table(table).values["dice"]
    per_unit: dict[str, list[float]] = {}
    for k, case in enumerate(table.cases):
        row = dice[k][~np.isnan(dice[k])]
        if row.size:
            per_unit.setdefault(unit_of(case), []).append(float(row.mean()))
    return {u: float(np.mean(v)) for u, v in per_unit.items()}


def loss_scores(groups: Mapping[str, Mapping[int, CaseTable]]) -> tuple[dict, list[str]]:
    """``({loss: LossScores}, dropped units)``: only the units scored by every run are kept
    (a unit without an analysis cell, e.g. a case with no foreground, is scored by none).

    Raises:
        ValueError: no unit is scored by every run.
    """
    scores = {(loss, s): _unit_scores(t) for loss, runs in groups.items() for s, t in runs.items()}
    all_units = {u for v in scores.values() for u in v}
    common = [u for u in sorted(all_units) if all(u in v for v in scores.values())]
    if not common:
        raise ValueError(
            "Expected at least one test case with a non-empty ground truth scored by every run, "
            "but found none"
        )
    out = {}
    for loss, runs in groups.items():
        seeds = tuple(runs)
        x = np.array([[scores[(loss, s)][u] for u in common] for s in seeds])
        counts: dict[str, int] = {}
        for table in runs.values():
            for key, n in empty_counts(table).items():
                counts[key] = counts.get(key, 0) + n
        out[loss] = LossScores(loss, seeds, tuple(common), x, counts)
    return out, sorted(all_units - set(common))


@dataclass(frozen=True)
class Anova:
    """Two-way ANOVA without replication of a (seeds S, units U) table."""

    n_seeds: int
    n_units: int
    ms_seed: float
    ms_unit: float
    ms_res: float


def crossed_anova(x: np.ndarray) -> Anova:
    """Mean squares of seeds (df S-1), units (df U-1) and residual (df (S-1)(U-1))."""
    s, u = x.shape
    grand = x.mean()
    rows, cols = x.mean(axis=1), x.mean(axis=0)
    ms_seed = u * float(((rows - grand) ** 2).sum()) / (s - 1) if s > 1 else math.nan
    ms_unit = s * float(((cols - grand) ** 2).sum()) / (u - 1) if u > 1 else math.nan
    res = x - rows[:, None] - cols[None, :] + grand
    dof = (s - 1) * (u - 1)
    ms_res = float((res**2).sum()) / dof if dof > 0 else math.nan
    return Anova(s, u, ms_seed, ms_unit, ms_res)


@dataclass(frozen=True)
class TTest:
    """``estimate`` with standard error ``se`` and ``df`` (Satterthwaite); ``ci`` 95% and
    two-sided ``p`` from the same t distribution; ``conditional``: a run variance was not
    estimable (one seed) and is left out."""

    estimate: float
    se: float
    df: float
    ci: tuple[float, float]
    p: float
    conditional: bool


def _satterthwaite(terms: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """``(V, df)`` of ``V = sum c * MS`` over ``(c, MS, df)`` terms."""
    terms = [(c, ms, d) for c, ms, d in terms if c != 0 and d > 0]
    var = sum(c * ms for c, ms, _ in terms)
    denom = sum((c * ms) ** 2 / d for c, ms, d in terms)
    return var, (var**2 / denom if denom > 0 else math.inf)


def _t_test(estimate: float, var: float, df: float, conditional: bool) -> TTest:
    if not var > 0:  # no spread at all: the estimate is exact
        p = 1.0 if abs(estimate) <= _ZERO else 0.0
        return TTest(estimate, 0.0, df, (estimate, estimate), p, conditional)
    se = math.sqrt(var)
    half = float(stats.t.ppf(0.975, df)) * se
    p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return TTest(estimate, se, df, (estimate - half, estimate + half), min(1.0, p), conditional)


def mean_interval(x: np.ndarray) -> TTest:
    """95% CI of one loss's mean over seeds and units, both random:
    ``Var = s2_a/S + s2_b/U + s2_e/(S U)`` (components from :func:`crossed_anova`, each
    truncated at 0). One seed: ``Var = var(units)/U``, conditional on the run."""
    a = crossed_anova(x)
    s, u = x.shape
    if u < 2:
        return TTest(float(x.mean()), math.nan, math.nan, (math.nan, math.nan), math.nan, s < 2)
    if s < 2:
        var, df = _satterthwaite([(1 / u, a.ms_unit, u - 1)])
        return _t_test(float(x.mean()), var, df, True)
    coef = {"seed": 0.0, "unit": 0.0, "res": 1 / (s * u)}  # s2_e / (S U)
    if a.ms_seed > a.ms_res:  # s2_a / S = (MS_seed - MS_res) / (U S)
        coef["seed"] += 1 / (s * u)
        coef["res"] -= 1 / (s * u)
    if a.ms_unit > a.ms_res:  # s2_b / U = (MS_unit - MS_res) / (S U)
        coef["unit"] += 1 / (s * u)
        coef["res"] -= 1 / (s * u)
    var, df = _satterthwaite(
        [
            (coef["seed"], a.ms_seed, s - 1),
            (coef["unit"], a.ms_unit, u - 1),
            (coef["res"], a.ms_res, (s - 1) * (u - 1)),
        ]
    )
    return _t_test(float(x.mean()), var, df, False)


def paired_difference(xa: np.ndarray, xr: np.ndarray) -> TTest:
    """Row minus reference, ``D = mean xa - mean xr`` (same units, independent seeds), its SE
    and Satterthwaite df from the crossed model (module docstring)::

        Var D = sum_l max(0, MS_seed[l] - MS_res[l]) / (U S_l)          (losses with S_l >= 2)
              + max(V_unit, sum_l MS_res[l] / S_l) / U

    ``V_unit``: the variance over units of the seed-averaged differences,
    ``E V_unit = s2_g + s2_e[A]/S_A + s2_e[R]/S_R`` (the max truncates ``s2_g`` at 0; only
    losses with two seeds or more enter the sum).
    """
    if xa.shape[1] != xr.shape[1]:
        raise ValueError(f"Expected the same units for both losses, got {xa.shape} and {xr.shape}")
    u = xa.shape[1]
    d_units = xa.mean(axis=0) - xr.mean(axis=0)
    estimate = float(d_units.mean())
    if u < 2:
        return TTest(estimate, math.nan, math.nan, (math.nan, math.nan), math.nan, True)
    v_unit = float(d_units.var(ddof=1))
    terms: list[tuple[float, float, float]] = []
    floor: list[tuple[float, float, float]] = []
    conditional = False
    for x in (xa, xr):
        s = x.shape[0]
        if s < 2:
            conditional = True
            continue
        a = crossed_anova(x)
        if a.ms_seed > a.ms_res:
            terms += [(1 / (u * s), a.ms_seed, s - 1), (-1 / (u * s), a.ms_res, (s - 1) * (u - 1))]
        floor.append((1 / (u * s), a.ms_res, (s - 1) * (u - 1)))
    if v_unit >= sum(c * ms for c, ms, _ in floor):
        terms.append((1 / u, v_unit, u - 1))
    else:
        terms += floor
    var, df = _satterthwaite(terms)
    return _t_test(estimate, var, df, conditional)


def wilcoxon_exact(d: np.ndarray) -> tuple[float, int, str]:
    """Exact two-sided Wilcoxon signed-rank test of ``d`` (one difference per unit).

    Zero differences (``|d| <= 1e-12``) are removed first (Wilcoxon's convention, scipy's
    ``zero_method="wilcox"``). Without ties among ``|d|``: ``scipy.stats.wilcoxon(d,
    method="exact")``. With ties, scipy's ``"exact"`` uses the null distribution of untied ranks;
    the exact null of the tied mid-ranks is then enumerated here instead (``2 T`` is an integer;
    ``p = min(1, 2 min(P(T <= t), P(T >= t)))``, as scipy's exact two-sided p).

    Returns:
        ``(p, number of nonzero differences, method)``; ``(1.0, 0, "no nonzero difference")``.
    """
    d = np.asarray(d, dtype=np.float64)
    nonzero = d[np.abs(d) > _ZERO]
    n = nonzero.size
    if n == 0:
        return 1.0, 0, "no nonzero difference"
    magnitudes = np.round(np.abs(nonzero), 12)
    if np.unique(magnitudes).size == n:
        p = float(stats.wilcoxon(nonzero, method="exact").pvalue)
        return p, n, "scipy exact"
    ranks2 = np.rint(2 * stats.rankdata(magnitudes)).astype(int)  # doubled mid-ranks
    counts = np.zeros(int(ranks2.sum()) + 1)
    counts[0] = 1.0
    for r in ranks2:  # distribution of 2 T+ under random signs
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:-r]
        counts = (counts + shifted) / 2
    t2 = int(ranks2[nonzero > 0].sum())
    p = min(1.0, 2 * min(counts[: t2 + 1].sum(), counts[t2:].sum()))
    return float(p), n, "exact, tied ranks"


def hodges_lehmann(d: np.ndarray) -> float:
    """Median of the Walsh averages ``(d_i + d_j) / 2``, ``i <= j``."""
    d = np.asarray(d, dtype=np.float64)
    i, j = np.triu_indices(d.size)
    return float(np.median((d[i] + d[j]) / 2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not in the family.
    Sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    ps = np.asarray(p_values, dtype=np.float64)
    idx = [i for i in np.argsort(ps, kind="stable") if not math.isnan(ps[i])]
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * ps[i]))
        out[i] = running
    return out


def probability_of_improvement(runs_a: np.ndarray, runs_r: np.ndarray) -> float:
    """``P(run of A > run of R)`` over all seed pairs (ties count 1/2; Bouthillier et al.)."""
    diff = np.asarray(runs_a)[:, None] - np.asarray(runs_r)[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def rank_probabilities(
    scores: Sequence[LossScores], n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> np.ndarray:
    """float (losses, losses): ``P[l, r]`` = fraction of bootstrap resamples in which loss
    ``l`` ranks ``r + 1`` by mean score (units resampled, the same for every loss; seeds
    resampled within each loss; rank 1 = highest; ties share the better rank)."""
    rng = np.random.default_rng(seed)
    u = scores[0].x.shape[1]
    unit_w = np.stack([np.bincount(rng.integers(0, u, u), minlength=u) for _ in range(n_boot)])
    means = []
    for sc in scores:
        s = sc.x.shape[0]
        seed_w = np.stack([np.bincount(rng.integers(0, s, s), minlength=s) for _ in range(n_boot)])
        means.append(np.einsum("bs,su,bu->b", seed_w, sc.x, unit_w) / (s * u))
    m = np.stack(means, axis=1)  # (B, L)
    ranks = 1 + (m[:, None, :] > m[:, :, None]).sum(axis=2)  # (B, L)
    n = len(scores)
    return np.stack([np.bincount(ranks[:, i] - 1, minlength=n) / n_boot for i in range(n)])


def compare_losses(
    rows: Iterable[Mapping[str, str]],
    reference: str | None,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
) -> list[dict]:
    """One dict per loss (in order of first appearance in ``rows``) keyed by
    :data:`CSV_COLUMNS` and a few more: ``seeds``, ``mdice_per_seed``, ``n_seeds``, ``diff_se``,
    ``diff_df``, ``conditional``, ``wilcoxon_n``, ``wilcoxon_method``, ``both_empty``,
    ``fp_on_empty``, ``missed``, ``rank_probs``, ``is_reference``. Percent; NaN where a test
    does not apply (the reference row, or no reference).

    Args:
        rows: the comparison's per-case rows as ``csv.DictReader`` gives them.
        reference: row name of the reference (``None``: no tests).
        seed: seed of the bootstrap.

    Raises:
        ValueError: a malformed row, or ``reference`` is not a loss of ``rows``.
    """
    groups = group_comparison_rows(rows)
    if reference is not None and reference not in groups:
        raise ValueError(
            f"Expected the reference row to be one of {list(groups)}, got {reference!r}"
        )
    scores, _ = loss_scores(groups)
    order = list(scores)
    rank_probs = rank_probabilities([scores[k] for k in order], n_boot, seed)
    out = []
    for i, loss in enumerate(order):
        sc = scores[loss]
        mean = mean_interval(sc.x)
        runs = sc.x.mean(axis=1)
        row: dict = {c: math.nan for c in CSV_COLUMNS}
        row.update(
            loss=loss, mdice=100 * mean.estimate, mdice_ci_low=100 * mean.ci[0],
            mdice_ci_high=100 * mean.ci[1], n_cases=sc.x.shape[1], prob_rank1=rank_probs[i, 0],
            seeds=list(sc.seeds), n_seeds=len(sc.seeds), mdice_per_seed=list(100 * runs),
            mdice_conditional=mean.conditional, rank_probs=list(rank_probs[i]),
            is_reference=loss == reference, diff_se=math.nan, diff_df=math.nan,
            conditional=False, wilcoxon_n=0, wilcoxon_method="",
            cases_better="", cases_worse="", cases_tied="", **sc.counts,
        )  # fmt: skip
        if reference is not None and loss != reference:
            ref = scores[reference]
            t = paired_difference(sc.x, ref.x)
            d_units = sc.x.mean(axis=0) - ref.x.mean(axis=0)
            p_w, n_w, method = wilcoxon_exact(d_units)
            row.update(
                diff=100 * t.estimate, diff_ci_low=100 * t.ci[0], diff_ci_high=100 * t.ci[1],
                diff_se=100 * t.se, diff_df=t.df, p_value=t.p, conditional=t.conditional,
                hodges_lehmann=100 * hodges_lehmann(d_units), p_wilcoxon=p_w, wilcoxon_n=n_w,
                wilcoxon_method=method, cases_better=int((d_units > _ZERO).sum()),
                cases_worse=int((d_units < -_ZERO).sum()),
                cases_tied=int((np.abs(d_units) <= _ZERO).sum()),
                prob_improvement=probability_of_improvement(runs, ref.x.mean(axis=1)),
            )  # fmt: skip
        out.append(row)
    for row, p in zip(out, holm([r["p_value"] for r in out]), strict=True):
        row["p_holm"] = p
    return out
