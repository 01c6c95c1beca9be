"""Paired comparison of two settings of `coserve bench adapt` over the same runs, with bootstrap intervals.

A tuning run is keyed by its split, budget and seed; two settings replayed on the same keys see the same
stream, mix and feedback noise, so their per-run differences cancel what the runs share. The interval of
a mean difference comes from resampling runs as pairs (both settings' figures of a run together), with a
seeded generator so that a file's intervals can be reproduced. This module knows nothing about how a run
is replayed: a run is a dict with the figures ``adapt_tune.run_record`` writes, plus its ``split``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from coserve.bootstrap import interval, resample_means

__all__ = [
    "CHECKS",
    "FIGURES",
    "bootstrap_means",
    "checks_of",
    "compare",
    "interval",
    "paired_differences",
    "run_key",
]

Run = dict[str, Any]

# The four checks per run: the figure, its bound, and whether the figure must stay at or below it.
CHECKS: dict[str, tuple[str, float, bool]] = {
    "tracking": ("tracking_error_max", 0.02, True),
    "static": ("adaptive_minus_static", 0.01, False),
    "hindsight": ("adaptive_minus_hindsight", -0.01, False),
    "recovery": ("recovery_requests", 2000.0, True),
}
# The figures compared run by run (recovery never reached counts as the rest of the stream: the replay's value).
FIGURES = ("checks_met", "adaptive_minus_hindsight", "adaptive_minus_static", "recovery_requests", "tracking_error_max")


def checks_of(run: Run) -> dict[str, bool]:
    """Which of the issue's four checks ``run`` meets."""
    return {
        name: (run[figure] <= bound) if at_most else (run[figure] >= bound)
        for name, (figure, bound, at_most) in CHECKS.items()
    }


def run_key(run: Run) -> tuple[str, str, float, int]:
    """The run's identity: split, budget axis, target, seed."""
    return str(run["split"]), str(run["axis"]), float(run["target"]), int(run["seed"])


def paired_differences(candidate: Sequence[Run], reference: Sequence[Run]) -> dict[str, np.ndarray]:
    """Per figure (FIGURES and each check), candidate - reference run by run, in the reference's order.
    Raises ValueError unless both hold exactly the same runs (keys), each once."""
    by_key = {run_key(run): run for run in candidate}
    keys = [run_key(run) for run in reference]
    if len(by_key) != len(candidate) or len(set(keys)) != len(keys):
        raise ValueError("paired comparison: a run key appears twice")
    if set(by_key) != set(keys):
        missing = sorted(set(keys) ^ set(by_key))[:3]
        raise ValueError(f"paired comparison: the settings' runs differ (e.g. {missing})")
    pairs = [(by_key[key], ref) for key, ref in zip(keys, reference, strict=True)]
    out: dict[str, np.ndarray] = {}
    for figure in FIGURES:
        values: list[float]
        if figure == "checks_met":
            values = [float(sum(checks_of(c).values()) - sum(checks_of(r).values())) for c, r in pairs]
        else:
            values = [float(c[figure]) - float(r[figure]) for c, r in pairs]
        out[figure] = np.asarray(values, dtype=float)
    for name in CHECKS:
        out[f"check_{name}"] = np.asarray([int(checks_of(c)[name]) - int(checks_of(r)[name]) for c, r in pairs], float)
    return out


def bootstrap_means(differences: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Per figure, the mean difference over each of ``resamples`` resamples of the runs; one draw of run
    indices serves every figure, so a run's figures stay together (pairs resampled, not figures)."""
    figures = list(differences)
    means = resample_means(np.column_stack([differences[f] for f in figures]), resamples, seed)
    return {figure: means[:, j] for j, figure in enumerate(figures)}


def compare(
    candidate: Sequence[Run], reference: Sequence[Run], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Per figure: the mean paired difference (candidate - reference) and its bootstrap interval."""
    differences = paired_differences(candidate, reference)
    means = bootstrap_means(differences, resamples, seed)
    result = {}
    for figure, values in differences.items():
        low, high = interval(means[figure], level)
        result[figure] = {"mean": float(values.mean()), "low": low, "high": high}
    return result
