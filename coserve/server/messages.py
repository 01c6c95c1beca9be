"""The messages of a chat body: one pydantic model per role, as OpenAI's own schema is shaped, so
that the OpenAPI document says what each role may carry (a ``tool`` turn the ``tool_call_id`` of
the call it answers, only an ``assistant`` turn ``tool_calls``, whose ``content`` may then be null).

This module knows nothing about routing, engines or how responses are written.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from coserve.server.tool_params import ToolCallParam

__all__ = ["AssistantMessage", "ChatMessage", "ContentPart", "SystemMessage", "ToolMessage", "UserMessage"]


class ContentPart(BaseModel):
    """A text part of a message's content (OpenAI's array form); other part types are refused."""

    type: Literal["text"]
    text: str


class _Turn(BaseModel):
    """What every message has; one model per role below (OpenAI's own schema is shaped so)."""

    # Empty echoes are dropped first (coserve.server.protocol._served_only).
    model_config = ConfigDict(extra="forbid")

    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)  # as vLLM and llama.cpp's server join them


class SystemMessage(_Turn):
    role: Literal["system", "developer"]


class UserMessage(_Turn):
    role: Literal["user"]


class AssistantMessage(_Turn):
    role: Literal["assistant"]
    # Null (or left out: coserve.server.protocol fills it in) only when the turn calls tools.
    content: str | list[ContentPart] | None  # type: ignore[assignment]
    tool_calls: list[ToolCallParam] | None = None


class ToolMessage(_Turn):
    role: Literal["tool"]
    tool_call_id: str  # the call it answers


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]
