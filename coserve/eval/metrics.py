"""Pure metrics over quality-vs-cost operating points. No I/O, no routers, plain numbers in and out.

Conventions (documented choices):
* A router's **front** is the upper-left Pareto front of its operating points (cost, quality).
* **Quality at a budget** is the piecewise-linear interpolation on the front: any point between
  two operating points is reachable by sending each request to one of the two at random. Beyond
  the last point the quality stays flat; below the first point the router has no operating point
  (NaN for look-ups, 0 inside an area).
* **Area under the front** integrates that curve over a fixed cost range ``[x_lo, x_hi]`` (the
  harness uses the cheapest single expert's cost to the dearest one's) and divides by the area of
  the oracle, taken as the constant line at the oracle's quality over the same range: the oracle
  scores 1 and a router that sits at the oracle's quality everywhere would too.
* **APGR** (RouteLLM) integrates PGR = (q - q_weak) / (q_strong - q_weak) over the fraction of
  calls that go to the strong model, from 0 to 1; all-weak (0, q_weak) and all-strong
  (1, q_strong) are always reachable and are added to the points. **CPT(x%)** is the smallest
  fraction of strong calls whose PGR reaches x%.
* **Summary figures** (``summary``): the AUCs, ``oracle_gap_closed`` and, given a strong and a weak
  expert, APGR and CPT(50/80/95), computed in one place from plain numbers, so a report's figures and
  their bootstrap resamples (``coserve.eval.intervals``) are the same computation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "apgr",
    "category_accuracy",
    "cpt",
    "ece",
    "front",
    "json_number",
    "min_budget_for_quality",
    "normalised_auc",
    "oracle_gap_closed",
    "pgr_curve",
    "quality_at_budget",
    "summary",
]

CPT_PERCENTS = (50, 80, 95)
Numbers = Sequence[float] | np.ndarray  # a figure per operating point: a list, or a row of resampled means


def json_number(x: Any) -> float | None:
    """``x`` rounded to 6 places for a JSON report, or None where it is missing or not finite."""
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def front(cost: Numbers, quality: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """The upper-left Pareto front: points sorted by cost, each strictly better than all cheaper ones."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float)
    keep = np.isfinite(c) & np.isfinite(q)
    c, q = c[keep], q[keep]
    order = np.lexsort((-q, c))  # by cost, then best quality first
    c, q = c[order], q[order]
    # a point is on the front when it beats every cheaper one (and, of equal costs, only the first can)
    before = np.maximum.accumulate(np.concatenate([[-np.inf], q[:-1]])) if len(q) else q
    keep = q > before
    return c[keep], q[keep]


def quality_at_budget(cost: Numbers, quality: Numbers, budget: float) -> float:
    """Quality reachable at ``budget`` (linear on the front, flat after it, NaN below its first point)."""
    xs, ys = front(cost, quality)
    if len(xs) == 0 or budget < xs[0]:
        return float("nan")
    return float(np.interp(budget, xs, ys))


def min_budget_for_quality(cost: Numbers, quality: Numbers, target: float) -> float:
    """The smallest budget whose quality reaches ``target`` (linear on the front); NaN if never."""
    xs, ys = front(cost, quality)
    if len(xs) == 0 or ys[-1] < target:
        return float("nan")
    j = int(np.argmax(ys >= target))
    if j == 0:
        return float(xs[0])
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def normalised_auc(cost: Numbers, quality: Numbers, x_lo: float, x_hi: float, oracle_quality: float) -> float:
    """Area under the front over ``[x_lo, x_hi]`` divided by the oracle's (``oracle_quality`` * width)."""
    if not x_hi > x_lo or not oracle_quality > 0:
        return float("nan")
    xs, ys = front(cost, quality)
    if len(xs) == 0:
        return 0.0
    grid = np.linspace(x_lo, x_hi, 2001)
    curve = np.where(grid >= xs[0], np.interp(grid, xs, ys), 0.0)
    return float(np.trapezoid(curve, grid) / ((x_hi - x_lo) * oracle_quality))


def pgr_curve(
    strong_fraction: Numbers, quality: Numbers, q_weak: float, q_strong: float, n: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """PGR on a grid of strong-call fractions in [0, 1], from the front with both endpoints added."""
    fractions = [*strong_fraction, 0.0, 1.0]
    qualities = [*quality, q_weak, q_strong]
    xs, ys = front(fractions, qualities)
    grid = np.linspace(0.0, 1.0, n)
    gap = q_strong - q_weak
    if gap == 0:
        return grid, np.ones_like(grid)
    return grid, (np.interp(grid, xs, ys) - q_weak) / gap


def apgr(strong_fraction: Numbers, quality: Numbers, q_weak: float, q_strong: float) -> float:
    """Average performance gap recovered: the integral of PGR over the strong-call fraction."""
    grid, pgr = pgr_curve(strong_fraction, quality, q_weak, q_strong)
    return float(np.trapezoid(pgr, grid))


def cpt(strong_fraction: Numbers, quality: Numbers, q_weak: float, q_strong: float, percent: float) -> float:
    """Smallest fraction of calls to the strong model (in %) whose PGR reaches ``percent`` %."""
    return _cpt_on(*pgr_curve(strong_fraction, quality, q_weak, q_strong), percent)


def _cpt_on(grid: np.ndarray, pgr: np.ndarray, percent: float) -> float:
    reached = pgr >= percent / 100.0 - 1e-12
    return float(100.0 * grid[np.argmax(reached)]) if reached.any() else float("nan")


def oracle_gap_closed(quality: float, best_single: float, oracle: float) -> float:
    """Share of the gap between the best single expert and the oracle that ``quality`` closes."""
    gap = oracle - best_single
    return float((quality - best_single) / gap) if gap > 0 else float("nan")


def summary(
    fronts: Mapping[str, tuple[Numbers, Numbers]],
    x_range: Mapping[str, tuple[float, float]],
    q_at: float,
    q_best: float,
    q_oracle: float,
    two_expert: tuple[Numbers, Numbers, float, float] | None = None,
) -> dict[str, float]:
    """A router's summary figures: ``auc_<axis>`` for each axis of ``fronts`` (its points' costs and
    qualities on it) over that axis's ``x_range``, ``oracle_gap_closed`` of ``q_at`` (the front's quality at
    the best single expert's cost), and with ``two_expert`` (every point's strong fraction, its quality,
    q_weak, q_strong) ``apgr`` and ``cpt50``/``cpt80``/``cpt95``; NaN where one is undefined."""
    out = {f"auc_{axis}": normalised_auc(c, q, *x_range[axis], q_oracle) for axis, (c, q) in fronts.items()}
    out["oracle_gap_closed"] = oracle_gap_closed(q_at, q_best, q_oracle)
    if two_expert is not None:
        grid, pgr = pgr_curve(*two_expert)  # once for APGR and every CPT
        out["apgr"] = float(np.trapezoid(pgr, grid))
        out.update({f"cpt{pct}": _cpt_on(grid, pgr, pct) for pct in CPT_PERCENTS})
    return out


def category_accuracy(predicted: Sequence[str], true: Sequence[str]) -> float:
    """Fraction of prompts whose predicted category is their labelled one."""
    if len(true) == 0:
        return float("nan")
    return float(np.mean([p == t for p, t in zip(predicted, true, strict=True)]))


def ece(proba: np.ndarray, y_int: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class probability (from ``coserve.router.calibrate``)."""
    from coserve.router.calibrate import expected_calibration_error

    return float(expected_calibration_error(proba, y_int, n_bins=n_bins))
