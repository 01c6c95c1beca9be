"""Routing quality under a shifted category mix: scored rows re-weighted to follow another mix.

A router scored on rows whose categories follow one mix (the training file's, say) is re-scored as if
its traffic followed mix ``q``: each row of category ``k`` weighs ``q[k] / n_k`` (``n_k`` rows of ``k``),
and every mean (quality, average cost) becomes that weighted mean. Within a category nothing moves:
this models a shift of the categories' shares (label shift), not prompts of a new kind. Per mix:
the router's quality at each budget on the Pareto front of its operating points (re-weighted, then
interpolated as ``metrics.quality_at_budget`` does), and the best single expert within each budget at
the same mix (chosen again per mix), so a margin compares the two on the same traffic. The mixes:
seeded Dirichlet draws around a base mix, and tilts that weigh a set of categories up by a factor.
Pure numbers; this module knows nothing about routers, embeddings, files or which mix is "real".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coserve.eval.metrics import quality_at_budget

__all__ = [
    "MixScore",
    "best_single",
    "dirichlet_mixes",
    "observed_mix",
    "row_weights",
    "score_mix",
    "spread",
    "tilted_mix",
    "weighted_cost",
    "weighted_quality",
]

Mix = dict[str, float]  # category -> share, summing to 1


def observed_mix(categories: Sequence[str]) -> Mix:
    """Each category's share of the rows (sorted by name)."""
    names, counts = np.unique(np.asarray(categories, dtype=str), return_counts=True)
    return {str(k): float(c) / len(categories) for k, c in zip(names, counts, strict=True)}


def row_weights(categories: Sequence[str], mix: Mapping[str, float]) -> np.ndarray:
    """Per-row weight ``mix[k] / n_k`` (normalised to sum 1); a category missing from ``mix`` weighs 0."""
    cats = np.asarray(categories, dtype=str)
    total = float(sum(mix.values()))
    if any(v < 0 for v in mix.values()) or not total > 0:
        raise ValueError("a mix needs non-negative shares with a positive sum")
    weights = np.zeros(len(cats))
    for k, share in mix.items():
        rows = cats == k
        if share > 0 and not rows.any():
            raise ValueError(f"the mix gives category {k!r} a share but no row has it")
        if rows.any():
            weights[rows] = share / total / rows.sum()
    return weights / weights.sum()


def dirichlet_mixes(base: Mapping[str, float], concentration: float, n: int, seed: int) -> list[Mix]:
    """``n`` mixes drawn from Dirichlet(``concentration * base``): mean ``base``; a smaller
    ``concentration`` spreads them further (each share's variance is ``b (1 - b) / (concentration + 1)``)."""
    names = sorted(base)
    total = sum(base[k] for k in names)
    alpha = np.array([concentration * base[k] / total for k in names])
    draws = np.random.default_rng(seed).dirichlet(alpha, size=n)
    return [{k: float(x) for k, x in zip(names, row, strict=True)} for row in draws]


def tilted_mix(base: Mapping[str, float], up: Sequence[str], factor: float) -> Mix:
    """``base`` with the shares of ``up`` multiplied by ``factor``, renormalised."""
    unknown = sorted(set(up) - set(base))
    if unknown:
        raise ValueError(f"categories not in the base mix: {unknown}")
    raw = {k: v * (factor if k in up else 1.0) for k, v in base.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def weighted_quality(Y: np.ndarray, choice: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean score of the chosen experts (rows whose chosen score is missing are left out)."""
    picked = Y[np.arange(len(choice)), choice]
    seen = np.isfinite(picked)
    return float(np.sum(weights[seen] * picked[seen]) / np.sum(weights[seen]))


def weighted_cost(cost: np.ndarray, choice: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean cost of the chosen experts."""
    return float(np.sum(weights * cost[choice]) / np.sum(weights))


def best_single(Y: np.ndarray, cost: np.ndarray, weights: np.ndarray, budget: float) -> tuple[int, float]:
    """The expert within ``budget`` with the best weighted mean score (ties to the cheaper), and that score."""
    seen = np.isfinite(Y)
    means = (np.where(seen, Y, 0.0) * weights[:, None]).sum(axis=0) / (seen * weights[:, None]).sum(axis=0)
    within = np.flatnonzero(cost <= budget)
    if not len(within):
        raise ValueError(f"no expert costs at most {budget:g}")
    best = within[np.lexsort((cost[within], -means[within]))[0]]
    return int(best), float(means[best])


@dataclass(frozen=True)
class MixScore:
    """One router on one mix."""

    router: dict[float, float]  # budget -> quality on the re-weighted front (NaN below its cheapest point)
    single: dict[float, tuple[int, float]]  # budget -> (best single expert within it, its quality)


def score_mix(
    Y: np.ndarray, cost: np.ndarray, choices: Sequence[np.ndarray], weights: np.ndarray, budgets: Sequence[float]
) -> MixScore:
    """The router's operating points ``choices`` (expert per row, one array a point) at ``weights``."""
    xs = [weighted_cost(cost, c, weights) for c in choices]
    qs = [weighted_quality(Y, c, weights) for c in choices]
    return MixScore(
        router={float(b): quality_at_budget(xs, qs, float(b)) for b in budgets},
        single={float(b): best_single(Y, cost, weights, float(b)) for b in budgets},
    )


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, worst decile (the 10th percentile, linear interpolation), worst (least) and most of ``values``."""
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "worst_decile": float(np.percentile(v, 10)),
        "worst": float(v.min()),
        "max": float(v.max()),
    }
