"""The chat bodies the tool-turn tests send (test_tool_turns.py, test_tool_call_ids.py): a question,
a function, an assistant turn calling it, a tool turn answering a call, and the post of them."""

from __future__ import annotations

from typing import Any

from conftest import HELD_OUT
from fastapi.testclient import TestClient

URL = "/v1/chat/completions"
QUESTION = {"role": "user", "content": HELD_OUT["code"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def calling(*ids: str) -> dict[str, Any]:
    """An assistant turn calling get_weather once per id."""
    calls = [{"id": i, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}} for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def result(call_id: str) -> dict[str, Any]:
    """A tool turn answering the call ``call_id``."""
    return {"role": "tool", "tool_call_id": call_id, "content": "sunny"}


def post(client: TestClient, messages: list[dict[str, Any]], **fields: Any) -> Any:
    """The chat request of ``messages`` (routed, two tokens unless ``fields`` say otherwise)."""
    return client.post(URL, json={"model": "coserve", "messages": messages, "max_tokens": 2, **fields})
