"""Tool calls out of a local expert's streamed text: ``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`` blocks (Qwen2.5's and Hermes' convention, coserve.backends.structured) become
OpenAI tool calls; the rest of the text stays the answer's content.

A block becomes a call when its body is a JSON object whose ``name`` is one of the request's
functions and whose ``arguments`` is an object (or JSON text of one); any other block stays in the
content, as written. Small models often answer a tools request with the object alone, without
the tags (Qwen2.5-Coder-0.5B bare, -1.5B in a Markdown ```json fence): an answer that is nothing
but such an object, fenced or not, is a call too (held back until the answer ends). Text that may begin a block
is held back until it is known; whitespace around calls is dropped. How the calls are streamed:
coserve.backends.call_stream.

It knows nothing of runtimes, grammars or HTTP.
"""

from __future__ import annotations

import json
import uuid

from coserve.backends.structured import CALL_CLOSE, CALL_OPEN
from coserve.types import ToolCall, ToolCallDelta

__all__ = ["ToolCallParser", "call_deltas", "joined_calls", "new_call_id"]

_FENCE = "```"


def new_call_id() -> str:
    """A call's id, as OpenAI writes them (``call_`` and 24 characters)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def call_deltas(index: int, call: ToolCall) -> tuple[ToolCallDelta, ToolCallDelta]:
    """A call as OpenAI streams it: id and name first, then the arguments."""
    return ToolCallDelta(index, call.id, call.name, ""), ToolCallDelta(index, arguments=call.arguments)


def joined_calls(deltas: list[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """The whole calls of an answer from its streamed deltas (by index; arguments joined in order)."""
    calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
    for delta in deltas:
        held = calls.setdefault(delta.index, ["", "", ""])
        held[0], held[1] = delta.id or held[0], delta.name or held[1]
        held[2] += delta.arguments
    return tuple(ToolCall(*calls[index]) for index in sorted(calls))


def _may_be_bare(text: str) -> bool:
    """Whether an answer beginning so may be a call object alone (``{``, or a fence's backquotes)."""
    start = text.lstrip()
    return bool(start) and (start[0] == "{" or start.startswith(_FENCE) or _FENCE.startswith(start))


def _bare(text: str) -> str | None:
    """The JSON object an answer consists of, inside a Markdown fence or not (None if it is not one)."""
    body = text.strip()
    if body.startswith(_FENCE) and body.endswith(_FENCE) and "\n" in body:
        body = body[body.index("\n") + 1 : -len(_FENCE)].strip()  # without the ```json line
    return body if body.startswith("{") else None


class ToolCallParser:
    """Feeds on streamed text; gives back the content to emit and the calls completed."""

    def __init__(self, names: frozenset[str]):
        self.names = names  # the request's functions (empty: nothing is parsed)
        self.held = ""  # text not yet known to be content
        self.inside = False  # within a <tool_call> block (``held`` is its body)
        self.calls: list[ToolCall] = []
        self.said = False  # some content was emitted (a bare object is then no call)

    def _call(self, body: str) -> ToolCall | None:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("name") not in self.names:
            return None
        arguments = data.get("arguments", data.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(new_call_id(), data["name"], json.dumps(arguments, ensure_ascii=False))

    def _content(self, text: str) -> str:
        """Content to emit now: trailing whitespace waits (it may only come before a call), the rest
        goes (``held`` must not hold a block's body when this is called)."""
        body = text.rstrip()
        self.held = text[len(body) :] + self.held
        self.said = self.said or bool(body)
        return body

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """The content safe to emit after ``text``, and the calls it completed."""
        if not self.names:
            return text, []
        self.held += text
        out, calls = "", list[ToolCall]()
        while True:
            if self.inside:
                end = self.held.find(CALL_CLOSE)
                if end < 0:
                    return out, calls
                body, self.held, self.inside = self.held[:end], self.held[end + len(CALL_CLOSE) :], False
                call = self._call(body)
                if call is None:
                    out += self._emit_raw(CALL_OPEN + body + CALL_CLOSE)
                else:
                    self.calls.append(call)
                    calls.append(call)
                continue
            start = self.held.find(CALL_OPEN)
            if start >= 0:
                before, self.held, self.inside = self.held[:start], self.held[start + len(CALL_OPEN) :], True
                body = before.rstrip()  # whitespace before a call is dropped
                self.said = self.said or bool(body)
                out += body
                continue
            if not self.said and not self.calls and _may_be_bare(self.held):
                return out, calls  # perhaps a bare call: known at the end
            keep = next((k for k in range(len(CALL_OPEN) - 1, 0, -1) if self.held.endswith(CALL_OPEN[:k])), 0)
            ready, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
            return out + self._content(ready), calls

    def _emit_raw(self, text: str) -> str:
        self.said = True
        return text

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end of the answer: what is still held, as content or as a last call."""
        if not self.names:
            return "", []
        held, self.held = self.held, ""
        if self.inside:  # an unclosed block: a call if its body is one
            call = self._call(held)
            if call is not None:
                self.calls.append(call)
                return "", [call]
            return CALL_OPEN + held, []
        bare = _bare(held) if not self.said and not self.calls else None
        if bare is not None:
            call = self._call(bare)
            if call is not None:
                self.calls.append(call)
                return "", [call]
        return ("" if self.calls and not held.strip() else held), []
