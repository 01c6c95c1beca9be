"""The cascade's answer check (coserve.router.check, coserve.eval.cascade, ``coserve train-check``), its
replay on outcome rows, signals from experts without log-probabilities, and the decision log's migration."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coserve.cli import main
from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.eval.cascade import read_signal_rows, replay, train_check
from coserve.outcomes.runner import run_outcomes
from coserve.outcomes.suites import MMLU
from coserve.router.check import AnswerCheck, Signals, load_check, signals_of
from coserve.store.log import DecisionLog, DecisionRow, query_decisions
from coserve.types import Completion, Message, TokenLogprob, Usage
from tests.conftest import write_library


def test_signals_of_a_completion() -> None:
    entries = tuple(TokenLogprob(t, lp, t.encode()) for t, lp in (("a", -0.5), ("b", -1.5), ("c", 0.0)))
    ask = (Message("user", "Say something."),)
    signals = signals_of(Completion("abc", "length", Usage(3, 3), entries), 0.7, ask)
    assert signals == Signals(-2.0 / 3, -1.5, 3, "length", 0.7, False, False, False, False)
    assert signals_of(Completion("", "stop", Usage(3, 0)), 0.2, ask) == Signals(
        0.0, 0.0, 0, "stop", 0.2, False, False, False, False
    )
    assert signals_of(Completion("x y", "stop", Usage(3, 2)), 0.2, ask) == Signals(
        None, None, 2, "stop", 0.2, False, False, False, False
    )


def test_signals_of_read_the_last_user_turn() -> None:
    """The verifier judges the answer against the request's last user turn (a system turn or an
    earlier question that asked for code does not count)."""
    code = "```python\ndef add(a, b):\n    return a + b\n```"
    asks = (Message("system", "def helper(x):"), Message("user", "```python\ndef add(a, b):\n```"))
    signals = signals_of(Completion(code, "stop", Usage(5, 12)), 0.9, asks)
    assert (signals.code_asked, signals.code_parses, signals.function_defined, signals.number_last) == (
        True,
        True,
        True,
        False,
    )
    later = (*asks, Message("assistant", code), Message("user", "And 2 + 2? Give the number."))
    signals = signals_of(Completion("It is\n4", "stop", Usage(5, 3)), 0.9, later)
    assert (signals.code_asked, signals.code_parses, signals.function_defined, signals.number_last) == (
        False,
        False,
        False,
        True,
    )


def synthetic(n: int, seed: int) -> tuple[list[Signals], list[str], list[float]]:
    """Expert "a" is right when it is sure (mean log-probability above -1), "b" when it is not: a
    check that does not model each expert on its own cannot separate both."""
    rng = np.random.default_rng(seed)
    signals, experts, scores = [], [], []
    for i in range(n):
        expert = "ab"[i % 2]
        mean = float(rng.uniform(-2.0, 0.0))
        good = (mean > -1.0) == (expert == "a")
        if rng.random() < 0.1:
            good = not good  # label noise
        signals.append(Signals(mean, mean - 0.5, int(rng.integers(1, 50)), "stop", float(rng.uniform(0.3, 1.0))))
        experts.append(expert)
        scores.append(1.0 if good else 0.0)
    return signals, experts, scores


def test_the_check_learns_each_experts_signal_and_is_calibrated(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    check = AnswerCheck(["a", "b"]).fit(*synthetic(800, 0))
    signals, experts, scores = synthetic(800, 1)
    probability = check.predict_proba(signals, experts)
    assert roc_auc_score(scores, probability) > 0.85  # 10% noise: the best possible is about 0.9
    for low, high in ((0.0, 0.3), (0.7, 1.01)):  # calibrated: the good rate in a band lies in the band
        band = (probability >= low) & (probability < high)
        assert low - 0.1 <= np.asarray(scores)[band].mean() <= high + 0.1
    check.save(tmp_path / "check.json", cv={"auc": 1})
    again = load_check(tmp_path / "check.json")
    np.testing.assert_allclose(again.predict_proba(signals, experts), probability)
    assert again.probability(signals[0], experts[0]) == pytest.approx(probability[0])


def test_the_check_needs_both_kinds_of_answers() -> None:
    with pytest.raises(ConfigError, match="both good and bad"):
        AnswerCheck(["a"]).fit([Signals(-1.0, -1.0, 1, "stop", 1.0)] * 3, ["a"] * 3, [1.0] * 3)


def outcome_rows(n: int, seed: int) -> list[dict[str, Any]]:
    signals, experts, scores = synthetic(2 * n, seed)
    rows = []
    for i in range(n):
        block = slice(2 * i, 2 * i + 2)
        pair = {e: (s, sc) for s, e, sc in zip(signals[block], experts[block], scores[block], strict=True)}
        rows.append(
            {
                "id": f"item-{i}",
                "category": "chat",
                "scores": {e: sc for e, (_, sc) in pair.items()},
                "signals": {e: {**s.__dict__} for e, (s, _) in pair.items()},
            }
        )
    return rows


def test_grouped_cross_validation_figures(tmp_path: Path) -> None:
    rows = outcome_rows(300, 2)
    _, figures, oof, data = train_check(rows, ["a", "b"], folds=5)
    assert figures["answers"] == 600 and figures["items"] == 300 and len(oof) == 600 == len(data)
    assert figures["auc"] > 0.8 and figures["brier"] < figures["brier_base_rate"] and figures["ece"] < 0.1
    assert set(figures["per_expert_auc"]) == {"a", "b"}


def test_train_check_cli(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "outcomes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "old", "scores": {"a": 1.0}}, *outcome_rows(100, 3)]))
    out = tmp_path / "router" / "check.json"
    assert main(["train-check", "--data", str(data), "--out", str(out)]) == 0
    assert "check on 200 answers of 100 items (5 grouped folds)" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["experts"] == ["a", "b"] and saved["cv"]["items"] == 100
    assert load_check(out).experts == ["a", "b"]
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"id": "old", "scores": {"a": 1.0}}) + "\n")
    with pytest.raises(ConfigError, match="no row with signals"):
        read_signal_rows([old])


def test_replay_follows_the_ladder(tmp_path: Path) -> None:
    """The fake library: map chat -> small, fallback big (min confidence 0.4); with chat most likely
    the order is small, then code's coder and math's big: the ladder is small, coder, big."""
    library = load_library(write_library(tmp_path))
    probabilities = {"chat": 0.8, "code": 0.15, "math": 0.05}
    scores = {"small": 0.0, "coder": 1.0, "big": 1.0}
    rows = [{"id": f"r{i}", "scores": scores, "router": {"probabilities": probabilities}} for i in range(2)]
    p = {("r0", "small"): 0.9, ("r1", "small"): 0.1, ("r1", "coder"): 0.9, ("r0", "coder"): 0.0}
    result = replay(rows, library, p, threshold=0.5, max_steps=3)
    # r0: small accepted (score 0, 0.1 B); r1: small escalated, coder accepted (score 1, 0.1 + 0.5 B)
    assert result["cascade"] == {"quality": 0.5, "avg_params_b": 0.35}
    assert result["single"] == {"quality": 0.0, "avg_params_b": 0.1}
    assert result["steps"] == {"1": 1, "2": 1}
    assert replay(rows, library, p, threshold=0.5, max_steps=1)["cascade"] == {"quality": 0.0, "avg_params_b": 0.1}


def test_outcomes_of_an_expert_without_logprobs(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    mmlu = tmp_path / "mmlu.jsonl"
    row = {"question": "Pick B", **{f"answer_{x}": x for x in "abcd"}, "correct_answer": "B", "topic": "t"}
    mmlu.write_text(json.dumps(row) + "\n")
    engine = make_engine(options={"coder": {"logprobs": False}})
    suite = MMLU(mmlu)
    out = tmp_path / "out.jsonl"
    asyncio.run(run_outcomes(engine, [(suite, i) for i in suite.load()], out, progress=False))
    (written,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "errors" not in written and written["scores"]["coder"] == 1.0
    assert written["signals"]["coder"]["mean_logprob"] is None and written["signals"]["coder"]["tokens"] == 16
    assert written["signals"]["small"]["mean_logprob"] == -0.1875


def test_a_session_6_log_gains_the_cascade_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE decisions (id TEXT PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL,"
            " expert TEXT NOT NULL, category TEXT, confidence REAL, reason TEXT, fallback_from TEXT,"
            " status TEXT NOT NULL, latency_s REAL,"
            " prompt_tokens INTEGER, completion_tokens INTEGER, map_version INTEGER, prompt TEXT, completion TEXT)"
        )
        conn.execute(
            "INSERT INTO decisions (id, time, model, expert, status) VALUES ('old', 1.0, 'coserve', 'big', '200')"
        )
    log = DecisionLog(path).start()
    steps = json.dumps([{"expert": "small", "probability": 0.2, "outcome": "escalated"}])
    log.record(DecisionRow("new", 2.0, "coserve", "big", "chat", 0.9, "routed", None, "200", 0.1, 3, 4, cascade=steps))
    log.close()
    logged = {r["id"]: r for r in query_decisions(path)}
    assert logged["old"]["cascade"] is None and logged["old"]["expert"] == "big"
    assert json.loads(logged["new"]["cascade"]) == [{"expert": "small", "probability": 0.2, "outcome": "escalated"}]


def routed_rows() -> list[dict[str, Any]]:
    """Two items answered by every fake expert and by a cascade (the second climbed small -> coder)."""
    chat = {"chat": 0.8, "code": 0.15, "math": 0.05}
    code = {"chat": 0.1, "code": 0.85, "math": 0.05}
    rows = []
    for i, (probabilities, steps) in enumerate(((chat, None), (code, ["small", "coder"]))):
        experts = ["small", "coder", "big"]
        row: dict[str, Any] = {
            "id": f"r{i}",
            "category": "chat" if i == 0 else "code",
            "prompt": ("hello friend number " if i == 0 else "write a python function number ") + str(i),
            "scores": {"small": 0.0, "coder": 1.0, "big": 1.0, "routed": float(i)},
            "latency_s": dict.fromkeys([*experts, "routed"], 1.0),
            "signals": {e: Signals(-0.5 * (i + 1), -1.0, 4, "stop", 0.8).__dict__ for e in experts},
            "router": {"expert": "small", "confidence": 0.8, "probabilities": probabilities},
            "routed_expert": "small" if steps is None else "coder",
        }
        if steps is not None:
            row["routed_steps"] = [{"expert": e} for e in steps]
        rows.append(row)
    return rows


def test_compare_counts_every_cascade_step_and_adds_the_single_choice(tmp_path: Path) -> None:
    from coserve.outcomes.compare import compare_routed

    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in routed_rows()))
    library = load_library(write_library(tmp_path))  # map: chat -> small, code -> coder
    result = compare_routed(data, {"small": 0.1, "coder": 0.5, "big": 1.5}, single=library)
    assert result["columns"]["routed"]["avg_params_b"] == pytest.approx((0.1 + 0.1 + 0.5) / 2)
    assert result["columns"]["single"]["quality"] == 0.5  # small (0) on the chat item, coder (1) on the code one
    assert result["columns"]["single"]["avg_params_b"] == pytest.approx(0.3)
    assert result["cascade_steps"] == {1: 1, 2: 1}


def test_eval_draws_cascade_points(tmp_path: Path, cache: Path) -> None:
    rows = []
    for i in range(24):  # enough distinct prompts for grouped folds; small right on chat, wrong on code
        row = routed_rows()[i % 2]
        row["id"], row["prompt"] = f"r{i}", f"{row['prompt']} {i}"
        row["scores"] = {"small": 1.0 if i % 4 == 0 else 0.0, "coder": 1.0, "big": 1.0}
        rows.append(row)
    data, experts = tmp_path / "data.jsonl", tmp_path / "experts.json"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    experts.write_text(json.dumps({e: {"params_b": p} for e, p in (("small", 0.1), ("coder", 0.5), ("big", 1.5))}))
    library = write_library(tmp_path)
    report = tmp_path / "r.json"
    argv = ["eval", "--data", str(data), "--experts", str(experts), "--embedder", "hashing", "--folds", "2"]
    plot = tmp_path / "p.png"
    extra = ["--routers", "map-logistic", "--json", str(report), "--plot", str(plot), "--cascade", str(library)]
    assert main([*argv, *extra]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    cascade = json.loads(report.read_text())["cascade"]
    assert cascade["cv"]["items"] == 24 and len(cascade["points"]) == 9
    never, always = cascade["points"][0], cascade["points"][-1]
    assert never["cascade"] == never["single"] and never["steps"] == {"1": 24}
    assert always["cascade"]["quality"] == 1.0  # every item climbs to coder, then big: right
    # without a library: FrugalGPT's plain cascade, small -> coder -> big on every item
    assert main([*argv, "--routers", "map-logistic", "--json", str(report)]) == 0
    plain = json.loads(report.read_text())["cascade"]
    assert plain["ladder"] == "every expert, cheapest first"
    # a perfect check takes small's answer where it is right (6 items, 0.1 B), else coder's (0.1 + 0.5 B)
    assert plain["oracle"]["cascade"] == {"quality": 1.0, "avg_params_b": round((6 * 0.1 + 18 * 0.6) / 24, 4)}
    assert plain["points"][0]["single"] == {"quality": 0.25, "avg_params_b": 0.1}  # small right on 6 of 24
    assert plain["points"][-1]["cascade"] == {"quality": 1.0, "avg_params_b": 2.1} and plain["points"][-1]["steps"] == {
        "3": 24
    }
