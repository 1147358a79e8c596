"""Power planning from a pilot comparison: variance components, minimal detectable difference.

Components pooled over the pilot's losses (:mod:`lightning_app.compare.statistics` model), in
Dice points squared: run ``s2_a = mean_l max(0, MS_seed - MS_res) / U`` and residual
``s2_e = mean_l MS_res`` over losses with two seeds or more; case x loss
``s2_g = mean over rows of max(0, V_unit - s2_e/S_A - s2_e/S_R)``. For a design of ``S`` seeds
per loss and ``U`` cases::

    SE^2 = 2 s2_a / S + s2_g / U + 2 s2_e / (S U),   df: Satterthwaite (:func:`design_se`)

The minimal detectable difference (MDD) is the true difference that the table's t test at
``alpha = 0.05`` detects with probability 0.8, before any multiplicity correction, found by
simulating that test on tables drawn from the components (a noncentral t with Satterthwaite
df is optimistic with few seeds: the variance estimate itself varies). One seed: ``s2_a`` is
not estimable and left out (conditional on the runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lightning_app.compare.per_case import group_comparison_rows
from lightning_app.compare.statistics import (
    LossScores,
    crossed_anova,
    loss_scores,
    paired_difference,
)

__all__ = [
    "Components",
    "design_se",
    "minimal_detectable_difference",
    "needed",
    "pilot_components",
    "power_report",
]

POWER = 0.8
ALPHA = 0.05


@dataclass(frozen=True)
class Components:
    """Variance components in Dice points squared; ``run_known``: ``s2_a`` was estimable."""

    s2_run: float
    s2_interaction: float
    s2_residual: float
    run_known: bool
    n_seeds: int
    n_units: int


def pilot_components(scores: Mapping[str, LossScores], reference: str | None) -> Components:
    """Pooled components of a pilot (module docstring); percent units.

    Raises:
        ValueError: fewer than two units.
    """
    losses = list(scores.values())
    u = losses[0].x.shape[1]
    if u < 2:
        raise ValueError(f"Expected at least 2 test cases for power planning, but got {u}")
    runs, residuals = [], []
    for sc in losses:
        if sc.x.shape[0] >= 2:
            a = crossed_anova(100 * sc.x)
            runs.append(max(0.0, (a.ms_seed - a.ms_res) / u))
            residuals.append(a.ms_res)
    s2_e = float(np.mean(residuals)) if residuals else 0.0
    ref = scores[reference] if reference in scores else losses[0]
    inter = []
    for sc in losses:
        if sc is ref:
            continue
        d = 100 * (sc.x.mean(axis=0) - ref.x.mean(axis=0))
        share = s2_e / sc.x.shape[0] + s2_e / ref.x.shape[0]
        inter.append(max(0.0, float(d.var(ddof=1)) - share))
    n_seeds = int(round(np.mean([sc.x.shape[0] for sc in losses])))
    return Components(
        s2_run=float(np.mean(runs)) if runs else 0.0,
        s2_interaction=float(np.mean(inter)) if inter else 0.0,
        s2_residual=s2_e,
        run_known=bool(runs),
        n_seeds=n_seeds,
        n_units=u,
    )


def design_se(c: Components, seeds: int, units: int) -> tuple[float, float]:
    """``(SE, df)`` of a row-minus-reference difference for ``seeds`` per loss and ``units``:
    the expected mean squares of :func:`~lightning_app.compare.statistics.paired_difference`
    (per loss ``MS_seed / (U S)`` with ``S - 1`` df minus ``MS_res / (U S)`` with
    ``(S - 1)(U - 1)`` df; ``V_unit / U`` with ``U - 1`` df) in Satterthwaite's formula."""
    s, u = seeds, units
    v_unit = (c.s2_interaction + 2 * c.s2_residual / s) / u
    terms = [(v_unit, u - 1)]
    if s >= 2:
        ms_seed = (c.s2_run + c.s2_residual / u) / s  # E MS_seed / (U S)
        ms_res = c.s2_residual / (u * s)
        terms += [(ms_seed, s - 1), (-ms_res, (s - 1) * (u - 1))] * 2
    var = sum(v for v, _ in terms)
    denom = sum(v**2 / d for v, d in terms if d > 0)
    df = var**2 / denom if denom > 0 else math.inf
    return math.sqrt(var), df


def _null_draws(c: Components, seeds: int, units: int, n_sim: int, seed: int) -> np.ndarray:
    """float (n_sim, 3): ``D``, ``SE`` and the critical ``t_{0.975, df} SE`` of
    :func:`~lightning_app.compare.statistics.paired_difference` on tables drawn from the
    components with no true difference (``SE`` does not depend on the true difference)."""
    rng = np.random.default_rng([seed, seeds, units])
    run = math.sqrt(c.s2_run) if c.run_known else 0.0
    out = np.empty((n_sim, 3))
    for i in range(n_sim):
        xs = []
        for _ in range(2):
            x = rng.normal(0.0, math.sqrt(c.s2_residual), (seeds, units))
            x += rng.normal(0.0, math.sqrt(c.s2_interaction / 2), (1, units))
            if seeds >= 2:
                x += rng.normal(0.0, run, (seeds, 1))
            xs.append(x)
        t = paired_difference(*xs)
        crit = float(stats.t.ppf(1 - ALPHA / 2, t.df)) * t.se if t.se > 0 else 0.0
        out[i] = (t.estimate, t.se, crit)
    return out


def minimal_detectable_difference(
    c: Components, seeds: int, units: int, n_sim: int = 2000, seed: int = 0
) -> float:
    """The true difference (Dice points) that the row's t test
    (:func:`~lightning_app.compare.statistics.paired_difference`) detects with probability
    0.8 at two-sided ``alpha = 0.05``: ``n_sim`` tables drawn from the components (normal
    run, case x loss and residual effects), ``power(delta) = share of |delta + D| > t SE``,
    solved by bisection. NaN when the components are all 0."""
    if not design_se(c, seeds, units)[0] > 0:
        return math.nan
    draws = _null_draws(c, seeds, units, n_sim, seed)

    def power(delta: float) -> float:
        return float((np.abs(delta + draws[:, 0]) > draws[:, 2]).mean())

    lo, hi = 0.0, 1.0
    while power(hi) < POWER:
        lo, hi = hi, 2 * hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid) < POWER else (lo, mid)
    return hi


def needed(
    c: Components, effect: float, seeds: int, units: int, n_sim: int = 500
) -> dict[str, int | None]:
    """Smallest ``seeds`` (2..64, at ``units``) and ``units`` (2..2048, at ``seeds``) whose
    MDD is at most ``effect`` (bisection; the MDD falls as either grows); ``None`` when out of
    that range."""

    def smallest(lo: int, hi: int, mdd) -> int | None:
        if mdd(hi) > effect:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if mdd(mid) > effect else (lo, mid)
        return lo

    return {
        "seeds": smallest(2, 64, lambda s: minimal_detectable_difference(c, s, units, n_sim)),
        "units": smallest(2, 2048, lambda u: minimal_detectable_difference(c, seeds, u, n_sim)),
    }


def power_report(
    rows: Iterable[Mapping[str, str]], reference: str | None, effect: float, n_sim: int = 1000
) -> str:
    """``python -m lightning_app.compare power``: the pilot's components, the MDD of its design
    and of larger ones, and the seeds / cases needed to detect ``effect`` Dice points.

    Raises:
        ValueError: ``effect`` not positive, or a reference that is not a row.
    """
    if not effect > 0:
        raise ValueError(f"Expected argument `effect` to be > 0 Dice points, but got {effect}")
    scores, _ = loss_scores(group_comparison_rows(rows))
    if reference is not None and reference not in scores:
        raise ValueError(f"Expected `reference` to be one of {list(scores)}, got {reference!r}")
    if reference is None:
        found = [name for name in ("CE + topK-Dice", "K=100") if name in scores]
        reference = found[0] if found else next(iter(scores))  # as analysis.default_reference
    c = pilot_components(scores, reference)
    s, u = c.n_seeds, c.n_units
    lines = [
        f"Pilot: {len(scores)} rows, {s} seed(s) per loss, {u} cases; reference {reference}.",
        "Variance components (Dice points^2): run "
        + (f"{c.s2_run:.3f}" if c.run_known else "not estimable (one seed): left out")
        + f", case x loss {c.s2_interaction:.3f}, residual {c.s2_residual:.3f}.",
        f"Minimal detectable difference at 80% power (two-sided t, alpha {ALPHA}, no "
        f"multiplicity correction): {minimal_detectable_difference(c, s, u, n_sim):.2f} points "
        f"with {s} seed(s) x {u} cases.",
        "",
        "MDD (points) | " + " | ".join(f"{k} cases" for k in (u, 2 * u, 4 * u)),
    ]
    for seeds in sorted({max(s, 1), 3, 5, 10}):
        mdds = [minimal_detectable_difference(c, seeds, k, n_sim) for k in (u, 2 * u, 4 * u)]
        lines.append(f"{seeds:>3} seeds    | " + " | ".join(f"{m:.2f}" for m in mdds))
    need = needed(c, effect, max(s, 2), u, n_sim // 2)
    lines.append("")
    lines.append(
        f"To detect {effect:g} points: "
        + (f"{need['seeds']} seeds per loss with {u} cases" if need["seeds"] else
           f"more than 100 seeds with {u} cases")
        + "; "
        + (f"{need['units']} cases with {max(s, 2)} seeds per loss" if need["units"] else
           f"not reachable with {max(s, 2)} seeds per loss (run variance dominates)")
        + "."
    )  # fmt: skip
    if not c.run_known:
        lines.append(
            "The pilot has one seed per loss: the run variance is unknown and left out, so "
            "these figures are optimistic; run a pilot with 2 seeds or more."
        )
    return "\n".join(lines)
