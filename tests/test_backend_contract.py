"""One conformance test of the Backend contract (coserve/backends/base.py) over every backend.

Each backend runs the same assertions: chunks then one last chunk with finish_reason and usage;
the token cap honoured exactly (the request's, else the expert's ``options.max_tokens``); a prompt
too long for the context is the one ContextTooLong; stop strings cut the text; ``emit`` returning
True stops generation; ``load`` works from the staged object alone and ``unload``/``unstage`` free
it; the declared concurrency is served at once; a broken expert fails with the errors that mean
"fall back". The fake runs everywhere; its real twins run where their runtime is installed:
llama.cpp on the default library's ``general`` expert (SmolLM2-135M), ``openai`` against a real
coserve server on loopback serving that same model, ``transformers`` and ``vllm`` where their
packages are (skipped with the reason otherwise).
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import library_data
from live import app_in_thread

from coserve.backends.base import Backend, Handle
from coserve.backends.registry import get_backend
from coserve.config import ExpertSpec, load_library
from coserve.engine.engine import Engine
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.router.embed import HashingEmbedder
from coserve.types import Chunk, Message, Sampling

CONTEXT = 512  # tokens (words for the fake): small, so a too-long prompt is cheap
TOO_LONG = "word " * 700  # more than CONTEXT tokens for every tokenizer here
COUNT = "Count from 1 to 200, separated by spaces."  # a long answer for every model
BACKENDS = ["fake", "llamacpp", "llamacpp-split", "openai", "transformers", "vllm"]
NEEDS = {  # backend -> the package its runtime needs
    "llamacpp": "xllamacpp",
    "llamacpp-split": "xllamacpp",  # its C API through ctypes, from the library inside xllamacpp
    "openai": "xllamacpp",  # the upstream server serves the real model through the llamacpp backend
    "transformers": "torch",
    "vllm": "vllm",
}


@dataclass
class Case:
    backend: Backend
    spec: ExpertSpec
    base: Path | None
    broken: ExpertSpec  # staging or loading it must fail with AssetError or ExpertLoadError


def _general(backend: str, **options: Any) -> tuple[dict[str, Any], Path | None]:
    """The default library's ``general`` expert (SmolLM2-135M) as library data for ``backend``."""
    library = load_library()
    spec = library.expert("general")
    data = spec.model_dump(mode="json", exclude_none=True)
    data.update(backend=backend, context=CONTEXT, options={"n_parallel": 2, **options})
    for key in ("sha256", "parts"):
        data.pop(key, None)
    return data, library.path.parent if library.path else None


def _library(data: dict[str, Any], folder: Path, name: str) -> Path:
    """A library file whose one expert is ``data``, named ``name`` (every category maps to it)."""
    library = library_data()
    library["experts"] = [{**data, "name": name}]
    library["router"]["map"] = dict.fromkeys(library["categories"], name)
    library["router"]["fallback"] = {"expert": name, "min_confidence": 0.4}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(library, sort_keys=False))
    return path


def _spec(data: dict[str, Any], folder: Path, name: str) -> ExpertSpec:
    """One expert's data as an ExpertSpec, read through a library file (so it is checked)."""
    return load_library(_library(data, folder, name)).expert(name)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real coserve server on 127.0.0.1 serving SmolLM2-135M (backend llamacpp) as ``general``."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("the upstream server needs xllamacpp")
    folder = tmp_path_factory.mktemp("upstream")
    data, _ = _general("llamacpp")  # its source is a pkg: path, found wherever the library file is
    library = load_library(_library(data, folder, "general"))
    engine = Engine.build(library, folder, embedder=HashingEmbedder())
    with app_in_thread(engine) as url:
        yield url


@pytest.fixture(params=[name if name == "fake" else pytest.param(name, marks=pytest.mark.e2e) for name in BACKENDS])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    name: str = request.param
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{name}: {NEEDS[name]} is not installed here")
    if name == "fake":
        data: dict[str, Any] = {"backend": "fake", "source": "fake", "params_b": 0.1, "context": CONTEXT}
        base: Path | None = None
        broken = {**data, "options": {"fail_stage": True}}
    elif name == "openai":
        url = request.getfixturevalue("upstream")
        data = {"backend": "openai", "source": "remote", "params_b": 0.135, "context": CONTEXT}
        data["options"] = {"base_url": url, "model": "general", "n_parallel": 2}
        base = None
        broken = {**data, "options": {"base_url": "http://127.0.0.1:9/v1"}}  # nothing listens on port 9
    else:
        options = {"device": "cpu", "dtype": "float32"} if name == "transformers" else {}
        data, base = _general(name, **options)
        if name == "vllm":
            pytest.skip("vllm reads a Hugging Face folder; its real run is tests/test_vllm_backend.py")
        broken = {**data, "source": str(tmp_path / "missing.gguf")}
    return Case(get_backend(name), _spec(data, tmp_path, "case"), base, _spec(broken, tmp_path, "broken"))


def run(case: Case, handle: Handle, prompt: str, stop_after: int | None = None, **sampling: Any) -> list[Chunk]:
    """Stream greedily; ``stop_after``: emit returns True at that text chunk (the caller went away)."""
    chunks: list[Chunk] = []

    def emit(chunk: Chunk) -> bool:
        chunks.append(chunk)
        return stop_after is not None and len(chunks) >= stop_after

    settings = Sampling(**{"temperature": 0.0, **sampling})
    case.backend.stream(handle, (Message("user", prompt),), settings, emit)
    return chunks


def finished(chunks: list[Chunk]) -> Chunk:
    """The contract's shape: text chunks, then one last chunk with finish_reason and usage."""
    *body, last = chunks
    assert all(c.finish_reason is None and c.usage is None for c in body)
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    return last


@pytest.fixture
def loaded(case: Case) -> Iterator[Handle]:
    staged = case.backend.stage(case.spec, case.base)
    handle = case.backend.load(case.spec, staged)
    yield handle
    case.backend.unload(handle)
    case.backend.unstage(staged)


def test_the_last_chunk_carries_finish_and_usage_and_the_cap_is_exact(case: Case, loaded: Handle) -> None:
    chunks = run(case, loaded, COUNT, max_tokens=7)
    last = finished(chunks)
    texts = [c for c in chunks if c.text]
    assert last.finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 7 == len(texts)  # one chunk per token
    assert last.usage.prompt_tokens > 0


def test_the_experts_max_tokens_is_the_cap_when_the_request_names_none(case: Case, tmp_path: Path) -> None:
    data = case.spec.model_dump(mode="json", exclude_none=True)
    data["options"] = {**data["options"], "max_tokens": 5}
    spec = _spec(data, tmp_path, "capped")
    staged = case.backend.stage(spec, case.base)
    handle = case.backend.load(spec, staged)
    try:
        last = finished(run(case, handle, COUNT))
        assert last.finish_reason == "length" and last.usage is not None and last.usage.completion_tokens == 5
    finally:
        case.backend.unload(handle)
        case.backend.unstage(staged)


def test_a_prompt_too_long_for_the_context_is_the_one_error(case: Case, loaded: Handle) -> None:
    with pytest.raises(ContextTooLong) as info:
        run(case, loaded, TOO_LONG, max_tokens=4)
    pattern = rf"the prompt (\(\d+ tokens\) )?exceeds the context of expert 'case' \({CONTEXT} tokens\)"
    assert re.fullmatch(pattern, info.value.message) and info.value.param == "messages"
    assert finished(run(case, loaded, "Hi", max_tokens=2))  # the expert still serves


def test_a_stop_string_cuts_the_text_and_ends_with_stop(case: Case, loaded: Handle) -> None:
    solo = "".join(c.text for c in run(case, loaded, COUNT, max_tokens=24))
    stop = solo[len(solo) // 2 : len(solo) // 2 + 3]
    expected = solo[: solo.find(stop)]
    chunks = run(case, loaded, COUNT, max_tokens=24, stop=(stop,))
    last = finished(chunks)
    assert "".join(c.text for c in chunks) == expected and last.finish_reason == "stop"


def test_emit_returning_true_stops_generation(case: Case, loaded: Handle) -> None:
    chunks = run(case, loaded, COUNT, stop_after=3, max_tokens=64)
    assert len(chunks) == 3 and all(c.finish_reason is None for c in chunks)  # nothing after the cancel
    assert finished(run(case, loaded, "Hi", max_tokens=2))  # and the expert serves the next request


def test_load_needs_only_the_staged_object_and_unload_unstage_free_it(case: Case) -> None:
    staged = case.backend.stage(case.spec, case.base)
    other = get_backend(case.spec.backend)  # an instance that never saw this expert
    handle = other.load(case.spec, staged)
    reference = "".join(c.text for c in run(case, handle, COUNT, max_tokens=8))
    other.unload(handle)
    with pytest.raises(ExpertFailed):
        run(case, handle, COUNT, max_tokens=2)  # an unloaded handle refuses, it does not reload
    again = case.backend.load(case.spec, staged)  # the staged object stays valid after unload
    assert "".join(c.text for c in run(case, again, COUNT, max_tokens=8)) == reference
    case.backend.unload(again)
    case.backend.unstage(staged)
    for backend in (case.backend, other):  # the pool keeps the tiers: no per-expert record here
        held = [k for k, v in vars(backend).items() if isinstance(v, dict) and case.spec.name in v]
        assert held == []


def test_the_declared_concurrency_is_served_at_once(case: Case, loaded: Handle) -> None:
    n = case.backend.concurrency(case.spec)
    assert n == (1 if case.spec.backend == "transformers" else 2)  # n_parallel: 2 in every spec here
    prompts = [f"Say the number {i} three times." for i in range(n)]
    solo = {p: "".join(c.text for c in run(case, loaded, p, max_tokens=12)) for p in prompts}
    results: dict[str, list[Chunk]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def one(prompt: str) -> None:
        try:
            start.wait(timeout=30)
            results[prompt] = run(case, loaded, prompt, max_tokens=12)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    for prompt in prompts:
        last = finished(results[prompt])
        assert last.usage is not None and last.usage.completion_tokens >= len([c for c in results[prompt] if c.text])
        assert "".join(c.text for c in results[prompt]) == solo[prompt]  # no answer mixed with another


def test_a_broken_expert_fails_with_the_errors_that_mean_fall_back(case: Case) -> None:
    def move() -> None:
        staged = case.backend.stage(case.broken, case.base)
        handle = case.backend.load(case.broken, staged)
        case.backend.unload(handle)  # pragma: no cover - reached only if the contract is broken

    with pytest.raises((AssetError, ExpertLoadError)):
        move()


def test_every_registered_backend_is_covered() -> None:
    from coserve.backends.registry import BACKENDS as REGISTERED

    assert sorted(REGISTERED) == sorted(BACKENDS)
