"""A Hugging Face expert's tokenizer and chat template, without its weights: the prompt's token ids
as the ``transformers`` and ``vllm`` backends run them, and the counter the engine refuses a prompt
too long for the context with before the expert loads (coserve.engine.fit).

The tokenizer is read from the model's own files (a folder's tokenizer.json / tokenizer_config.json,
or a GGUF file's vocabulary through transformers' GGUF reader), never from a hub, and kept once per
file: the backend's ``stream`` and its counter tokenize with the same object, so the early count is
the count ``stream`` checks, never an estimate. Needs ``transformers`` only (both backends' extras
install it; no torch). Knows nothing about weights, devices or engines.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from coserve.backends.base import PromptCounter
from coserve.backends.chores import wire_messages
from coserve.backends.structured import tool_names
from coserve.types import Message, Sampling

__all__ = ["Tokenizers", "prompt_ids", "template_counter"]


class Tokenizers:
    """Tokenizers by model path, each read once (from a GGUF file that takes seconds)."""

    def __init__(self) -> None:
        self._by_path: dict[str, Any] = {}
        self._lock = threading.Lock()  # one read per path

    def get(self, path: Path) -> Any:
        """The tokenizer of the model folder or GGUF file ``path`` (transformers' errors as raised)."""
        with self._lock:
            if str(path) not in self._by_path:
                self._by_path[str(path)] = _read(path)
            return self._by_path[str(path)]


def _read(path: Path) -> Any:
    from transformers import AutoTokenizer

    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def prompt_ids(tokenizer: Any, messages: tuple[Message, ...]) -> list[int]:
    """The prompt's token ids: the messages through the chat template, with the assistant's turn opened."""
    encoded = tokenizer.apply_chat_template(
        wire_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return [int(i) for i in encoded["input_ids"]]


def template_counter(tokenizer: Any) -> PromptCounter:
    """Counts a request's prompt tokens as ``prompt_ids`` makes them; None for tools, which neither
    backend renders (the routing sends a request with tools to experts that take them)."""

    def count(messages: tuple[Message, ...], sampling: Sampling) -> int | None:
        if tool_names(sampling):
            return None
        return len(prompt_ids(tokenizer, messages))

    return count
