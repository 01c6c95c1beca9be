"""Cascade only where it can pay: ``routing.cascade.categories`` (category -> start expert) in the
config, the live cascade (through the real server over fake experts), the replay, the per-category
decision on the check's sample (coserve.eval.cascade_plan), and the verifier replay on recorded texts.

The fake library maps every category to ``big`` (1.5 B, single choice); the cascade starts code at
``small`` (0.1 B). Check biases as in test_cascade.py: P(good) is the answering expert's constant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.eval.cascade import replay
from coserve.eval.cascade_plan import plan_starts
from coserve.outcomes.reverify import reverify_row
from coserve.router.check import FEATURES
from coserve.server.app import create_app
from tests.conftest import write_library
from tests.test_cascade import HIGH, LOW, URL, p, step, write_check
from tests.test_cascade_examples import DOCTEST_PROMPT, PARTLY_WRONG, RIGHT

CODE = "write a python function to sort a list"
CHAT = "hello friend how are you this morning"
ROUTER = {
    "embedder": "hashing",
    "classifier": "logistic",
    "map": {"code": "big", "math": "big", "chat": "big"},
    "fallback": {"expert": "big", "min_confidence": 0.0},
}


def sections(tmp_path: Path, biases: dict[str, float], **cascade: Any) -> dict[str, Any]:
    check = write_check(tmp_path / "check.json", biases)
    settings = {"check": str(check), "max_steps": 3, "categories": {"code": "small"}, **cascade}
    return {"router": ROUTER, "routing": {"mode": "cascade", "cascade": settings}}


def ask(client: TestClient, prompt: str) -> dict[str, Any]:
    body = {"model": "coserve", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
def serve(make_engine: Callable[..., Engine], tmp_path: Path) -> Callable[..., TestClient]:
    def make(biases: dict[str, float], **cascade: Any) -> TestClient:
        return TestClient(create_app(make_engine(**sections(tmp_path, biases, **cascade))))

    return make


def test_a_category_without_cascade_answers_in_one_step_as_single_choice(
    serve: Callable[..., TestClient], make_engine: Callable[..., Engine]
) -> None:
    with TestClient(create_app(make_engine(router=ROUTER))) as single:
        alone = ask(single, CHAT)
    with serve({"small": LOW, "coder": LOW, "big": LOW}) as client:  # a check that would escalate anything
        body = ask(client, CHAT)
    assert body["coserve"]["category"] == "chat" == alone["coserve"]["category"]
    assert (
        body["choices"][0]["message"]
        == alone["choices"][0]["message"]
        == {
            "role": "assistant",
            "content": "big says: hello friend",
        }
    )
    assert body["model"] == alone["model"] == "big" and body["usage"] == alone["usage"]
    assert body["coserve"]["cascade"] == [step("big", None, "accepted", "no_cascade")]


def test_a_cascading_category_starts_cheaper_and_escalates_only_on_a_failed_check(
    serve: Callable[..., TestClient],
) -> None:
    with serve({"small": HIGH, "coder": LOW, "big": HIGH}) as client:
        body = ask(client, CODE)
        assert body["coserve"]["category"] == "code"
        assert body["choices"][0]["message"]["content"] == "small says: write a"
        assert body["coserve"]["cascade"] == [step("small", p(HIGH), "accepted", "check")]
    with serve({"small": LOW, "coder": LOW, "big": HIGH}) as client:
        body = ask(client, CODE)
        # from small, the next rung is the first larger expert of the decision's order: big itself
        assert body["choices"][0]["message"]["content"] == "big says: write a"
        assert body["coserve"]["cascade"] == [
            step("small", p(LOW), "escalated", "check"),
            step("big", p(HIGH), "accepted", "check"),
        ]


def test_a_start_the_request_excludes_means_single_choice(serve: Callable[..., TestClient]) -> None:
    with serve({"small": HIGH, "coder": HIGH, "big": HIGH}) as client:
        body = {"model": "coserve", "messages": [{"role": "user", "content": CODE}], "max_tokens": 4}
        response = client.post(URL, json={**body, "coserve": {"exclude_experts": ["small"]}}).json()
        assert response["coserve"]["cascade"] == [step("big", None, "accepted", "no_cascade")]


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        ({"categories": {"poetry": "small"}}, "routing.cascade.categories.poetry: not a category of this library"),
        ({"categories": {"code": "nobody"}}, "routing.cascade.categories.code: unknown expert 'nobody'"),
        ({"run_examples": "yes"}, "run_examples"),
    ],
)
def test_bad_cascade_settings_are_refused(tmp_path: Path, cascade: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_library(write_library(tmp_path, **sections(tmp_path, {"small": 0.0}, **cascade)))


def test_a_check_that_learned_from_examples_needs_run_examples(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    library = sections(tmp_path, {"small": 0.0, "coder": 0.0, "big": 0.0})
    check = Path(library["routing"]["cascade"]["check"])
    state = json.loads(check.read_text())
    state["mean"][FEATURES.index("examples_passed")] = 0.4  # small's block: examples were seen in training
    check.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"set routing\.cascade\.run_examples: true"):
        make_engine(**library)
    library["routing"]["cascade"]["run_examples"] = True
    assert make_engine(**library).cascade is not None


PROBABILITIES = {
    "code": {"code": 0.9, "math": 0.05, "chat": 0.05},
    "math": {"code": 0.05, "math": 0.9, "chat": 0.05},
}


def rows_of(category: str, scores: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [
        {"id": f"{category}-{i}", "scores": s, "router": {"probabilities": PROBABILITIES[category]}}
        for i, s in enumerate(scores)
    ]


def test_the_plan_cascades_only_where_a_cheaper_start_pays(tmp_path: Path) -> None:
    """Code: small is right on 3 of 4 items, big on all; a perfect check escalates the fourth only:
    quality 1.0 at (4 x 0.1 + 1.5) / 4 = 0.475 B against single choice's 1.0 at 1.5 B. Maths: no
    cheaper expert has skill (small and coder score 0), so it keeps single choice."""
    library = load_library(write_library(tmp_path, router=ROUTER))
    code = rows_of("code", [{"small": 1.0, "coder": 0.0, "big": 1.0}] * 3 + [{"small": 0.0, "coder": 0.0, "big": 1.0}])
    maths = rows_of("math", [{"small": 0.0, "coder": 0.0, "big": 1.0}] * 2)
    rows = code + maths
    perfect = {(r["id"], e): s for r in rows for e, s in r["scores"].items()}
    plan = plan_starts(rows, library, perfect, threshold=0.5, max_steps=3)
    assert plan["starts"] == {"code": "small"}
    entry = plan["categories"]["code"]
    assert entry["single"] == {"quality": 1.0, "avg_params_b": 1.5}
    assert entry["candidates"]["small"]["cascade"] == {"quality": 1.0, "avg_params_b": 0.475}
    assert entry["candidates"]["coder"] == {"skill": 0.0, "kept": False, "why": "skill below 0.2"}
    assert plan["categories"]["math"]["start"] is None
    # the replay honours the starts: maths one step at big, code as above
    point = replay(rows, library, perfect, 0.5, 3, starts=plan["starts"])
    assert point["cascade"] == {"quality": 1.0, "avg_params_b": round((0.475 * 4 + 1.5 * 2) / 6, 4)}
    assert point["steps"] == {"1": 5, "2": 1}


def test_a_start_that_loses_quality_is_not_kept(tmp_path: Path) -> None:
    library = load_library(write_library(tmp_path, router=ROUTER))
    rows = rows_of("code", [{"small": 1.0, "coder": 1.0, "big": 1.0}, {"small": 0.0, "coder": 0.0, "big": 1.0}])
    trusting = {(r["id"], e): 1.0 for r in rows for e in r["scores"]}  # a check that accepts everything
    assert plan_starts(rows, library, trusting, threshold=0.5, max_steps=3)["starts"] == {}


def test_reverify_recomputes_the_text_signals_from_recorded_answers() -> None:
    row = {
        "id": "humaneval-3",
        "prompt": DOCTEST_PROMPT,
        "texts": {"coder": PARTLY_WRONG, "large": RIGHT},
        "signals": {
            "coder": {"mean_logprob": -0.1, "tokens": 20, "finish": "stop", "confidence": 0.9},
            "large": {"mean_logprob": -0.2, "tokens": 30, "finish": "stop", "confidence": 0.9},
            "general": {"mean_logprob": -0.3, "tokens": 9, "finish": "stop", "confidence": 0.9},
        },
    }
    out = reverify_row(row, run_examples=True)
    verdict = {"code_asked": True, "code_parses": True, "function_defined": True, "number_last": False}
    assert out["signals"]["coder"] == {**row["signals"]["coder"], **verdict, "examples": 3, "examples_passed": 2 / 3}
    assert out["signals"]["large"] == {**row["signals"]["large"], **verdict, "examples": 3, "examples_passed": 1.0}
    assert out["signals"]["general"] == row["signals"]["general"]  # no text kept: as recorded
    assert reverify_row(row)["signals"]["large"]["examples_passed"] is None  # not run unless asked
    assert "examples" not in row["signals"]["coder"]  # the input row is left as it was


def test_unbuffered_streams_of_a_per_category_library_are_single_choice(serve: Callable[..., TestClient]) -> None:
    """No check can run before the first token, and an unchecked cheap start would only lose quality:
    the stream is the router's own expert, even below stream_min_confidence."""
    with serve({"small": HIGH, "coder": HIGH, "big": HIGH}, stream_min_confidence=1.0) as client:
        body = {"model": "coserve", "messages": [{"role": "user", "content": CODE}], "max_tokens": 4, "stream": True}
        frames = [
            json.loads(x.removeprefix("data: "))
            for x in client.post(URL, json=body).text.split("\n\n")
            if x and "[DONE]" not in x
        ]
        text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f["choices"])
        assert text == "big says: write a"
        assert frames[0]["coserve"]["cascade"] == [step("big", None, "accepted", "unchecked_stream", None)]
