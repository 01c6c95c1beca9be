"""Log-probabilities (issue 18, item 3): ``logprobs`` and ``top_logprobs`` in OpenAI's shape.

Over fake experts, whose scripted values (coserve/backends/fake.py: the word at place i has
``-0.125 * (i % 4)``, its alternatives ``<alt1>``.. 1, 2, ... less) give exact expectations; then
the real ``general`` expert (llamacpp-split) computes them from its logits: finite, <= 0, the top
ones sorted and, greedy, led by the sampled token; and through the official openai client against
a live server on the default library.
"""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_params import chat

URL = "/v1/chat/completions"
# PROMPT is routed to "small": its answer is "small says: hello friend how ..."
WORDS = ["small", " says:", " hello", " friend"]


def expected_entry(place: int, top: int) -> dict[str, Any]:
    word = WORDS[place]
    logprob = -0.125 * (place % 4)
    alternatives = [(word, logprob)] + [(f"<alt{j}>", logprob - j) for j in range(1, top)]
    return {
        "token": word,
        "logprob": logprob,
        "bytes": list(word.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives[:top]],
    }


def test_a_completion_carries_one_entry_per_token(client: TestClient) -> None:
    body = client.post(URL, json=chat(max_tokens=4, logprobs=True, top_logprobs=3)).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "".join(WORDS)
    assert choice["logprobs"] == {"content": [expected_entry(i, 3) for i in range(4)], "refusal": None}


def test_without_top_logprobs_the_alternatives_are_empty(client: TestClient) -> None:
    choice = client.post(URL, json=chat(max_tokens=2, logprobs=True)).json()["choices"][0]
    assert choice["logprobs"]["content"] == [expected_entry(0, 0), expected_entry(1, 0)]


def test_not_asked_no_logprobs(client: TestClient) -> None:
    for fields in ({}, {"logprobs": False}):
        assert "logprobs" not in client.post(URL, json=chat(max_tokens=2, **fields)).json()["choices"][0]


def test_streamed_each_chunk_carries_its_tokens(client: TestClient) -> None:
    text = client.post(URL, json=chat(max_tokens=4, stream=True, logprobs=True, top_logprobs=2)).text
    events = [json.loads(line.removeprefix("data: ")) for line in text.split("\n\n") if line and "[DONE]" not in line]
    content = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert [c["delta"]["content"] for c in content] == WORDS
    assert [c["logprobs"]["content"] for c in content] == [[expected_entry(i, 2)] for i in range(4)]


def test_a_stop_string_keeps_the_entries_of_the_text_it_held_back(client: TestClient) -> None:
    """ " friend" is held back while it may begin " friends": its entry still comes, once."""
    body = client.post(URL, json=chat(max_tokens=6, stop=[" friends"], logprobs=True)).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "small says: hello friend how are"
    tokens = [entry["token"] for entry in choice["logprobs"]["content"]]
    assert tokens == [*WORDS, " how", " are"]


# -- the real expert ------------------------------------------------------------------------------
needs_llama = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp")


@pytest.mark.e2e
@needs_llama
def test_llamacpp_split_computes_them_from_the_logits() -> None:
    from general_expert import loaded_general, stream_all

    from coserve.backends.llamacpp_split import LlamaCppSplitBackend
    from coserve.types import Sampling

    backend = LlamaCppSplitBackend()
    with loaded_general("llamacpp-split", backend) as handle:
        sampling = Sampling(max_tokens=12, temperature=0.0, logprobs=True, top_logprobs=5)
        chunks = stream_all(backend, handle, "Count from 1 to 10, separated by commas.", sampling)
        entries = [entry for chunk in chunks for entry in chunk.logprobs]
        assert len(entries) == chunks[-1].usage.completion_tokens == 12  # type: ignore[union-attr]
        assert "".join(chunk.text for chunk in chunks) == "".join(e.token for e in entries)
        for entry in entries:
            assert math.isfinite(entry.logprob) and entry.logprob <= 0.0
            values = [logprob for _, logprob, _ in entry.top]
            assert len(values) == 5 and values == sorted(values, reverse=True)
            assert entry.top[0] == (entry.token, entry.logprob, entry.token_bytes)  # greedy: the most likely
            assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6


@pytest.mark.e2e
@needs_llama
def test_the_openai_client_gets_them_from_a_live_server(tmp_path: Any) -> None:
    from live import LiveServer
    from openai import OpenAI

    with LiveServer(tmp_path, bundled=True, start_timeout=180.0) as live:
        client = OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=120)
        messages: Any = [{"role": "user", "content": "Name three primary colours."}]
        reply = client.chat.completions.create(
            model="general", messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
        )
        content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content is not None and len(content) == reply.usage.completion_tokens  # type: ignore[union-attr]
        assert "".join(entry.token for entry in content) == reply.choices[0].message.content
        for entry in content:
            assert math.isfinite(entry.logprob) and entry.logprob <= 0.0
            assert [t.logprob for t in entry.top_logprobs] == sorted(
                (t.logprob for t in entry.top_logprobs), reverse=True
            )
            assert entry.top_logprobs[0].token == entry.token
        stream = client.chat.completions.create(
            model="general", messages=messages, max_tokens=8, temperature=0, logprobs=True, stream=True
        )
        streamed = [c.choices[0].logprobs.content for c in stream if c.choices and c.choices[0].logprobs]
        assert [entry.token for part in streamed for entry in part or []] == [entry.token for entry in content]


def _greedy_logprobs(backend_name: str, backend: Any) -> list[tuple[str, float]]:
    from general_expert import loaded_general, stream_all

    from coserve.types import Sampling

    with loaded_general(backend_name, backend) as handle:
        sampling = Sampling(max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=2)
        chunks = stream_all(backend, handle, "Count from 1 to 10, separated by commas.", sampling)
        return [(entry.token, entry.logprob) for chunk in chunks for entry in chunk.logprobs]


@pytest.mark.e2e
@needs_llama
def test_llamacpp_forwards_the_servers_and_they_agree_with_llamacpp_split() -> None:
    """Two derivations of the same numbers: llama.cpp's server (``llamacpp``, OpenAI's logprobs
    through xllamacpp) and coserve's own log-softmax of the logits (``llamacpp-split``)."""
    from coserve.backends.llamacpp import LlamaCppBackend
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    server = _greedy_logprobs("llamacpp", LlamaCppBackend())
    split = _greedy_logprobs("llamacpp-split", LlamaCppSplitBackend())
    assert len(server) == 6 and [t for t, _ in server] == [t for t, _ in split]
    for (_, ours), (_, theirs) in zip(split, server, strict=True):
        assert ours == pytest.approx(theirs, abs=0.01)
