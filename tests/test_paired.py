"""The paired comparison of two settings' runs (``coserve.bench.paired``), on small made-up runs: a clear
difference gives an interval that excludes 0, none gives one that includes it, and runs are paired by key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from coserve.bench.paired import checks_of, compare, paired_differences

Run = dict[str, Any]


def run(seed: int, gap: float, recovery: int = 1500, split: str = "a", tracking: float = 0.01) -> Run:
    """A run meeting tracking, static and recovery; hindsight where ``gap`` >= -0.01."""
    return {"split": split, "axis": "params", "target": 15.0, "seed": seed, "tracking_error_max": tracking,
            "adaptive_minus_static": 0.02, "adaptive_minus_hindsight": gap, "recovery_requests": recovery}  # fmt: skip


def noisy_gaps(n: int, seed: int, centre: float) -> list[float]:
    return list(np.random.default_rng(seed).normal(centre, 0.003, n))


def test_the_checks_are_the_issues_four_bounds() -> None:
    assert checks_of(run(0, -0.01)) == {"tracking": True, "static": True, "hindsight": True, "recovery": True}
    met = checks_of(run(0, -0.0101, recovery=2001, tracking=0.0201))
    assert met == {"tracking": False, "static": True, "hindsight": False, "recovery": False}


def test_a_clear_difference_gives_an_interval_that_excludes_zero() -> None:
    """The candidate meets hindsight in every run, the reference in none: +1 check per run, and its gap is
    0.005 higher with noise; both intervals lie above 0."""
    n = 40
    reference = [run(s, g) for s, g in enumerate(noisy_gaps(n, 1, -0.02))]
    candidate = [run(s, g + 0.015) for s, g in enumerate(noisy_gaps(n, 2, -0.005))]
    c = compare(candidate, reference, resamples=2000, seed=0)
    assert c["checks_met"]["mean"] == 1.0
    assert c["checks_met"]["low"] > 0 and c["check_hindsight"]["low"] > 0
    assert c["adaptive_minus_hindsight"]["low"] > 0
    assert c["recovery_requests"] == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_no_difference_gives_an_interval_that_includes_zero() -> None:
    """Half the runs gain a check and half lose one, and the gaps are the same noise around one centre."""
    n = 40
    gaps = noisy_gaps(n, 3, -0.005)
    reference = [run(s, gaps[s] if s % 2 else -0.02) for s in range(n)]
    candidate = [run(s, -0.02 if s % 2 else gaps[s]) for s in range(n)]
    c = compare(candidate, reference, resamples=2000, seed=0)
    assert c["checks_met"]["low"] < 0 < c["checks_met"]["high"]
    assert c["check_hindsight"]["low"] < 0 < c["check_hindsight"]["high"]


def test_runs_are_paired_by_key_not_by_order() -> None:
    """The candidate's runs in another order give the same differences; a recovery that never came counts
    as the replay's value (the rest of the stream)."""
    reference = [run(s, -0.005, recovery=1000 + s) for s in range(5)]
    candidate = [run(s, -0.004, recovery=6000 if s == 2 else 1000 + s) for s in reversed(range(5))]
    d = paired_differences(candidate, reference)
    assert list(d["recovery_requests"]) == [0, 0, 4998, 0, 0]
    assert list(d["check_recovery"]) == [0, 0, -1, 0, 0]
    assert np.allclose(d["adaptive_minus_hindsight"], 0.001)


def test_the_same_seed_gives_the_same_interval() -> None:
    reference = [run(s, g) for s, g in enumerate(noisy_gaps(30, 4, -0.01))]
    candidate = [run(s, g) for s, g in enumerate(noisy_gaps(30, 5, -0.01))]
    assert compare(candidate, reference, 500, seed=7) == compare(candidate, reference, 500, seed=7)


@pytest.mark.parametrize(
    "candidate",
    [
        [run(0, 0.0), run(1, 0.0)],  # a run the reference lacks
        [run(0, 0.0), run(0, 0.0), run(1, 0.0, split="b")],  # one key twice
    ],
)
def test_runs_that_do_not_pair_are_refused(candidate: list[Run]) -> None:
    reference = [run(0, 0.0), run(1, 0.0, split="b"), run(2, 0.0)]
    with pytest.raises(ValueError, match="paired comparison"):
        paired_differences(candidate, reference)
