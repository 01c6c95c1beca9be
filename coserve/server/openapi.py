"""OpenAPI documentation of the routes that read their JSON body themselves.

The chat and feedback routes parse their raw body (to bound its size and map every error to an
OpenAI-style body), so FastAPI cannot infer a request schema for them. ``documented(model, ...)``
gives a route's ``openapi_extra``: the body's JSON schema (from its pydantic model, with its
``$defs`` inlined) and the error statuses the route may answer with.

This module knows nothing about routing, engines or how bodies are parsed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["ERROR_SCHEMA", "documented", "error_responses"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_WHY = {
    400: "malformed body or field",
    401: "missing, unknown or revoked API key",
    404: "unknown model, expert or request id",
    413: "the prompt does not fit the expert's context",
    422: "out-of-range values or infeasible constraints",
    429: "admission bound, key rate or key token budget reached (Retry-After)",
    502: "the expert failed while generating",
    503: "an expert is unavailable, or the server is draining (Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` entries for these error statuses, each with the error body's schema."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"description": _WHY[status], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for status in statuses
    }
    return responses


def _inline(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    if depth > 32:  # the protocol's models are not recursive; this bounds a mistake
        raise ValueError("the schema nests too deeply to inline")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs, depth + 1)
        # A discriminator's mapping names $defs that are inlined away: its oneOf says the same.
        return {key: _inline(value, defs, depth + 1) for key, value in node.items() if key != "discriminator"}
    if isinstance(node, list):
        return [_inline(value, defs, depth + 1) for value in node]
    return node


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model``'s JSON schema as the route's required request body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(schema, defs)}}}}
