"""``scripts/router_design.py`` (docs/eval.md, "Session 9"): its extra features by hand, its candidates
on separable data (they must find the oracle), and its table printer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from script_module import load_script, separable_inputs

from coserve.eval.data import grouped_folds


@pytest.fixture(scope="module")
def design() -> ModuleType:
    return load_script("router_design")


def test_extra_features_by_hand(design: ModuleType) -> None:
    text = "Q: How many apples? 3 and 4.5\nA: Answer"  # 39 characters, the first line 29
    row = design.extra_features([text])[0]
    expected = [
        math.log1p(2) / 3,  # two numbers: 3 and 4.5
        math.log1p(2) / 2,  # two few-shot markers at line starts: "Q:" and "A:"
        1.0,  # "how many"
        math.log1p(1) / 3,  # one sentence end ("? "); the point of 4.5 is not one
        math.log1p(29) / 6,  # the longest line
        math.log1p(1) / 2,  # one question mark
        0.0,  # no non-ASCII character
        5 * 4 / 39,  # Q, H, A, A upper case
        1.0,  # "answer" near the end
    ]
    np.testing.assert_allclose(row, expected, rtol=1e-6)
    assert design.extra_features([]).shape == (0, 9)


def test_every_candidate_finds_the_oracle_on_separable_data(
    design: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes, cost, X = separable_inputs(tmp_path)
    names = ["stack", "stack-v:cross=3", "stack+knn", "stack-v:oof=1"]
    monkeypatch.setattr(design, "VARIANTS", [n for n in names if n.startswith("stack-v:")])
    result = design.run_folds(X, outcomes, grouped_folds(outcomes.prompts, 3, 0), cost, names, 256, 0)
    # small (1 B) is perfect on chat, big (10 B) on code, half the prompts each: 1.0 at 5.5 B, and
    # both budgets (10.2 B, 51 B) are above the dearest expert
    for name in names:
        assert result[name]["front_at_10.2"] == 1.0 and result[name]["front_at_51"] == 1.0, name
        assert result[name]["inner_lam_at_10.2"] == {"quality": 1.0, "avg_params_b": 5.5}, name
    assert len(result["_extras"]["w_knn"]) == 3  # one blend weight a fold


def test_table_prints_a_row_per_candidate_and_the_best_single(design: ModuleType, tmp_path: Path, capsys) -> None:
    report = {
        "embedder": "e",
        "candidates": {
            "stack": {
                "front_at_10.2": 0.61,
                "front_at_51": 0.65,
                "inner_lam_at_10.2": {"quality": 0.6, "avg_params_b": 10.5},
                "inner_lam_at_51": {"quality": 0.64, "avg_params_b": 43.0},
            },
            "hybrid": {"front_at_10.2": 0.6, "front_at_51": 0.64},
            "_extras": {},
        },
        "baselines": {"best_single_at_10.2": {"quality": 0.55}, "best_single_at_51": {"quality": 0.6}},
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    design.print_table([str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "| r | e | stack | 0.6100 | 0.6500 | 0.6000 (10.50 B) | 0.6400 (43.00 B) |",
        "| r | e | hybrid | 0.6000 | 0.6400 | - | - |",
        "| r | | best single | 0.5500 | 0.6000 | | |",
    ]


def _probe() -> SimpleNamespace:
    """Enough of a fold for ``candidates`` to build its dict of (uncalled) candidates."""
    fold = SimpleNamespace(X=np.zeros((2, 4)), X_test=np.zeros((1, 4)))
    return SimpleNamespace(f=fold, stacked=None)


def test_the_names_checked_before_any_work_are_the_candidates(design: ModuleType) -> None:
    assert sorted(design.candidates(_probe(), 2, np.zeros((2, 1)))) == sorted(design.NAMED)


def test_unknown_candidates(design: ModuleType) -> None:
    assert design.unknown_candidates(["stack", "hgb", "stack-v:cross=3,oof=1", "stack-v:alpha=30"]) == []
    names = ["stack", "nope", "stack-v:depth=3", "stack-v:cross=x", "stack-v:cross"]  # an option, a value, a form
    assert design.unknown_candidates(names) == names[1:]
