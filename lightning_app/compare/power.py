"""Power planning from a pilot comparison: variance components, minimal detectable difference.

Components pooled over the pilot's losses (:mod:`lightning_app.compare.statistics` model), in
Dice points squared: run ``s2_a = mean_l max(0, MS_seed - MS_res) / U`` and residual
``s2_e = mean_l MS_res`` over losses with two seeds or more; case x loss
``s2_g = mean over rows of max(0, V_unit - s2_e/S_A - s2_e/S_R)``. For a design of ``S`` seeds
per loss and ``U`` cases::

    SE^2 = 2 s2_a / S + s2_g / U + 2 s2_e / (S U),   df: Satterthwaite (S - 1 and U - 1)

The minimal detectable difference (MDD) is the true difference a two-sided t test at
``alpha = 0.05`` detects with probability 0.8 (noncentral t), before any multiplicity
correction. One seed: ``s2_a`` is not estimable and left out (conditional on the runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from lightning_app.compare.per_case import group_comparison_rows
from lightning_app.compare.statistics import LossScores, crossed_anova, loss_scores

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
    """``(SE, df)`` of a row-minus-reference difference for ``seeds`` per loss, ``units``."""
    seed_part = 2 * c.s2_run / seeds if seeds >= 2 else 0.0
    unit_part = c.s2_interaction / units + 2 * c.s2_residual / (seeds * units)
    var = seed_part + unit_part
    terms = [(unit_part, units - 1)]
    if seeds >= 2:  # one run-variance term per loss, S - 1 df each
        terms += [(seed_part / 2, seeds - 1)] * 2
    denom = sum(v**2 / d for v, d in terms if d > 0)
    df = var**2 / denom if denom > 0 else math.inf
    return math.sqrt(var), df


def power_at(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided t test at true difference ``delta``."""
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = delta / se
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return power if math.isfinite(power) else float(nc > crit)


def minimal_detectable_difference(c: Components, seeds: int, units: int) -> float:
    """The difference (Dice points) detected with power 0.8 by the design; NaN when the
    pilot shows no variance at all."""
    se, df = design_se(c, seeds, units)
    if not se > 0 or not math.isfinite(df):
        return math.nan
    return float(optimize.brentq(lambda d: power_at(d, se, df) - POWER, 0.0, 50 * se))


def needed(c: Components, effect: float, seeds: int, units: int) -> dict[str, int | None]:
    """Smallest ``seeds`` (2..100, at ``units``) and ``units`` (2..5000, at ``seeds``) whose
    MDD is at most ``effect``; ``None`` when out of that range."""
    out: dict[str, int | None] = {"seeds": None, "units": None}
    for s in range(2, 101):
        if minimal_detectable_difference(c, s, units) <= effect:
            out["seeds"] = s
            break
    lo, hi = 2, 5000
    if minimal_detectable_difference(c, seeds, hi) <= effect:
        while lo < hi:  # the MDD falls as units grow
            mid = (lo + hi) // 2
            if minimal_detectable_difference(c, seeds, mid) <= effect:
                hi = mid
            else:
                lo = mid + 1
        out["units"] = lo
    return out


def power_report(rows: Iterable[Mapping[str, str]], reference: str | None, effect: float) -> str:
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
        reference = "CE + topK-Dice" if "CE + topK-Dice" in scores else next(iter(scores))
    c = pilot_components(scores, reference)
    s, u = c.n_seeds, c.n_units
    lines = [
        f"Pilot: {len(scores)} rows, {s} seed(s) per loss, {u} cases; reference {reference}.",
        "Variance components (Dice points^2): run "
        + (f"{c.s2_run:.3f}" if c.run_known else "not estimable (one seed): left out")
        + f", case x loss {c.s2_interaction:.3f}, residual {c.s2_residual:.3f}.",
        f"Minimal detectable difference at 80% power (two-sided t, alpha {ALPHA}, no "
        f"multiplicity correction): {minimal_detectable_difference(c, s, u):.2f} points "
        f"with {s} seed(s) x {u} cases.",
        "",
        "MDD (points) | " + " | ".join(f"{k} cases" for k in (u, 2 * u, 4 * u)),
    ]
    for seeds in sorted({max(s, 1), 3, 5, 10}):
        mdds = [minimal_detectable_difference(c, seeds, k) for k in (u, 2 * u, 4 * u)]
        lines.append(f"{seeds:>3} seeds    | " + " | ".join(f"{m:.2f}" for m in mdds))
    need = needed(c, effect, max(s, 2), u)
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
