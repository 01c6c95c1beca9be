"""What ``llamacpp-split`` names when the request's tools are what it cannot take, on the real
``coder`` (Qwen2.5-Coder-0.5B, whose template renders tools), loaded straight on the backend with a
1,024-token context: a prompt pushed over the context by the rendered tools is a 413 naming
``tools`` (the conversation alone fits), one too long without them a 413 naming ``messages``; a
forced call whose function's schema llguidance cannot compile is a 400 naming that function's
``parameters``. Nothing is generated: each is refused before the decode.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import pytest

from coserve.errors import ContextTooLong, InvalidRequest
from coserve.types import Message, Sampling

pytestmark = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp")

CONTEXT = 1024


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    parameters = parameters or {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city, as its people write it"}},
        "required": ["city"],
    }
    return {"type": "function", "function": {"name": name, "description": f"Tool {name}", "parameters": parameters}}


@pytest.fixture(scope="module")
def coder() -> Iterator[tuple[Any, Any]]:
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend
    from coserve.config import load_library

    library = load_library()
    options = {"n_parallel": 1, "threads": 1}
    spec = library.expert("coder").model_copy(update={"context": CONTEXT, "options": options})
    backend = LlamaCppSplitBackend()
    staged = backend.stage(spec, library.path.parent if library.path else None)
    handle = backend.load(spec, staged)
    try:
        yield backend, handle
    finally:
        backend.unload(handle)
        backend.unstage(staged)


def _stream(coder: tuple[Any, Any], text: str, sampling: Sampling) -> None:
    backend, handle = coder
    backend.stream(handle, (Message("user", text),), sampling, lambda chunk: False)


def test_a_prompt_pushed_over_the_context_by_its_tools_is_a_413_naming_tools(coder: tuple[Any, Any]) -> None:
    many = json.dumps([_tool(f"lookup_{i}") for i in range(60)])  # about 60 x 50 tokens rendered
    with pytest.raises(ContextTooLong) as over:
        _stream(coder, "What is the weather in Paris?", Sampling(max_tokens=4, tools=many))
    assert (over.value.status, over.value.param) == (413, "tools")
    long_text = "Paris " * (CONTEXT + 100)  # too long with no tools at all
    with pytest.raises(ContextTooLong) as too_long:
        _stream(coder, long_text, Sampling(max_tokens=4, tools=json.dumps([_tool("lookup")])))
    assert too_long.value.param == "messages"
    with pytest.raises(ContextTooLong) as both:
        _stream(coder, long_text, Sampling(max_tokens=4, tools=many))
    assert both.value.param == "messages"  # the conversation alone does not fit


def test_a_forced_call_whose_schema_does_not_compile_is_a_400_naming_that_function(coder: tuple[Any, Any]) -> None:
    unresolved = {"type": "object", "properties": {"place": {"$ref": "#/$defs/Missing"}}}  # valid JSON Schema
    tools = json.dumps([_tool("fine"), _tool("broken", unresolved)])
    with pytest.raises(InvalidRequest) as refused:
        _stream(coder, "Where?", Sampling(max_tokens=4, tools=tools, tool_choice="required"))
    assert refused.value.param == "tools[1].function.parameters"
    assert "'broken'" in str(refused.value)
