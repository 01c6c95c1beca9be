"""The verifier's signals (coserve.router.verify), the check's feature sets and its older file format,
old outcome rows without verdicts, and the perfect-check bound (coserve.eval.cascade.oracle_point)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coserve.config import load_library
from coserve.errors import ConfigError
from coserve.eval.cascade import answers, oracle_point, train_check
from coserve.outcomes.suites import HumanEval
from coserve.router.check import BASIC_FEATURES, FEATURES, AnswerCheck, Signals, load_check
from coserve.router.verify import Verdicts, verdicts
from tests.conftest import write_library

STUB = 'def below_zero(ops: list) -> bool:\n    """True if the balance falls below zero."""\n'
ASK_CODE = f"Complete this Python function.\n\n```python\n{STUB}```"
MATHS = "Tom has 3 apples and buys 4. Solve it step by step, then give the final number on the last line."


@pytest.mark.parametrize(
    ("prompt", "answer", "expected"),
    [
        # a whole function in a fence: asked, parses, defines the stub's function
        (ASK_CODE, f"```python\n{STUB}    return any(o < 0 for o in ops)\n```", Verdicts(True, True, True, False)),
        # cut off by the token cap inside an expression: does not parse
        (ASK_CODE, f"```python\n{STUB}    return any(o < 0 for o in\n", Verdicts(True, False, False, False)),
        # parses, but defines another function than the one asked
        (ASK_CODE, "```python\ndef other(ops):\n    return 1\n```", Verdicts(True, True, False, False)),
        # the body alone (no fence, no def): parses, defines nothing
        (ASK_CODE, "    return False", Verdicts(True, False, False, False)),
        (ASK_CODE, "return False", Verdicts(True, True, False, False)),
        # prose where code was asked
        (ASK_CODE, "I cannot do that.", Verdicts(True, False, False, False)),
        # maths: the last non-empty line holds a number, or not
        (MATHS, "3 + 4 = 7\nThe answer is 7.\n\n", Verdicts(False, False, False, True)),
        (MATHS, "Tom has 3 apples.\nThen he buys more", Verdicts(False, False, False, False)),
        # a letter answer; an empty answer
        ("Which?\nA. x\nB. y\nAnswer with the letter only.", "B", Verdicts(False, False, False, False)),
        (MATHS, "", Verdicts(False, False, False, False)),
        # code not asked but given in a fence: judged all the same (any function counts)
        ("Write a helper.", "```python\ndef helper():\n    pass\n```", Verdicts(False, True, True, False)),
    ],
)
def test_verdicts(prompt: str, answer: str, expected: Verdicts) -> None:
    assert verdicts(prompt, answer) == expected


def test_the_grader_and_the_verifier_read_the_same_code() -> None:
    """HumanEval grades the code the verifier judged: a parsing whole function passes the task's tests."""
    item_fields = {"task_id": "t/0", "prompt": STUB, "entry_point": "below_zero", "test": ""}
    suite, answer = HumanEval(), f"```python\n{STUB}    return any(o < 0 for o in ops)\n```"
    from coserve.outcomes.suite import Item

    item = Item("humaneval-0", "humaneval", {**item_fields, "test": "def check(f):\n    assert f([1, -2])\n"})
    assert verdicts(suite.prompt(item), answer) == Verdicts(True, True, True, False)
    assert suite.grade(answer, item) == 1.0


def rows_where_parsing_decides(n: int, seed: int) -> list[dict[str, Any]]:
    """Code answers, right exactly when their code parses (with 10% label noise); the log-probability
    signals are noise. Only a check that reads ``code_parses`` can rank them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        parses = bool(rng.random() < 0.5)
        good = parses != bool(rng.random() < 0.1)
        mean = float(rng.uniform(-2.0, 0.0))
        signals = Signals(mean, mean - 1.0, int(rng.integers(20, 200)), "stop", 0.8, True, parses, parses, False)
        rows.append({"id": f"c{i}", "scores": {"a": float(good)}, "signals": {"a": signals.as_dict()}})
    return rows


def test_the_verifier_signals_let_the_check_rank_code_answers() -> None:
    rows = rows_where_parsing_decides(300, 0)
    check, figures, _, _ = train_check(rows, ["a"])
    assert figures["auc"] > 0.85 and figures["features"] == list(FEATURES)
    _, basic, _, _ = train_check(rows, ["a"], features=BASIC_FEATURES)
    assert basic["auc"] < 0.65 and basic["features"] == list(BASIC_FEATURES)
    parsed, broken = (Signals(-1.0, -2.0, 90, "stop", 0.8, True, p, p, False) for p in (True, False))
    assert check.probability(parsed, "a") > 0.8 > 0.2 > check.probability(broken, "a")


def test_old_rows_without_verdicts_are_read_as_unknown() -> None:
    old = {"mean_logprob": -0.5, "min_logprob": -1.0, "tokens": 3, "finish": "stop", "confidence": 0.6}
    (answer,) = answers([{"id": "old", "scores": {"a": 1.0}, "signals": {"a": old}}])
    assert answer.signals == Signals(-0.5, -1.0, 3, "stop", 0.6, None, None, None, None)


def test_a_format_1_check_file_still_loads(tmp_path: Path) -> None:
    """Session 7's files: the five basic signals and a bias per expert, no list of signals."""
    coef = [0.5, 0.0, 0.0, -1.0, 2.0, 0.25]  # mean_logprob, min_logprob, log1p_tokens, finish_length, confidence, bias
    state = {"format_version": 1, "kind": "logistic", "experts": ["a"], "C": 1.0, "good": 0.5}
    state |= {"mean": [0.0] * 6, "scale": [1.0] * 6, "coef": coef, "intercept": 0.1}
    (tmp_path / "old.json").write_text(json.dumps(state))
    check = load_check(tmp_path / "old.json")
    assert check.signal_names == BASIC_FEATURES
    signals = Signals(-1.0, -3.0, 7, "length", 0.5, True, True, True, True)  # verdicts: not read by this check
    z = 0.5 * -1.0 - 1.0 * 1.0 + 2.0 * 0.5 + 0.25 + 0.1
    assert check.probability(signals, "a") == pytest.approx(1 / (1 + math.exp(-z)))


def test_a_check_file_keeps_its_signals(tmp_path: Path) -> None:
    rows = rows_where_parsing_decides(60, 1)
    check = AnswerCheck(["a"], features=("code_parses", "confidence")).fit(
        [a.signals for a in answers(rows)], ["a"] * 60, [a.score for a in answers(rows)]
    )
    check.save(tmp_path / "check.json")
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["format_version"] == 2 and saved["signals"] == ["code_parses", "confidence"]
    assert saved["features"] == ["a:code_parses", "a:confidence", "a:bias"]
    again = load_check(tmp_path / "check.json")
    probe = [a.signals for a in answers(rows)]
    np.testing.assert_allclose(again.predict_proba(probe, ["a"] * 60), check.predict_proba(probe, ["a"] * 60))
    with pytest.raises(ConfigError, match="unknown check features \\['parses'\\]"):
        AnswerCheck(["a"], features=("parses",))


def test_the_perfect_check_bound(tmp_path: Path) -> None:
    """The fake library's ladder is small, coder, big (see test_replay_follows_the_ladder). A perfect
    check accepts the first right answer: r0 small (0.1 B), r1 coder (0.1 + 0.5 B), r2 nobody is
    right, so big's answer after all three (2.1 B)."""
    library = load_library(write_library(tmp_path))
    probabilities = {"chat": 0.8, "code": 0.15, "math": 0.05}
    scores = [{"small": 1.0, "coder": 0.0, "big": 1.0}, {"small": 0.0, "coder": 1.0, "big": 1.0}]
    scores.append({"small": 0.0, "coder": 0.0, "big": 0.0})
    rows = [{"id": f"r{i}", "scores": s, "router": {"probabilities": probabilities}} for i, s in enumerate(scores)]
    point = oracle_point(rows, library, max_steps=3)
    assert point["cascade"] == {"quality": round(2 / 3, 4), "avg_params_b": round((0.1 + 0.6 + 2.1) / 3, 4)}
    assert point["single"] == {"quality": round(1 / 3, 4), "avg_params_b": 0.1}
    assert point["steps"] == {"1": 1, "2": 1, "3": 1}
    assert oracle_point(rows, library, max_steps=2)["cascade"]["avg_params_b"] == round((0.1 + 0.6 + 0.6) / 3, 4)
