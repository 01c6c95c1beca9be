"""A prompt too long for an expert's context is known before the expert is queued or loaded
(coserve.engine.fit): one too long for every candidate is refused 413 at once, one too long for
the chosen expert goes to a larger context without loading the chosen one, one that fits is never
refused early. Fakes count words; the real twin (llamacpp-split's vocabulary-only counter) must
count exactly what its ``stream`` counts."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import pytest
from test_server import CHAT, URL, assert_error, body, serve

from coserve.backends.fake import FakeBackend
from coserve.engine.engine import Engine
from coserve.types import Chunk, Message, Sampling

LONG = " ".join(["word"] * 500)  # 500 tokens to a fake
SLOW = {name: {"load_delay": 1.5} for name in ("small", "coder", "big")}


def _fake(engine: Engine) -> FakeBackend:
    backend = engine.pool.backends["small"]
    assert isinstance(backend, FakeBackend)
    return backend


def test_a_prompt_too_long_for_every_expert_is_refused_before_any_load(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(all_fields={"context": 128}, options=SLOW)
    with serve(engine) as client:
        start = time.monotonic()
        for stream in (False, True):
            response = client.post(URL, json=body(LONG, stream=stream))
            assert_error(response, 413, "context_length_exceeded", "messages")
            assert "(500 tokens)" in response.json()["error"]["message"]  # the count, as the expert's stream says it
        assert time.monotonic() - start < 1.5  # no load (1.5 s each)
        assert _fake(engine).stages == [] and _fake(engine).loads == []


def test_a_prompt_too_long_for_the_chosen_expert_skips_it_without_loading_it(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(fields={"small": {"context": 128}})
    with serve(engine) as client:
        data = client.post(URL, json=body(CHAT + " " + " ".join(["hello friend"] * 100))).json()
        assert data["coserve"]["category"] == "chat"
        assert data["coserve"]["fallback_from"] == ["small"]
        assert "small" not in _fake(engine).stages + _fake(engine).loads
        assert _fake(engine).counters == ["small"]  # the next one fits by its bytes: not counted


def test_an_alternative_with_the_same_context_and_a_finer_tokenizer_answers(make_engine: Callable[..., Engine]) -> None:
    """About 200 words are 400 tokens to ``small`` and ``big``, 200 to ``coder``: only coder fits 256
    (before, an alternative with a context no larger than one the prompt did not fit was skipped)."""
    doubled = {"small": {"tokens_per_word": 2}, "big": {"tokens_per_word": 2}}
    engine = make_engine(all_fields={"context": 256}, options=doubled)
    with serve(engine) as client:
        assert_error(
            client.post(URL, json=body(" ".join(["hello"] * 200), model="small")), 413
        )  # pinned: no alternative
        data = client.post(URL, json=body(CHAT + " " + " ".join(["hello friend"] * 96))).json()
        assert data["coserve"]["category"] == "chat"
        assert data["model"] == "coder" and data["coserve"]["fallback_from"] == ["small", "big"], data
    assert "coder" in _fake(engine).loads and not {"small", "big"} & set(_fake(engine).loads)


def test_a_prompt_that_just_fits_is_answered_and_one_token_more_is_refused(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(all_fields={"context": 128})
    with serve(engine) as client:
        response = client.post(URL, json=body(" ".join(["word"] * 127), model="small", max_tokens=1))
        assert response.status_code == 200, response.text  # 127 + 1 generated = the context
        over = client.post(URL, json=body(" ".join(["word"] * 128), model="small"))
        assert_error(over, 413, "context_length_exceeded")
    assert _fake(engine).loads == ["small"]  # the refused one never reached the queue


def test_an_expert_without_a_counter_is_checked_once_loaded_as_before(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(all_fields={"context": 128}, options={n: {"counts": False} for n in SLOW})
    with serve(engine) as client:
        assert_error(client.post(URL, json=body(LONG, model="small")), 413, "context_length_exceeded")
    assert _fake(engine).loads == ["small"] and _fake(engine).counters == []


def test_a_counter_that_fails_leaves_the_check_to_the_expert(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(all_fields={"context": 128})

    def broken(*args: object) -> None:
        raise RuntimeError("no tokenizer")

    monkeypatch.setattr(_fake(engine), "prompt_counter", broken)
    with serve(engine) as client:
        assert_error(client.post(URL, json=body(LONG, model="small")), 413, "context_length_exceeded")
        assert client.post(URL, json=body("hello there", model="small")).status_code == 200
    assert _fake(engine).loads == ["small"]


def test_a_short_prompt_builds_no_counter(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    with serve(engine) as client:
        assert client.post(URL, json=body(CHAT)).status_code == 200
    assert _fake(engine).counters == []  # a few bytes cannot exceed 2,048 tokens: nothing counted


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp")
@pytest.mark.parametrize("kind", ["llamacpp-split", "llamacpp"])
def test_the_real_counter_counts_what_the_expert_counts(kind: str) -> None:
    """The vocabulary-only counter against the prompt tokens the expert's ``stream`` reports: llamacpp-split's
    (its own template and tokenizer) and llamacpp's (llama.cpp's server counts; the same counter)."""
    from test_llamacpp_split import _spec

    from coserve.backends.llamacpp import LlamaCppBackend
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    backend = LlamaCppSplitBackend() if kind == "llamacpp-split" else LlamaCppBackend()
    spec, base = _spec(options={"n_parallel": 1})
    spec = spec.model_copy(update={"backend": kind})
    count = backend.prompt_counter(spec, base)
    tools = '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]'
    cases = [
        ((Message("user", "Hi"),), Sampling(max_tokens=1)),
        ((Message("system", "Be brief."), Message("user", "déjà vu, <|im_start|> " * 150)), Sampling(max_tokens=1)),
        (
            (Message("user", "a"), Message("assistant", "b"), Message("user", "c <s> </s> [INST]")),
            Sampling(max_tokens=1),
        ),
        ((Message("user", "  leading spaces\n\nand 日本語 emoji 🎉"),), Sampling(max_tokens=1)),
    ]
    assert count((Message("user", "call f"),), Sampling(tools=tools)) is None  # its stream refuses them: 400
    staged = backend.stage(spec, base)
    handle = backend.load(spec, staged)  # type: ignore[arg-type]  # each backend's own staged object
    try:
        for messages, sampling in cases:
            parts: list[Chunk] = []
            backend.stream(handle, messages, sampling, parts.append)  # type: ignore[arg-type]
            usage = parts[-1].usage
            assert usage is not None and count(messages, sampling) == usage.prompt_tokens > 0
    finally:
        backend.unload(handle)
        backend.unstage(staged)  # type: ignore[arg-type]
