"""scripts/live_adapt.py's pieces: the phase schedule, the window maths, the gauges it reads, and the
feedback it posts (the real server with fake experts: an answered request gets exactly one score, a
refused one none)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from script_module import load_script
from test_online_serving import _online_library
from test_trained_routing import trained_dir  # noqa: F401  (a fixture)

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.outcomes.suite import Item
from coserve.outcomes.suites import MMLU
from coserve.paths import decision_log_path, default_library_path
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app

live = load_script("live_adapt")


def _items(suite: str, n: int) -> list[Item]:
    return [Item(f"{suite}-{i}", suite, {}) for i in range(n)]


def test_phases_are_parsed_and_normalised_and_bad_ones_refused() -> None:
    assert live.parse_phases("mmlu=3,gsm8k=1;gsm8k=2") == [{"mmlu": 0.75, "gsm8k": 0.25}, {"gsm8k": 1.0}]
    for bad in ("mmlu", "mmlu=x", "mmlu=-1", "mmlu=0"):
        with pytest.raises(ConfigError, match="--phases"):
            live.parse_phases(bad)


def test_a_phase_gets_its_shares_rounded_to_an_exact_count() -> None:
    assert live.phase_counts({"mmlu": 0.9, "gsm8k": 0.1}, 70) == {"mmlu": 63, "gsm8k": 7}
    # thirds of 10: 3.33 each, the one left over goes to the first name of the tie
    assert live.phase_counts({"c": 1 / 3, "a": 1 / 3, "b": 1 / 3}, 10) == {"c": 3, "a": 4, "b": 3}
    assert live.phase_counts({"mmlu": 0.4, "gsm8k": 0.6}, 5) == {"mmlu": 2, "gsm8k": 3}


def test_the_stream_drifts_by_phase_draws_each_item_once_and_is_seeded() -> None:
    pools = {"mmlu": _items("mmlu", 50), "gsm8k": _items("gsm8k", 50)}
    phases = [{"mmlu": 0.9, "gsm8k": 0.1}, {"mmlu": 0.2, "gsm8k": 0.8}]
    plan = live.plan_stream(phases, 20, pools, 0.5, seed=3)
    assert [p.index for p in plan] == list(range(40)) and [p.phase for p in plan] == [0] * 20 + [1] * 20
    first = [p.suite for p in plan if p.phase == 0]
    second = [p.suite for p in plan if p.phase == 1]
    assert (first.count("mmlu"), second.count("mmlu")) == (18, 4)
    assert all(p.item.id.startswith(p.suite) for p in plan)
    assert len({p.item.id for p in plan}) == 40  # without replacement
    again = live.plan_stream(phases, 20, pools, 0.5, seed=3)
    assert [(p.item.id, p.feedback) for p in again] == [(p.item.id, p.feedback) for p in plan]
    other = live.plan_stream(phases, 20, pools, 0.5, seed=4)
    assert [p.item.id for p in other] != [p.item.id for p in plan]
    assert 0 < sum(p.feedback for p in plan) < 40
    assert not any(p.feedback for p in live.plan_stream(phases, 20, pools, 0.0, seed=3))
    assert all(p.feedback for p in live.plan_stream(phases, 20, pools, 1.0, seed=3))
    with pytest.raises(ConfigError, match="needs 22 mmlu items; 10 are available"):
        live.plan_stream(phases, 20, {**pools, "mmlu": _items("mmlu", 10)}, 0.5, seed=3)


def _answer(index: int, expert: str | None, params: float | None, score: float | None, fed: int | None) -> Any:
    status = 200 if expert else 502
    return live.Answer(index, 0, "mmlu", f"mmlu-{index}", status, expert, params, score, fed, 1.0)


def test_a_window_averages_cost_and_quality_over_the_answered_requests_only() -> None:
    answers = [
        _answer(0, "general", 0.135, 1.0, 200),
        _answer(1, "large", 1.54, 0.0, None),
        _answer(2, None, None, None, None),  # refused: no cost, no grade, no feedback
        _answer(3, "large", 1.54, 1.0, 200),
    ]
    row = live.summarise(answers, target=0.8)
    assert row["requests"] == 4 and row["answered"] == 3 and row["feedback_sent"] == 2
    assert row["realised_params_b"] == pytest.approx((0.135 + 2 * 1.54) / 3)  # 1.0717
    assert row["gap_to_target"] == pytest.approx((0.135 + 2 * 1.54) / 3 - 0.8)
    assert row["quality"] == pytest.approx(2 / 3)
    assert row["experts"] == {"general": pytest.approx(1 / 3), "large": pytest.approx(2 / 3)}
    empty = live.summarise([_answer(0, None, None, None, None)], target=0.8)
    assert empty["realised_params_b"] is None and empty["quality"] is None and empty["experts"] == {}


def test_the_gauges_are_read_from_metrics_text_and_nan_or_absent_is_none() -> None:
    text = "# TYPE coserve_cost_weight gauge\ncoserve_cost_weight 0.25\n# TYPE coserve_map_version gauge\n"
    text += "coserve_map_version 7.0\n"
    assert live.gauges(text) == {"cost_weight": 0.25, "map_version": 7.0}
    assert live.gauges("# TYPE coserve_cost_weight gauge\ncoserve_cost_weight NaN\n") == {
        "cost_weight": None,
        "map_version": None,
    }


def test_the_live_library_swaps_the_outcome_map_for_the_trained_router(tmp_path: Path) -> None:
    trained, log = tmp_path / "router", tmp_path / "log.sqlite"
    data = live.live_library(default_library_path(), trained, 0.8, True, log)
    router = data["router"]
    assert "outcomes" not in router and "priors" not in router and "categories" not in data
    assert router["trained"] == str(trained.resolve()) and router["budget"] == {"avg_params_b": 0.8}
    assert router["online"] == {} and data["server"]["log"] == {"path": str(log.resolve())}
    assert [e["name"] for e in data["experts"]] == ["general", "coder", "large"]
    assert "online" not in live.live_library(default_library_path(), trained, 0.8, False, log)["router"]


def _suite(tmp_path: Path, n: int) -> tuple[MMLU, list[Item]]:
    rows = [
        {"question": f"q{i}", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d"}
        | {"correct_answer": "A", "topic": "anatomy"}
        for i in range(n)
    ]
    path = tmp_path / "mmlu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = MMLU(path)
    return suite, suite.load()


def _feedback_rows() -> list[tuple[str, float]]:
    with sqlite3.connect(decision_log_path()) as conn:
        return [(str(i), float(s)) for i, s in conn.execute("SELECT id, score FROM feedback ORDER BY seq")]


PARAMS = {"small": 1.0, "mid": 3.0, "big": 7.0}


@pytest.mark.usefixtures("trained_dir")
def test_an_answered_request_gets_exactly_one_feedback_and_the_stream_reads_the_gauges(
    tmp_path: Path, cache: Path
) -> None:
    suite, items = _suite(tmp_path, 4)
    plan = [live.Planned(i, i // 2, "mmlu", item, feedback=i != 1) for i, item in enumerate(items)]
    engine = Engine.build(load_library(_online_library(tmp_path)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        answers, windows = live.run_stream(
            client, plan, {"mmlu": suite}, {"mmlu": 4}, PARAMS, learn=True, window=2, target=7.0
        )
    assert [a.status for a in answers] == [200] * 4
    assert [a.feedback for a in answers] == [200, None, 200, 200]  # request 1 was not planned for feedback
    fed = _feedback_rows()
    assert len(fed) == 3 and len({i for i, _ in fed}) == 3  # one score per fed request, none twice
    for (_, score), answer in zip(fed, [answers[0], answers[2], answers[3]], strict=True):
        assert score == 2.0 * answer.score - 1.0  # the grade in [0, 1] posted as a score in [-1, 1]
    assert [w["requests"] for w in windows] == [2, 2] and [w["phases"] for w in windows] == [[0], [1]]
    assert all(w["map_version"] is not None and w["cost_weight"] is not None for w in windows)
    assert windows[0]["realised_params_b"] == pytest.approx(sum(a.params_b for a in answers[:2]) / 2)


@pytest.mark.usefixtures("trained_dir")
def test_a_refused_request_gets_no_feedback_and_a_static_run_sends_none(tmp_path: Path, cache: Path) -> None:
    suite, items = _suite(tmp_path, 2)
    path = _online_library(tmp_path)
    data = yaml.safe_load(path.read_text())
    for expert in data["experts"]:
        expert["options"] = {**expert["options"], "fail_generate": True}  # no expert answers
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = [live.Planned(i, 0, "mmlu", item, feedback=True) for i, item in enumerate(items)]
    engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        refused = live.serve_one(client, plan[0], suite, 4, PARAMS, learn=True)
    assert refused.status >= 500 and refused.expert is None and refused.feedback is None and refused.score is None
    assert _feedback_rows() == []
    engine = Engine.build(load_library(_online_library(tmp_path)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        static = live.serve_one(client, plan[1], suite, 4, PARAMS, learn=False)
    assert static.status == 200 and static.feedback is None and _feedback_rows() == []
