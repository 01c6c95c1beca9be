"""The evaluation harness on tiny synthetic outcome data (hashing embedder, no model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coserve.eval.data import load_costs, load_outcomes
from coserve.eval.harness import evaluate
from coserve.router.embed import HashingEmbedder

FAST = ["map-logistic", "map-logistic+fallback", "prompt-knn", "hybrid", "top2"]  # the MLPs are slow to fit
CODE_WORDS = ["python", "function", "compile", "bug", "class", "loop", "java", "rust", "sql", "debug"]
CHAT_WORDS = ["hello", "friend", "weekend", "movie", "joke", "morning", "thanks", "weather", "music", "holiday"]


def write_separable(tmp_path: Path, n: int = 60) -> tuple[Path, Path]:
    """Two clearly separable categories: ``small`` is perfect on chat, ``big`` on code, ``mid`` so-so."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        category = "code" if i % 2 == 0 else "chat"
        words = CODE_WORDS if category == "code" else CHAT_WORDS
        prompt = " ".join(rng.choice(words, size=6)) + f" {i}"
        scores = {"small": 1.0 if category == "chat" else 0.0, "mid": 0.6, "big": 1.0 if category == "code" else 0.5}
        rows.append({"id": f"r{i}", "prompt": prompt, "category": category, "scores": scores})
    data = tmp_path / "outcomes.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    experts = tmp_path / "experts.json"
    experts.write_text(
        json.dumps(
            {
                "small": {"params_b": 1.0, "input_price": 0.1, "output_price": 0.1},
                "mid": {"params_b": 5.0, "input_price": 0.5, "output_price": 0.5},
                "big": {"params_b": 10.0, "input_price": 1.0, "output_price": 3.0},
            }
        )
    )
    return data, experts


@pytest.fixture
def report(tmp_path: Path) -> dict:
    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data)
    return evaluate(
        outcomes, None, load_costs(experts), folds=3, seed=0, embedder=HashingEmbedder(), cache=tmp_path, routers=FAST
    )


def test_report_schema(report: dict) -> None:
    assert set(report) == {"routers", "baselines", "meta"}
    assert {"small", "mid", "big", "random", "oracle"} <= set(report["baselines"])
    for base in report["baselines"].values():
        assert set(base) == {"quality", "avg_params_b", "avg_price"}
    assert "map-logistic" in report["routers"]
    for entry in report["routers"].values():
        assert entry["points"]
        assert {"budget", "quality", "avg_params_b", "avg_price"} <= set(entry["points"][0])
        assert {"auc_params", "quality_at_best_single_budget", "oracle_gap_closed"} <= set(entry["metrics"])
    assert report["meta"]["cost_axes"] == ["params", "price"]
    json.dumps(report)  # serialisable as it is


def test_baselines_on_known_set(report: dict) -> None:
    base = report["baselines"]
    assert base["small"]["quality"] == pytest.approx(0.5)
    assert base["mid"]["quality"] == pytest.approx(0.6)
    assert base["big"]["quality"] == pytest.approx(0.75)
    assert base["random"]["quality"] == pytest.approx((0.5 + 0.6 + 0.75) / 3, abs=1e-6)
    assert base["random"]["avg_params_b"] == pytest.approx(16 / 3)
    # oracle: chat -> small (1.0, 1B), code -> big (1.0, 10B)
    assert base["oracle"]["quality"] == pytest.approx(1.0)
    assert base["oracle"]["avg_params_b"] == pytest.approx(5.5)
    assert base["big"]["avg_price"] == pytest.approx(2.0)


def test_map_router_beats_best_single_at_lower_cost(report: dict) -> None:
    best = report["baselines"]["big"]
    points = [p for p in report["routers"]["map-logistic"]["points"] if p["axis"] == "params"]
    winners = [p for p in points if p["quality"] > best["quality"] and p["avg_params_b"] < best["avg_params_b"]]
    assert winners
    metrics = report["routers"]["map-logistic"]["metrics"]
    assert metrics["category_accuracy"] > 0.9
    assert metrics["quality_at_best_single_budget"] > best["quality"]
    assert metrics["min_budget_ratio_to_best_single"] < 1


def test_two_expert_set_reports_apgr(tmp_path: Path) -> None:
    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data, experts=["small", "big"])
    report = evaluate(
        outcomes, None, load_costs(experts), folds=3, seed=0, embedder=HashingEmbedder(), cache=tmp_path, routers=FAST
    )
    metrics = report["routers"]["map-logistic"]["metrics"]
    assert report["meta"]["strong_expert"] == "big"
    assert metrics["apgr"] > 0.8
    assert {"cpt50", "cpt80", "cpt95"} <= set(metrics)


def test_test_set_mode(tmp_path: Path) -> None:
    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data)
    train, test = outcomes.subset(range(40)), outcomes.subset(range(40, 60))
    report = evaluate(
        train, test, load_costs(experts), seed=3, embedder=HashingEmbedder(), cache=tmp_path, routers=FAST
    )
    assert report["meta"]["mode"] == "test" and report["meta"]["n_eval"] == 20
    assert report["routers"]["map-logistic"]["metrics"]["category_accuracy"] > 0.9


def test_parallel_folds_give_the_same_report(report: dict, tmp_path: Path) -> None:
    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data)
    again = evaluate(
        outcomes,
        None,
        load_costs(experts),
        folds=3,
        seed=0,
        embedder=HashingEmbedder(),
        cache=tmp_path,
        routers=FAST,
        jobs=2,
    )
    assert again == report


def test_plot_writes_png(report: dict, tmp_path: Path) -> None:
    from coserve.eval.plot import plot_report

    out = tmp_path / "front.png"
    plot_report(report, out, title="synthetic")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
