"""Intervals on ``coserve eval``'s summary figures (AUCs, oracle_gap_closed, APGR, CPT) from the resamples the
point intervals draw, each router's paired difference from a reference router, and their CLI and CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_harness import FAST, write_separable
from test_train_cli import argv

from coserve.bootstrap import RESAMPLES, SEED
from coserve.cli import main
from coserve.errors import ConfigError
from coserve.eval import metrics as M
from coserve.eval.data import ExpertCosts, load_costs, load_outcomes
from coserve.eval.harness import _router_metrics, baselines, evaluate
from coserve.eval.intervals import add_intervals
from coserve.eval.metrics import json_number
from coserve.router.embed import HashingEmbedder

EXPERTS = ["small", "mid", "big"]
COSTS = ExpertCosts(tuple(EXPERTS), np.array([1.0, 5.0, 10.0]), np.array([0.1, 0.5, 2.0]), "test")
NEW_KEYS = {"summary_intervals_95", "summary_undefined_resamples", "difference_from_reference"}


def _router(Y: np.ndarray, choices: list[tuple[str, np.ndarray]], costs: ExpertCosts, strong: int | None = None):
    """A router's points (one per (axis, choice)), its metrics as the harness computes them, and their
    intervals; returns (metrics, the summary figures in each resample)."""
    experts, rows = list(costs.names), np.arange(len(Y))
    base = baselines(Y, experts, costs, costs.params_b)
    points = []
    for axis, c in choices:
        point = {"axis": axis, "quality": json_number(Y[rows, c].mean()),
                 "avg_params_b": json_number(costs.params_b[c].mean()),
                 "avg_price": json_number(costs.price[c].mean())}  # fmt: skip
        if strong is not None:
            point["strong_fraction"] = json_number((c == strong).mean())
        points.append(point)
    x_range = {"params": (float(costs.params_b.min()), float(costs.params_b.max())),
               "price": (float(costs.price.min()), float(costs.price.max()))}  # fmt: skip
    metrics = _router_metrics(points, base, experts, "params", x_range, strong)
    resampled = add_intervals(points, [c for _, c in choices], metrics, Y, costs, base, experts, "params")
    return metrics, resampled


def _mixed(n: int, seed: int = 1) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [("params", rng.integers(0, 3, n)), ("params", np.where(rng.random(n) < 0.5, 1, 2)),
            ("params", np.full(n, 0)), ("price", np.where(rng.random(n) < 0.3, 2, 0))]  # fmt: skip


def test_summary_intervals_are_the_figures_recomputed_on_each_resample_of_the_prompts() -> None:
    n = 300  # few enough items that the bootstrap draws all its resamples at once, as the naive gather does
    Y = (np.random.default_rng(0).random((n, 3)) < np.array([0.5, 0.6, 0.75])).astype(float)
    choices = _mixed(n)
    metrics, resampled = _router(Y, choices, COSTS)
    assert set(resampled) == set(metrics["summary_intervals_95"]) == {"auc_params", "auc_price", "oracle_gap_closed"}
    for figure, (low, high) in metrics["summary_intervals_95"].items():
        assert low <= metrics[figure] <= high and low < high
        assert metrics["summary_undefined_resamples"][figure] == 0
    draws = np.random.default_rng(SEED).integers(0, n, size=(RESAMPLES, n))
    for r in (0, 1, 777, RESAMPLES - 1):  # one resample moves every point, the best single expert and the oracle
        y, take = Y[draws[r]], draws[r]
        quality = [round(Y[take, c[take]].mean(), 6) for _, c in choices]  # at the report's 6 places
        cost = [round((COSTS.params_b if a == "params" else COSTS.price)[c[take]].mean(), 6) for a, c in choices]
        on = {a: [j for j, (b, _) in enumerate(choices) if b == a] for a in ("params", "price")}
        q_at = M.quality_at_budget([cost[j] for j in on["params"]], [quality[j] for j in on["params"]], 10.0)
        fronts = {a: ([cost[j] for j in on[a]], [quality[j] for j in on[a]]) for a in on}
        best, oracle = round(y[:, 2].mean(), 6), round(y.max(1).mean(), 6)
        naive = M.summary(fronts, {"params": (1.0, 10.0), "price": (0.1, 2.0)}, q_at, best, oracle)
        assert {k: resampled[k][r] for k in naive} == pytest.approx(naive, abs=1e-12)


def test_zero_width_where_every_expert_scores_the_same_on_every_prompt() -> None:
    n = 200
    same = (np.random.default_rng(2).random(n) < 0.6).astype(float)
    costs = ExpertCosts(("weak", "strong"), np.array([1.0, 10.0]), np.array([0.1, 2.0]), "test")
    Y = np.column_stack([same, same])
    choices = [("params", np.full(n, 0)), ("params", np.full(n, 1)), ("price", np.full(n, 0))]
    metrics, _ = _router(Y, choices, costs, strong=0)  # a tie: the first expert is the "strong" one
    ends = metrics["summary_intervals_95"]
    # the front is one point at the cheapest cost, at the oracle's quality in every resample: AUC 1
    assert metrics["auc_params"] == metrics["auc_price"] == 1.0 and ends["auc_params"] == ends["auc_price"] == [1, 1]
    assert metrics["apgr"] == 1.0 and ends["apgr"] == [1.0, 1.0]  # no gap to recover: PGR is 1 everywhere
    assert ends["cpt50"] == ends["cpt95"] == [0.0, 0.0]
    # no gap between the best single expert and the oracle, in any resample: undefined, and counted
    assert metrics["oracle_gap_closed"] is None and ends["oracle_gap_closed"] == [None, None]
    assert metrics["summary_undefined_resamples"]["oracle_gap_closed"] == RESAMPLES


@pytest.fixture(scope="module")
def separable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("separable")
    data, experts = write_separable(folder, n=90)
    return data, experts, folder


def _evaluate(separable: tuple[Path, Path, Path], experts: list[str] | None = None, **options) -> dict:
    data, costs, folder = separable
    outcomes, _ = load_outcomes(data, experts=experts)
    return evaluate(outcomes, None, load_costs(costs), folds=3, seed=0, embedder=HashingEmbedder(), cache=folder,
                    routers=FAST, **options)  # fmt: skip


def test_two_expert_figures_get_intervals_on_two_expert_data_only(separable: tuple[Path, Path, Path]) -> None:
    two, three = _evaluate(separable, ["small", "big"]), _evaluate(separable)
    routellm = {"apgr", "cpt50", "cpt80", "cpt95"}
    for name, entry in two["routers"].items():
        m = entry["metrics"]
        assert set(m["summary_intervals_95"]) == {"auc_params", "auc_price", "oracle_gap_closed", *routellm}
        for figure, (low, high) in m["summary_intervals_95"].items():
            assert low <= m[figure] <= high, (name, figure)
        assert routellm <= set(m["difference_from_reference"]["figures"])
    for entry in three["routers"].values():
        assert not routellm & set(entry["metrics"]["summary_intervals_95"])
        assert not routellm & set(entry["metrics"]["difference_from_reference"]["figures"])


def test_differences_from_the_reference_router(separable: tuple[Path, Path, Path]) -> None:
    report = _evaluate(separable)
    routers = report["routers"]
    best = max(routers, key=lambda n: routers[n]["metrics"]["auc_params"])  # the default reference: best AUC
    assert report["meta"]["reference"] == best == "map-logistic"
    for figure, d in routers[best]["metrics"]["difference_from_reference"]["figures"].items():
        assert d == {"difference": 0.0, "interval_95": [0.0, 0.0], "undefined_resamples": 0}, figure
    # the fallback router gives up a share of the oracle's gap in every resample (60 of 90 prompts separable)
    fallback = routers["map-logistic+fallback"]["metrics"]["difference_from_reference"]
    assert fallback["router"] == best
    gap = fallback["figures"]["oracle_gap_closed"]
    assert gap["interval_95"][0] <= gap["difference"] <= gap["interval_95"][1] < 0
    named = _evaluate(separable, reference="top2")
    assert named["meta"]["reference"] == "top2"
    d = named["routers"]["map-logistic"]["metrics"]["difference_from_reference"]["figures"]["auc_params"]
    assert d["difference"] == pytest.approx(routers["map-logistic"]["metrics"]["auc_params"]
                                            - routers["top2"]["metrics"]["auc_params"])  # fmt: skip
    assert d["interval_95"][0] <= d["difference"] <= d["interval_95"][1]
    with pytest.raises(ConfigError, match="nosuch: not a router evaluated"):
        _evaluate(separable, reference="nosuch")
    with pytest.raises(ConfigError, match="top2: the differences come with the intervals; evaluate with intervals"):
        _evaluate(separable, reference="top2", intervals=False)


def test_the_existing_figures_are_those_without_intervals(separable: tuple[Path, Path, Path]) -> None:
    with_them, without = _evaluate(separable), _evaluate(separable, intervals=False)
    assert "reference" not in without["meta"]
    for name, entry in without["routers"].items():
        assert not NEW_KEYS & set(entry["metrics"])
        kept = {k: v for k, v in with_them["routers"][name]["metrics"].items() if k in entry["metrics"]}
        assert kept == entry["metrics"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_cli_prints_and_writes_them_and_refuses_an_unknown_reference(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, experts = write_separable(tmp_path)
    out, tables = tmp_path / "r.json", tmp_path / "csv"
    args = argv("eval", data, experts, "--folds", "3", "--routers", "map-logistic,prompt-knn,top2", "--json", str(out))
    assert main([*args, "--reference", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err == "coserve: error: --reference nosuch: not a router evaluated; one of map-logistic, prompt-knn, top2\n"
    assert not out.exists()
    assert main([*args, "--reference", "top2", "--no-intervals"]) == 2 and "leave out --no-intervals" in (
        capsys.readouterr().err
    )
    assert main([*args, "--reference", "top2", "--csv", str(tables)]) == 0
    printed = capsys.readouterr().out
    assert "ref: top2" in printed and "auc_params [95%]" in printed
    report = json.loads(out.read_text())
    rows = _rows(tables / "eval-summary.csv")
    assert len(rows) == 3 * 3  # three routers, three figures each (three experts: no APGR)
    for row in rows:
        m = report["routers"][row["router"]]["metrics"]
        d = m["difference_from_reference"]["figures"][row["figure"]]
        assert float(row["value"]) == m[row["figure"]] and row["reference"] == "top2"
        assert [float(row["interval_low"]), float(row["interval_high"])] == m["summary_intervals_95"][row["figure"]]
        assert [float(row["difference"]), float(row["difference_low"]), float(row["difference_high"])] == [
            d["difference"], *d["interval_95"]
        ]  # fmt: skip
    assert main([*args, "--csv", str(tables), "--no-intervals"]) == 0
    assert "summary figures" not in capsys.readouterr().out
    plain = json.loads(out.read_text())
    assert "reference" not in plain["meta"] and not any(NEW_KEYS & set(e["metrics"]) for e in plain["routers"].values())
    rows = _rows(tables / "eval-summary.csv")
    assert len(rows) == 9 and {(r["interval_low"], r["reference"], r["difference"]) for r in rows} == {("", "", "")}
