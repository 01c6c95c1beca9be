"""A GGUF's own chat template (Jinja, as Hugging Face writes them) rendered into one prompt string.

The template runs in jinja2's immutable sandbox (a model file is input, not code we trust), with
the whitespace rules Hugging Face renders chat templates with (``trim_blocks``, ``lstrip_blocks``)
and the names templates expect: ``messages``, ``add_generation_prompt``, ``bos_token``,
``eos_token``, ``tools`` (the request's functions, or None), ``raise_exception`` (a template's
own refusal, e.g. of a role it does not know, becomes a ValueError) and ``strftime_now``;
``tojson`` keeps non-ASCII text as it is.

It knows nothing of tokens or runtimes: the caller tokenizes what it returns.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NoReturn

__all__ = ["ChatTemplate", "chat_template"]


def _raise_exception(message: str) -> NoReturn:
    raise ValueError(f"the model's chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(pattern: str) -> str:
    return datetime.now().strftime(pattern)


class ChatTemplate:
    """One compiled template; ``render(messages)`` gives the prompt with the generation prompt."""

    def __init__(self, source: str, bos_token: str, eos_token: str):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.template = environment.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The conversation (and the functions it may call) as the model was trained to read it."""
        return self.template.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


@functools.lru_cache(maxsize=32)
def chat_template(source: str, bos_token: str, eos_token: str) -> ChatTemplate:
    """A template compiled once per process (a model reloaded from disk reuses it)."""
    return ChatTemplate(source, bos_token, eos_token)
