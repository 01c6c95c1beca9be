"""A function's ``parameters`` that refer to themselves (``$ref: "#"``, a recursive tree; or a JSON
pointer from their root, ``#/properties/a``), left by session 13's agent walk: inside a forced call's
grammar the parameters sit below the call's own schema, so such a reference must still mean the
parameters (not the call), and the grammar must compile. The expected instances are written out
from JSON Schema's meaning of the declared parameters and checked with ``jsonschema``.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from coserve.backends.structured import grammar
from coserve.types import Sampling

TREE = {  # a node: a name and children that are nodes
    "type": "object",
    "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
    "required": ["name"],
    "additionalProperties": False,
}
ALIAS = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}}}


def _forced(*functions: tuple[str, dict[str, Any]]) -> str:
    tools = [{"type": "function", "function": {"name": name, "parameters": p}} for name, p in functions]
    text = grammar(Sampling(tools=json.dumps(tools), tool_choice="required"))
    assert text is not None
    return text


def _validator(text: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(text.split("body: %json ", 1)[1]))


def test_a_reference_to_the_parameters_root_means_the_parameters() -> None:
    check = _validator(_forced(("tree", TREE), ("alias", ALIAS)))
    leaf = {"name": "b", "children": []}
    assert check.is_valid({"name": "tree", "arguments": {"name": "a", "children": [leaf, {"name": "c"}]}})
    assert not check.is_valid({"name": "tree", "arguments": {"name": "a", "children": [{"children": []}]}})
    a_call = {"name": "tree", "arguments": leaf}  # what '#' meant before: the call's own schema
    assert not check.is_valid({"name": "tree", "arguments": {"name": "a", "children": [a_call]}})
    assert not check.is_valid({"name": "tree", "arguments": {"name": "a", "children": [3]}})
    assert check.is_valid({"name": "alias", "arguments": {"a": "x", "b": "y"}})
    assert not check.is_valid({"name": "alias", "arguments": {"b": 3}})


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp")
@pytest.mark.parametrize("parameters", [TREE, ALIAS], ids=["tree", "alias"])
def test_a_self_referring_function_s_grammar_compiles_on_a_real_model(parameters: dict[str, Any]) -> None:
    """llguidance (in the llama.cpp that ``llamacpp-split`` runs) compiles the forced call's grammar:
    before, ``#/properties/a`` pointed at nothing in the call's schema and the request was a 400."""
    from coserve.backends import llama_capi, llama_grammar
    from coserve.backends.llama_memory import gguf_path
    from coserve.backends.llama_model import LoadedModel
    from coserve.config import load_library

    library = load_library()
    spec = library.expert("general")
    model = LoadedModel(spec, gguf_path(spec, library.path.parent if library.path else None))
    try:
        llama_capi.lib().llama_sampler_free(llama_grammar.grammar_sampler(model, _forced(("f", parameters))))
    finally:
        model.release(drop=False)
