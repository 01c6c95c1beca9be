"""The one request object: every stage writes on the same Call, and a request is settled exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HELD_OUT

from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.errors import ExpertFailed
from coserve.metrics import Metrics
from coserve.server.admission import Admission
from coserve.server.outcome import Outcomes
from coserve.server.quota import Quota
from coserve.store.log import DecisionLog
from coserve.types import Decision, Message, Request, Sampling, Usage

# 8 words; the fake backend counts a word as a token and answers "<expert> says: " + the prompt's words
PROMPT = HELD_OUT["code"]


def _call(model: str = "coserve", max_tokens: int = 5) -> Call:
    return Call(Request((Message("user", PROMPT),), model, Sampling(max_tokens=max_tokens)))


def test_route_and_fallback_are_written_on_the_call(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_generate": True}})
    call = _call()

    async def run() -> str:
        decision = await engine.route(call)
        assert call.decision is decision and decision.expert == "coder"
        completion = await engine.complete(call)
        await engine.close()
        return completion.text

    text = asyncio.run(run())
    assert call.decision is not None
    assert call.tried == ["coder"]  # the routed expert failed before its first token
    assert call.expert == call.decision.alternatives[0]
    assert text == f"{call.expert} says: write a python"  # 5 tokens, the first two are "<expert> says:"
    assert call.usage == Usage(prompt_tokens=8, completion_tokens=5)
    t = call.timings
    assert t.routed is not None and t.first_token is not None
    assert t.arrival <= t.routed <= t.first_token and t.finished is None  # only the server settles
    assert call.lease is not None and call.lease.handle.spec.name == call.expert
    assert engine.pool.in_flight(call.expert) == 0  # the lease was given back
    assert engine.scheduler.depth().get("coder", 0) == 0


def test_a_call_no_expert_answers_keeps_its_path(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_generate": True}})
    call = _call("coder")

    async def run() -> None:
        try:
            await engine.route(call)
            with pytest.raises(ExpertFailed):
                await engine.complete(call)
        finally:
            await engine.close()

    asyncio.run(run())
    assert (call.expert, call.tried, call.usage, call.timings.first_token) == ("coder", ["coder"], None, None)


def test_settle_accounts_once(tmp_path: Path) -> None:
    admission, quota, metrics = Admission(4, 4), Quota(), Metrics()
    decisions = DecisionLog(tmp_path / "decisions.sqlite")
    decisions.start()
    outcomes = Outcomes(admission, quota, metrics, decisions)
    call = _call("small")
    call.decision = Decision("small", None, 1.0, (), "pinned")
    admission.admit(call)
    admission.claim(call)
    call.expert, call.usage = "small", Usage(3, 4)
    call.timings.first_token = call.timings.arrival
    outcomes.settle("200", call, "small says: hi")
    outcomes.settle("500", call)  # a second settle of the same call does nothing
    outcomes.settle("401")  # refused before it was parsed: only counted
    decisions.close()
    assert (admission.pending, admission.per_expert) == (0, {})
    assert call.status == "200" and call.timings.finished is not None
    sample = metrics.registry.get_sample_value
    assert sample("coserve_requests_total", {"status": "200"}) == 1.0
    assert sample("coserve_requests_total", {"status": "500"}) is None
    assert sample("coserve_requests_total", {"status": "401"}) == 1.0
    assert sample("coserve_request_seconds_count", {"expert": "small"}) == 1.0
    with sqlite3.connect(tmp_path / "decisions.sqlite") as db:
        rows = db.execute("SELECT id, expert, status, prompt_tokens, completion_tokens FROM decisions").fetchall()
    assert rows == [(call.id, "small", "200", 3, 4)]
