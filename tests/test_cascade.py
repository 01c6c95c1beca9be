"""Cascades (``routing.mode: cascade``, issue 16 part 3) through the real server over fake experts.

The check file is written by hand: every signal weight 0 and a per-expert bias, so P(good) of an
answer is ``1 / (1 + exp(-bias))`` of the expert that gave it, whatever it said. The library maps
every category to ``small`` with ``coder`` as the fallback, so the routed order is small (0.1 B),
coder (0.5 B), big (1.5 B): the cascade's ladder.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.router.check import FEATURES, load_check
from coserve.server.app import create_app

URL = "/v1/chat/completions"
PROMPT = "hello friend how are you this morning"
LOW, HIGH = -3.0, 3.0  # biases: P(good) = 0.0474 and 0.9526


def p(bias: float) -> float:
    return round(1 / (1 + math.exp(-bias)), 4)


def write_check(path: Path, biases: dict[str, float], weights: dict[str, float] | None = None) -> Path:
    """A check file: each expert's bias and, for every expert, the same ``weights`` of signals."""
    experts = list(biases)
    width = len(FEATURES) + 1
    coef = [0.0] * (width * len(experts))
    for i, expert in enumerate(experts):
        coef[i * width + width - 1] = biases[expert]
        for name, weight in (weights or {}).items():
            coef[i * width + FEATURES.index(name)] = weight
    state = {
        "format_version": 2,
        "signals": list(FEATURES),
        "kind": "logistic",
        "experts": experts,
        "C": 1.0,
        "good": 0.5,
        "mean": [0.0] * len(coef),
        "scale": [1.0] * len(coef),
        "coef": coef,
        "intercept": 0.0,
    }
    path.write_text(json.dumps(state))
    return path


def cascade_library(
    tmp_path: Path, biases: dict[str, float], weights: dict[str, float] | None = None, **cascade: Any
) -> dict[str, Any]:
    check = write_check(tmp_path / "check.json", biases, weights)
    return {
        "router": {
            "embedder": "hashing",
            "classifier": "logistic",
            "map": {"code": "small", "math": "small", "chat": "small"},
            "fallback": {"expert": "coder", "min_confidence": 0.0},
        },
        "routing": {"mode": "cascade", "cascade": {"check": str(check), "max_steps": 3, **cascade}},
    }


@pytest.fixture
def serve(make_engine: Callable[..., Engine], tmp_path: Path) -> Callable[..., TestClient]:
    def make(biases: dict[str, float], weights: dict[str, float] | None = None, **cascade: Any) -> TestClient:
        db = tmp_path / "decisions.sqlite"
        library = cascade_library(tmp_path, biases, weights, **cascade)
        engine = make_engine(server={"log": {"path": str(db)}}, **library)
        return TestClient(create_app(engine), raise_server_exceptions=False)

    return make


def ask(client: TestClient, prompt: str = PROMPT, **fields: Any) -> dict[str, Any]:
    response = client.post(URL, json={"model": "coserve", "messages": [{"role": "user", "content": prompt}], **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def step(expert: str, probability: float | None, outcome: str, reason: str, tokens: int | None = 4) -> dict[str, Any]:
    return {"expert": expert, "probability": probability, "outcome": outcome, "reason": reason, "tokens": tokens}


def logged(client: TestClient) -> list[Any]:
    client.app.state.decision_log.flush()  # type: ignore[attr-defined]
    conn = sqlite3.connect(client.app.state.decision_log.path)  # type: ignore[attr-defined]
    try:
        return [json.loads(c) if c else None for (c,) in conn.execute("SELECT cascade FROM decisions ORDER BY time")]
    finally:
        conn.close()


def test_a_good_first_answer_is_accepted(serve: Callable[..., TestClient]) -> None:
    with serve({"small": HIGH, "coder": HIGH, "big": HIGH}) as client:
        body = ask(client, max_tokens=4)
        assert body["choices"][0]["message"]["content"] == "small says: hello friend"
        assert body["coserve"]["expert"] == "small"
        assert body["coserve"]["cascade"] == [step("small", p(HIGH), "accepted", "check")]
        assert "logprobs" not in body["choices"][0]  # asked internally for the check, not by the client
        assert logged(client) == [[step("small", p(HIGH), "accepted", "check")]]


def test_a_doubtful_answer_escalates_once(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": HIGH, "big": HIGH}) as client:
        body = ask(client, max_tokens=4)
        assert body["choices"][0]["message"]["content"] == "coder says: hello friend"
        assert body["model"] == "coder" and body["coserve"]["expert"] == "coder"
        expected = [step("small", p(LOW), "escalated", "check"), step("coder", p(HIGH), "accepted", "check")]
        assert body["coserve"]["cascade"] == expected
        assert logged(client) == [expected]


def test_the_check_reads_the_verifier_on_the_live_answer(serve: Callable[..., TestClient]) -> None:
    """A check that trusts an answer whose last line holds a number (``number_last``,
    coserve.router.verify): small's echo of a prompt of numbers is accepted, its echo of words escalates."""
    with serve({"small": LOW, "coder": HIGH, "big": HIGH}, weights={"number_last": 2 * HIGH}) as client:
        body = ask(client, "12 34", max_tokens=4)
        assert body["choices"][0]["message"]["content"] == "small says: 12 34"
        assert body["coserve"]["cascade"] == [step("small", p(LOW + 2 * HIGH), "accepted", "check")]
        body = ask(client, max_tokens=4)
        expected = [step("small", p(LOW), "escalated", "check"), step("coder", p(HIGH), "accepted", "check")]
        assert body["coserve"]["cascade"] == expected


def test_the_client_gets_logprobs_only_when_it_asks(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": HIGH, "big": HIGH}) as client:
        choice = ask(client, max_tokens=2, logprobs=True)["choices"][0]
        assert [e["token"] for e in choice["logprobs"]["content"]] == ["coder", " says:"]  # the accepted answer's


def test_max_steps_stops_the_climb(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": LOW, "big": HIGH}, max_steps=2) as client:
        body = ask(client, max_tokens=4)
        assert body["coserve"]["cascade"] == [
            step("small", p(LOW), "escalated", "check"),
            step("coder", p(LOW), "accepted", "max_steps"),
        ]


def test_the_ladder_ends_at_the_strongest_expert(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": LOW, "big": LOW}) as client:
        assert [s["expert"] for s in ask(client, max_tokens=4)["coserve"]["cascade"]] == ["small", "coder", "big"]


@pytest.mark.parametrize(
    ("constraints", "path"),
    [
        ({"exclude_experts": ["big"]}, [("small", "escalated", "check"), ("coder", "accepted", "no_stronger_expert")]),
        ({"max_params_b": 0.2}, [("small", "accepted", "no_stronger_expert")]),
        ({"exclude_experts": ["coder"]}, [("small", "escalated", "check"), ("big", "accepted", "no_stronger_expert")]),
    ],
)
def test_constraints_bound_the_climb(
    serve: Callable[..., TestClient], constraints: dict[str, Any], path: list[tuple[str, str, str]]
) -> None:
    with serve({"small": LOW, "coder": LOW, "big": LOW}) as client:
        steps = ask(client, max_tokens=4, coserve=constraints)["coserve"]["cascade"]
        assert [(s["expert"], s["outcome"], s["reason"]) for s in steps] == path


def test_a_failing_escalation_returns_the_answer_before_it(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    sections = cascade_library(tmp_path, {"small": LOW, "coder": HIGH, "big": HIGH})
    engine = make_engine(options={"coder": {"fail_generate": True}}, **sections)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        body = ask(client, max_tokens=4)
    assert body["choices"][0]["message"]["content"] == "small says: hello friend"
    assert body["model"] == "small"
    assert body["coserve"]["cascade"] == [
        step("small", p(LOW), "escalated", "check"),
        step("coder", None, "failed", "expert_failed", None),
    ]


def test_a_failing_first_expert_falls_back_then_the_ladder_climbs_from_there(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    sections = cascade_library(tmp_path, {"small": HIGH, "coder": LOW, "big": HIGH})
    engine = make_engine(options={"small": {"fail_generate": True}}, **sections)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        body = ask(client, max_tokens=4)
    assert body["choices"][0]["message"]["content"] == "big says: hello friend"
    assert body["coserve"]["fallback_from"] == ["small"]
    assert body["coserve"]["cascade"] == [
        step("coder", p(LOW), "escalated", "check"),
        step("big", p(HIGH), "accepted", "check"),
    ]


def test_pinned_requests_are_not_cascaded(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": LOW, "big": LOW}) as client:
        response = client.post(URL, json={"model": "small", "messages": [{"role": "user", "content": PROMPT}]})
        assert response.json()["model"] == "small" and "cascade" not in response.json()["coserve"]


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("data: ")) for line in text.split("\n\n") if line and "[DONE]" not in line]


def streamed(client: TestClient) -> tuple[str, list[dict[str, Any]]]:
    body = {"model": "coserve", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "stream": True}
    frames = events(client.post(URL, json=body).text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in frames if e["choices"])
    return text, frames[0]["coserve"]["cascade"]


def test_unbuffered_streams_are_not_checked(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": HIGH, "big": HIGH}) as client:
        text, steps = streamed(client)
        assert text == "small says: hello friend"  # the check would have escalated; a stream cannot
        assert steps == [step("small", None, "accepted", "unchecked_stream", None)]


def test_unbuffered_streams_escalate_before_the_first_token_on_router_confidence(
    serve: Callable[..., TestClient],
) -> None:
    with serve({"small": HIGH, "coder": HIGH, "big": HIGH}, stream_min_confidence=1.0) as client:
        text, steps = streamed(client)
        assert text == "coder says: hello friend"
        assert steps == [
            step("small", None, "escalated", "router_confidence", None),
            step("coder", None, "accepted", "unchecked_stream", None),
        ]
        assert logged(client) == [steps]


def test_buffered_streams_are_checked_then_streamed(serve: Callable[..., TestClient]) -> None:
    with serve({"small": LOW, "coder": HIGH, "big": HIGH}, buffer_streams=True) as client:
        text, steps = streamed(client)
        assert text == "coder says: hello friend"
        assert steps == [step("small", p(LOW), "escalated", "check"), step("coder", p(HIGH), "accepted", "check")]


def test_single_mode_has_no_steps(client: TestClient) -> None:
    body = ask(client, max_tokens=2)
    assert "cascade" not in body["coserve"]


def test_a_missing_or_broken_check_is_refused_at_start(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    sections = cascade_library(tmp_path, {"small": 0.0})
    sections["routing"]["cascade"]["check"] = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read the answer check"):
        make_engine(**sections)
    (tmp_path / "bad.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "experts": ["a"],
                "C": 1,
                "good": 0.5,
                "mean": [0],
                "scale": [1],
                "coef": [0],
                "intercept": 0,
            }
        )
    )
    with pytest.raises(ConfigError, match="do not match its 6 features"):
        load_check(tmp_path / "bad.json")


def test_cascade_mode_needs_its_settings(make_engine: Callable[..., Engine]) -> None:
    with pytest.raises(ConfigError, match="routing: mode cascade needs a cascade: section"):
        make_engine(routing={"mode": "cascade"})


@pytest.mark.parametrize(
    "routing",
    [{"cascade": {"check": "check.json"}}, {"mode": "single", "cascade": {"check": "c.json", "max_steps": 3}}],
)
def test_cascade_settings_without_cascade_mode_stop_the_start(
    make_engine: Callable[..., Engine], routing: dict[str, Any]
) -> None:
    # A forgotten `mode: cascade` served single choice with the section ignored.
    with pytest.raises(ConfigError) as info:
        make_engine(routing=routing)
    assert info.value.message.endswith(
        "routing: a cascade: section is set but mode is single (the default): add mode: cascade, or drop it"
    )


@pytest.mark.e2e
def test_a_real_cascade_escalates_between_real_experts(tmp_path: Path, cache: Path) -> None:
    """The smallest real expert twice (as ``general`` and a pretend-larger ``general-b``): the step
    asks for real log-probabilities, the check escalates, and the answer is general-b's own."""
    import yaml

    from coserve.config import load_library
    from coserve.router.embed import HashingEmbedder

    default = load_library()
    assert default.path is not None
    data = yaml.safe_load(default.path.read_text())
    general = next(e for e in data["experts"] if e["name"] == "general")
    data["experts"] = [general, {**general, "name": "general-b", "params_b": 0.2}]
    for key in ("outcomes", "priors", "budget"):
        data["router"].pop(key, None)
    data["router"].update(embedder="hashing", map=dict.fromkeys(default.categories, "general"))
    data["router"]["fallback"] = {"expert": "general-b", "min_confidence": 0.0}
    data["categories"] = str(default.path.parent / data["categories"])
    check = write_check(tmp_path / "check.json", {"general": LOW, "general-b": HIGH})
    data["routing"] = {"mode": "cascade", "cascade": {"check": str(check)}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
    messages = [{"role": "user", "content": "Name one colour."}]
    with TestClient(create_app(engine)) as client:
        body = client.post(URL, json={"model": "coserve", "messages": messages, "max_tokens": 6, "temperature": 0})
        pinned = client.post(URL, json={"model": "general-b", "messages": messages, "max_tokens": 6, "temperature": 0})
    answer = body.json()
    steps = answer["coserve"]["cascade"]
    assert [(s["expert"], s["probability"], s["outcome"]) for s in steps] == [
        ("general", p(LOW), "escalated"),
        ("general-b", p(HIGH), "accepted"),
    ]
    assert answer["model"] == "general-b"
    assert answer["choices"][0]["message"]["content"] == pinned.json()["choices"][0]["message"]["content"]
    assert steps[1]["tokens"] == answer["usage"]["completion_tokens"] > 0
