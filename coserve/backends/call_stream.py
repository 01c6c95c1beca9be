"""How a local expert's answer leaves it: content chunks, and tool calls as the deltas OpenAI
streams (a call's first delta with its ``index``, ``id`` and ``name``, then pieces of its
``arguments``), and the last chunk, whose finish_reason is ``tool_calls`` when the answer made calls.

* ``BufferedCalls`` (``tool_choice`` ``auto``): what the model writes is free text, so a call is
  known only once its text parses (coserve.backends.tool_calls); its arguments then go in one piece.
  With ``parallel_tool_calls: false`` (``single``) the calls after the first are dropped, as OpenAI
  and vLLM keep one call then (under ``required`` the grammar already allows only one).
* ``ForcedCalls`` (``required`` or a named function): the grammar (coserve.backends.structured)
  makes the answer ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` blocks, so a call
  is known from its first tokens: its first delta goes as soon as its name is written, then each
  piece of the arguments as its tokens arrive. The pieces join into the arguments' JSON text as the
  model wrote it (cut short only when ``max_tokens`` cuts the answer: finish_reason ``length``).
  Text of another shape (a grammar keeping another key order) is handed to the buffered parser.

It knows nothing of runtimes, grammars or HTTP.
"""

from __future__ import annotations

import re

from coserve.backends.base import Emit
from coserve.backends.structured import CALL_CLOSE, CALL_OPEN, forced_tool_names, tool_names
from coserve.backends.tool_calls import ToolCallParser, call_deltas, new_call_id
from coserve.types import Chunk, Sampling, TokenLogprob, ToolCall, ToolCallDelta, Usage

__all__ = ["AnswerOutlet", "BufferedCalls", "ForcedCalls", "answer_outlet"]

_NAMED = re.compile(r"\s*" + re.escape(CALL_OPEN) + r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]*)"')
_HEAD = CALL_OPEN + '{"name":"'  # how a forced block begins, without its whitespace
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")  # OpenAI's
_ARGUMENTS = re.compile(r'\s*,\s*"arguments"\s*:\s*')
_CLOSE = re.compile(r"\s*\}\s*" + re.escape(CALL_CLOSE))


class BufferedCalls:
    """The calls of free text: parsed whole (coserve.backends.tool_calls), then sent as two deltas."""

    def __init__(self, names: frozenset[str], single: bool = False):
        self.parser = ToolCallParser(names)
        self.started = 0  # calls begun, the index of the next one
        self.single = single  # parallel_tool_calls false: calls after the first are dropped

    def _deltas(self, found: tuple[str, list[ToolCall]]) -> tuple[str, list[ToolCallDelta]]:
        content, calls = found
        deltas: list[ToolCallDelta] = []
        for call in calls[: 1 - self.started] if self.single else calls:
            deltas += call_deltas(self.started, call)
            self.started += 1
        return content, deltas

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """The content safe to emit after ``text``, and the call deltas it completed."""
        return self._deltas(self.parser.feed(text))

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is still held, at the end of the answer."""
        return self._deltas(self.parser.finish())


class ForcedCalls(BufferedCalls):
    """The calls of a decode a grammar forces into ``<tool_call>`` blocks, streamed as written."""

    def __init__(self, names: frozenset[str], single: bool = False):
        super().__init__(names, single)
        self.names = names
        self.held = ""  # text not yet consumed
        self.phase = "head"  # head (up to the name) -> key (the arguments') -> value -> tail (the close)
        self.buffering = False  # the text is not of the forced shape: the parser has it
        self.depth, self.in_string, self.escaped = 0, False, False  # where the value's scan stands
        self.written = ""  # the current call's arguments so far

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        if self.buffering:
            return super().feed(text)
        self.held += text
        deltas: list[ToolCallDelta] = []
        while self._step(deltas):
            pass
        if not self.buffering:
            return "", deltas
        content, more = super().feed(self.held)
        self.held = ""
        return content, deltas + more

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if not self.buffering and (self.phase != "head" or self._may_begin_call()):
            return "", []  # done, or cut short inside a call (its pieces are out) or a block's head
        if not self.buffering:
            content, deltas = super().feed(self.held)
            self.buffering, self.held = True, ""
            rest, more = super().finish()
            return content + rest, deltas + more
        return super().finish()

    def _step(self, deltas: list[ToolCallDelta]) -> bool:
        """Consume what the held text completes of the current phase; True when it moved on."""
        if self.phase == "head":
            match = _NAMED.match(self.held)
            if match is None or match.group(1) not in self.names:
                self.buffering = match is not None or not self._may_begin_call()
                return False
            deltas.append(ToolCallDelta(self.started, new_call_id(), match.group(1), ""))
            self.started += 1
            self.held, self.phase, self.written = self.held[match.end() :], "key", ""
            return True
        if self.phase == "key":
            match = _ARGUMENTS.match(self.held)
            if match is None:  # the grammar writes the arguments' key next: more text is needed
                return False
            self.held, self.phase = self.held[match.end() :], "value"
            self.depth, self.in_string, self.escaped = 0, False, False
            return True
        if self.phase == "value":
            piece = self._value_piece()
            if piece:
                deltas.append(ToolCallDelta(self.started - 1, arguments=piece))
            return self.phase != "value"
        match = _CLOSE.match(self.held)
        if match is None:
            return False
        self.held, self.phase = self.held[match.end() :], "head"
        return True

    def _may_begin_call(self) -> bool:
        """Whether the held text may still become a block's head (its name not yet closed)."""
        compact = "".join(self.held.split())
        if len(compact) <= len(_HEAD):
            return _HEAD.startswith(compact)
        return compact.startswith(_HEAD) and set(compact[len(_HEAD) :]) <= _NAME_CHARS

    def _value_piece(self) -> str:
        """The arguments' text in ``held`` (all of it, or up to the value's end: phase ``tail``)."""
        text = self.held if self.written else self.held.lstrip()
        end = None
        for position, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                    end = position + 1 if self.depth == 0 else None
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                if self.depth == 0:  # the call object's brace after a number, true, false or null
                    end = position
                else:
                    self.depth -= 1
                    end = position + 1 if self.depth == 0 else None
            elif self.depth == 0 and (char == "," or char.isspace()):
                end = position
            if end is not None:
                break
        piece = text if end is None else text[:end]
        self.held = "" if end is None else text[end:]
        self.written += piece
        if end is not None:
            self.phase = "tail"
        return piece


class AnswerOutlet:
    """Emits a local expert's answer: content chunks (each with the log-probabilities of the tokens it
    carries, or of earlier ones held back), a chunk per tool-call delta, and the last chunk."""

    def __init__(self, emit: Emit, names: frozenset[str], forced: bool = False, single: bool = False):
        self.emit = emit
        self.calls = ForcedCalls(names, single) if forced and names else BufferedCalls(names, single)
        self.pending: list[TokenLogprob] = []  # entries of tokens whose text is not emitted yet

    def _send(self, content: str, deltas: list[ToolCallDelta]) -> bool:
        if content:
            logprobs, self.pending = tuple(self.pending), []
            if self.emit(Chunk(content, logprobs=logprobs)):
                return True
        return any(self.emit(Chunk("", tool_calls=(delta,))) for delta in deltas)

    def text(self, text: str) -> bool:
        """Emit what of ``text`` is known; True when the caller went away."""
        return self._send(*self.calls.feed(text)) if text else False

    def end(self, finish: str, usage: Usage) -> None:
        """Emit what is still held and the last chunk."""
        if self._send(*self.calls.finish()):
            return
        reason = "tool_calls" if self.calls.started and finish == "stop" else finish
        self.emit(Chunk("", reason, usage, tuple(self.pending)))


def answer_outlet(emit: Emit, sampling: Sampling) -> AnswerOutlet:
    """The outlet of an answer to a request with these settings (its tools, forced or not, one call
    or several)."""
    forced = bool(forced_tool_names(sampling))
    return AnswerOutlet(emit, tool_names(sampling), forced, single=sampling.parallel_tool_calls is False)
