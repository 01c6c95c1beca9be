"""The transformers (and vllm) backends count a prompt from the expert's tokenizer and chat template
alone (coserve.backends.hf_tokenizer), so a prompt too long for every expert is refused 413 before any
weights are read, as llama.cpp's backends do. The tokenizer tests need ``transformers`` (no torch);
the backend's need ``coserve[torch]`` and the default library's smallest GGUF file; each skips
cleanly where its packages are missing (CI has neither)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from test_server import URL, assert_error, body, serve

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.router.embed import HashingEmbedder
from coserve.types import Chunk, Message, Sampling
from tests.conftest import library_data

HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAVE_TORCH_EXTRA = all(importlib.util.find_spec(n) is not None for n in ("torch", "transformers", "gguf"))
needs_transformers = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="transformers is not installed")
needs_torch_extra = pytest.mark.skipif(not HAVE_TORCH_EXTRA, reason="coserve[torch] is not installed")

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
TOOLS = '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]'


def _word_folder(tmp_path: Path) -> Path:
    """A model folder holding only a tokenizer: one token per word or punctuation run, a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "user": 1, "assistant": 2, ":": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "words"
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", chat_template=TEMPLATE).save_pretrained(folder)
    return folder


@needs_transformers
def test_the_counter_counts_the_chat_template_s_tokens_from_the_tokenizer_files(tmp_path: Path) -> None:
    from coserve.backends.hf_tokenizer import Tokenizers, template_counter

    folder = _word_folder(tmp_path)
    assert not list(folder.glob("*.safetensors"))  # no weights: the tokenizer files alone
    tokenizers = Tokenizers()
    tokenizer = tokenizers.get(folder)
    assert tokenizers.get(folder) is tokenizer  # read once per folder
    count = template_counter(tokenizer)
    one = (Message("user", "hello there friend"),)
    assert count(one, Sampling()) == 7  # user : hello there friend / assistant :
    two = (Message("system", "be brief."), *one)
    assert count(two, Sampling()) == 7 + 5  # system : be brief .
    assert count(one, Sampling(tools=TOOLS)) is None  # neither backend renders tools: it cannot tell
    assert count(one, Sampling(tools=TOOLS, tool_choice="none")) == 7


def _library(tmp_path: Path, context: int) -> Path:
    """The small library with ``small`` served by transformers from the default library's 135M GGUF."""
    data = library_data()
    general = load_library().expert("general")
    small = data["experts"][0]
    small.update(backend="transformers", source=general.source, context=context, options={"device": "cpu"})
    path = tmp_path / "library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@needs_torch_extra
def test_a_prompt_too_long_for_a_transformers_expert_is_refused_before_its_weights_are_read(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the expert was staged (its weights read and dequantised: seconds to minutes) and only then
    did its ``stream`` refuse the prompt."""
    from coserve.backends.transformers_hf import TransformersBackend

    staged: list[str] = []

    def stage(self: TransformersBackend, spec: object, base: object) -> None:
        staged.append(str(getattr(spec, "name", spec)))
        raise AssertionError("staged")

    monkeypatch.setattr(TransformersBackend, "stage", stage)
    engine = Engine.build(load_library(_library(tmp_path, context=256)), cache, embedder=HashingEmbedder())
    try:
        with serve(engine) as client:
            response = client.post(URL, json=body(" ".join(["word"] * 400), model="small"))
            assert_error(response, 413, "context_length_exceeded", "messages")
            assert "tokens)" in response.json()["error"]["message"]  # the expert's own count
    finally:
        engine.executor.shutdown(wait=False, cancel_futures=True)
    assert staged == []


@pytest.mark.e2e
@needs_torch_extra
def test_the_transformers_counter_counts_what_its_stream_counts(tmp_path: Path) -> None:
    """The real twin: the counter against the prompt tokens ``stream`` reports, on the 135M model (CPU)."""
    from coserve.backends.transformers_hf import TransformersBackend

    library = load_library(_library(tmp_path, context=2048))
    spec, base = library.expert("small"), library.path.parent if library.path else None
    backend = TransformersBackend()
    count = backend.prompt_counter(spec, base)
    cases = [
        (Message("user", "Hi"),),
        (Message("system", "Be brief."), Message("user", "déjà vu, <|im_start|> " * 40)),
        (Message("user", "a"), Message("assistant", "b"), Message("user", "c <s> </s> [INST]")),
        (Message("user", "  leading spaces\n\nand 日本語 emoji 🎉"),),
    ]
    staged = backend.stage(spec, base)
    handle = backend.load(spec, staged)
    try:
        for messages in cases:
            parts: list[Chunk] = []
            backend.stream(handle, messages, Sampling(max_tokens=1), parts.append)  # type: ignore[arg-type]
            usage = parts[-1].usage
            assert usage is not None and count(messages, Sampling()) == usage.prompt_tokens > 0
    finally:
        backend.unload(handle)
        backend.unstage(staged)
