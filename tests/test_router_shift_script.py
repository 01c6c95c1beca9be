"""``scripts/router_shift.py`` (docs/eval.md, "Session 11"): balanced weights by hand, the weighted ridge
against RidgeRegressor, and every candidate on separable data re-scored under shifted mixes."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from script_module import load_script, separable_inputs

from coserve.eval import shift
from coserve.eval.data import grouped_folds
from coserve.router.predict import RidgeRegressor


@pytest.fixture(scope="module")
def study() -> ModuleType:
    return load_script("router_shift")


def test_balance_weights_by_hand(study: ModuleType) -> None:
    # power 1: 1/3, 1/3, 1/3, 1 (sum 2), scaled to mean 1: x 4/2
    np.testing.assert_allclose(study.balance_weights(["a", "a", "a", "b"], 1.0), [2 / 3, 2 / 3, 2 / 3, 2.0])
    np.testing.assert_allclose(study.balance_weights(["a", "a", "a", "b"], 0.0), [1.0] * 4)


def test_weighted_ridge_is_the_ridge_with_unit_weights_and_duplicates_with_weight_two(study: ModuleType) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    Y = rng.uniform(size=(40, 3))
    Y[3, 1] = np.nan  # a missing cell: both fill it with the expert's mean
    Z = rng.normal(size=(7, 5))
    expected = RidgeRegressor(2.0).fit(X, Y).predict(Z)
    np.testing.assert_allclose(study.weighted_ridge(X, Y, np.ones(40), 2.0)(Z), expected, atol=1e-5)
    full = Y[:, [0, 2]]  # no missing cells: a weight of 2 is the row written twice
    w = np.ones(40)
    w[:10] = 2.0
    twice = RidgeRegressor(2.0).fit(np.vstack([X, X[:10]]), np.vstack([full, full[:10]])).predict(Z)
    np.testing.assert_allclose(study.weighted_ridge(X, full, w, 2.0)(Z), twice, atol=1e-5)


def test_candidates_under_shifted_mixes_on_separable_data(
    study: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes, cost, X = separable_inputs(tmp_path)
    names = ["stack", "stack-bal", "stack-bal-clf", "stack+table", "stack-xpca16x3"]
    monkeypatch.setattr(study, "XPCA_NAMES", ["stack-xpca16x3"])
    splits = grouped_folds(outcomes.prompts, 3, 0)
    pooled, _ = study.RD.pooled_choices(X, outcomes, splits, cost, names, 256, 0, study.candidates)
    monkeypatch.setattr(study, "TILTS", (("code x3", ("code",), 3.0),))
    monkeypatch.setattr(study, "DIRICHLET", (("d", 5.0, 20, 1),))
    rows = np.concatenate([te for _, te in splits])
    scored = outcomes.subset(rows)
    choices = {c: {k: v[rows] for k, v in by.items()} for c, by in pooled.items()}
    result = study.evaluate(scored.scores, scored.categories, cost, choices, {"chat": 0.5, "code": 0.5})
    # every prompt to its perfect expert: 1.0 within both budgets; the best single expert at a mix with
    # chat share c is the best of small (c), mid (0.6) and big (1 - c / 2): 0.75 at the plain half-half
    # mix, 0.875 with code weighed up three times (chat 0.25)
    for name in names:
        plain, tilted = result[name]["plain"], result[name]["code x3"]
        assert plain["front_at_10.2"] == 1.0 and plain["margin_at_10.2"] == 0.25, name
        assert plain["margin_at_51"] == 0.25 and plain["margin_same_at_10.2"] == 0.25, name
        assert plain["inner_at_10.2"] == 1.0 and plain["inner_spend_at_10.2"] == 5.5, name
        # against big (the best single): 0 on code, 1 - 0.5 on chat, half the rows each: sd of 30 zeros
        # and 30 halves (ddof 1) = 0.25 * sqrt(60 / 59)
        assert plain["diff_sd_at_10.2"] == pytest.approx(0.25 * np.sqrt(60 / 59), abs=1e-4), name
        assert plain["diff_se500_at_10.2"] == pytest.approx(0.25 * np.sqrt(60 / 59) / np.sqrt(500), abs=1e-4)
        assert tilted["margin_at_10.2"] == 0.125 and tilted["inner_spend_at_10.2"] == 0.25 + 0.75 * 10, name
        mixes = shift.dirichlet_mixes({"chat": 0.5, "code": 0.5}, 5.0, 20, 1)
        margins = [1 - max(q["chat"], 0.6, 1 - q["chat"] / 2) for q in mixes]
        assert result[name]["d"]["margin_at_51"]["mean"] == pytest.approx(np.mean(margins), abs=1e-4), name
        assert result[name]["d"]["draws"]["front_at_10.2"] == [1.0] * 20
        if name != "stack":
            assert result[name]["d"]["vs_stack"]["front_at_10.2"]["worst"] == 0.0
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"shift": result}))
    assert study.paired(f"{path}:stack", f"{path}:stack-bal")["d"]["front_at_51"]["mean"] == 0.0


def test_weighted_lambda_is_lambda_for_budget_with_even_weights_and_follows_the_weights(study: ModuleType) -> None:
    from coserve.router.mapping import choose_per_prompt, lambda_for_budget

    rng = np.random.default_rng(1)
    scores = rng.uniform(size=(50, 3))
    cost = np.array([1.0, 5.0, 10.0])
    even = np.full(50, 1 / 50)
    for budget in (2.0, 4.0, 7.0):
        assert study.weighted_lambda(scores, cost, even, budget) == pytest.approx(
            lambda_for_budget(scores, cost, budget), abs=1e-9
        )
    # all weight on rows 0-9: the budget holds on those rows alone
    w = np.zeros(50)
    w[:10] = 0.1
    lam = study.weighted_lambda(scores, cost, w, 3.0)
    assert cost[choose_per_prompt(scores[:10], cost, lam)].mean() <= 3.0
    assert lam == pytest.approx(lambda_for_budget(scores[:10], cost, 3.0), abs=1e-9)


def test_explain_finds_the_least_margin_by_linear_programming(study: ModuleType) -> None:
    def report(spend_b: float) -> dict:
        row = {"n": 50, "router_params_b": 8.0}
        by = {
            "a": {**row, "router": 0.8, "experts": [0.0, 0.6]},  # router 0.2 above the 51 B expert
            "b": {**row, "router": 0.4, "router_params_b": spend_b, "experts": [0.0, 0.6]},  # 0.2 below
        }
        return {
            "candidates": {"stack": {"by_category_at_10.2": by}},
            "experts": ["small", "big"],
            "baselines": {"best_single_at_51": {"expert": "big"}},
        }

    # half-half, shares within x/1.5: the least margin puts b at 2/3: 0.2 / 3 - 0.2 * 2 / 3
    out = study.explain(report(8.0), 0.6, [1.5])
    assert out["plain"] == {"router": 0.6, "expert": 0.6}
    assert out["F1.5_free"]["least_margin"] == pytest.approx(-0.0667, abs=1e-4)
    assert out["F1.5_at_reference"]["mix"] == pytest.approx({"a": 1 / 3, "b": 2 / 3}, abs=1e-4)
    assert study.explain(report(8.0), 0.7, [1.5])["F1.5_at_reference"] is None  # the expert is 0.6 at any mix
    # b costs 20 B a prompt: the 10.2 B budget holds b to 2.2 / 12 of the mix (x/4 allows 1/8 to 1)
    capped = study.explain(report(20.0), 0.6, [4.0])["F4_free"]
    assert capped["least_margin"] == pytest.approx(0.2 * (1 - 2.2 / 12) - 0.2 * 2.2 / 12, abs=1e-4)
    assert capped["router_params_b"] == pytest.approx(10.2, abs=0.01)


def test_the_table_of_the_docs_glob_leaves_out_the_explain_file(
    study: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/eval.md runs --table on docs/data/router-shift-s11-*.json, which also matches the --explain file
    plain = {"front_at_10.2": 0.6, "margin_at_10.2": 0.01, "front_at_51": 0.65, "margin_at_51": 0.05}
    report, explained = tmp_path / "s11-a.json", tmp_path / "s11-explain.json"
    report.write_text(json.dumps({"shift": {"stack": {"plain": plain}}}))
    explained.write_text(json.dumps({"categories": ["code"], "plain": {"router": 0.6, "expert": 0.6}}))
    study.print_table([str(report), str(explained)])
    out, err = capsys.readouterr()
    assert out.splitlines()[2:] == ["| s11-a | stack | plain | 0.6000 | 0.0100 | 0.6500 | 0.0500 | - |"]
    assert err == f"{explained}: not a shift report (no 'shift'), left out\n"


def test_paired_names_an_unknown_candidate(study: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"shift": {"stack": {}, "hybrid": {}}}))
    with pytest.raises(SystemExit, match=rf"^{path}: no candidate 'nope' \(has: stack, hybrid\)$"):
        study.paired(f"{path}:stack", f"{path}:nope")


def test_the_names_checked_before_any_work_are_the_candidates(study: ModuleType) -> None:
    probe = SimpleNamespace(f=SimpleNamespace(X=np.zeros((2, 4)), X_test=np.zeros((1, 4))), stacked=None)
    assert sorted(study.candidates(probe, 2, np.zeros((2, 1)))) == sorted(study.NAMED)  # stack-xpca: none asked
    assert study.RD.unknown_candidates(
        ["stack-xpca8x0.5", "stack-bal", "stack-xpca8", "x"], study.NAMED, study.XPCA.pattern
    ) == [
        "stack-xpca8",
        "x",
    ]
