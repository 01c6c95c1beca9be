"""Experts behind an OpenAI-compatible HTTP endpoint: vLLM, a llama.cpp server, Ollama, hosted APIs.

Library entry::

    - name: big-remote
      backend: openai
      params_b: 70
      options: {base_url: "http://127.0.0.1:8001/v1", model: my-70b, api_key_env: MY_KEY,
                connect_timeout: 5, read_timeout: 120}

"Loading" checks that the endpoint answers ``GET /models`` (and lists the model when it lists
any); the weights live elsewhere, so the expert occupies no local bytes and staging holds nothing.
Tools, ``tool_choice``, ``parallel_tool_calls``, ``response_format`` and the tool fields of
messages are forwarded unchanged, and the endpoint's ``tool_calls`` deltas relayed. Generation
streams with httpx; a time-out or a 5xx before the first token is an ExpertFailed
(the engine falls back), a 400/413 about context length is a ContextTooLong. The token cap
(the request's, else ``options.max_tokens``, else 512) is always sent. The endpoint runs
``n_parallel`` requests of the expert at once (default 2). Keys are read from the environment
variable named in ``api_key_env``, never from the library file, and never logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from coserve.backends.base import Emit, Handle
from coserve.backends.chores import context_too_long, declared_concurrency, wire_messages
from coserve.backends.openai_wire import choice_logprobs, choice_tool_calls, sampling_body
from coserve.config import ExpertSpec
from coserve.errors import ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["OpenAIHTTPBackend"]

DEFAULT_N_PARALLEL = 2


class _NoStage:
    """Remote weights: nothing to hold in RAM."""


def _client(spec: ExpertSpec) -> httpx.Client:
    options = spec.options
    base_url = options["base_url"]  # required by the library file
    headers = {}
    key_env = options.get("api_key_env")
    if key_env:
        key = os.environ.get(str(key_env))
        if not key:
            raise ExpertLoadError(f"expert {spec.name!r}: environment variable {key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    timeout = httpx.Timeout(
        connect=float(options.get("connect_timeout", 5.0)),
        read=float(options.get("read_timeout", 120.0)),
        write=10.0,
        pool=10.0,
    )
    return httpx.Client(base_url=str(base_url).rstrip("/"), headers=headers, timeout=timeout)


class OpenAIHTTPBackend:
    """One httpx client per loaded expert."""

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        return 0

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        return 0  # the model lives in the endpoint's memory, not ours

    def concurrency(self, spec: ExpertSpec) -> int:
        return declared_concurrency(spec, DEFAULT_N_PARALLEL)

    def stage(self, spec: ExpertSpec, base: Path | None) -> _NoStage:
        return _NoStage()

    def unstage(self, staged: _NoStage) -> None:
        pass  # nothing was held

    def load(self, spec: ExpertSpec, staged: _NoStage) -> Handle:
        client = _client(spec)
        model = str(spec.options.get("model", spec.name))
        try:
            response = client.get("/models")
            response.raise_for_status()
            listed = [m.get("id") for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            client.close()
            raise ExpertLoadError(f"expert {spec.name!r}: endpoint {client.base_url} does not answer: {exc}") from None
        if listed and model not in listed:
            client.close()
            raise ExpertLoadError(f"expert {spec.name!r}: endpoint {client.base_url} does not serve model {model!r}")
        return Handle(spec, {"client": client, "model": model})

    def unload(self, handle: Handle) -> None:
        runtime, handle.runtime = handle.runtime, None
        if runtime is not None:
            runtime["client"].close()

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        spec = handle.spec
        if handle.runtime is None:
            raise ExpertFailed(f"expert {spec.name!r} was unloaded")
        body: dict[str, Any] = {
            "model": handle.runtime["model"],
            "messages": wire_messages(messages),
            **sampling_body(spec, sampling),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        finish: str | None = None
        usage: Usage | None = None
        streamed = 0  # text deltas: the completion's tokens if the endpoint reports no usage
        try:
            with handle.runtime["client"].stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    text = response.read().decode("utf-8", "replace")[:500]
                    if response.status_code in (400, 413) and "context" in text.lower():
                        raise context_too_long(spec, None)
                    raise ExpertFailed(f"expert {spec.name!r}: HTTP {response.status_code}: {text}")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ExpertFailed(f"expert {spec.name!r}: {chunk['error']}")
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        logprobs = choice_logprobs(choice) if sampling.logprobs else ()
                        calls = choice_tool_calls(choice)
                        if text or logprobs or calls:
                            streamed += 1 if text else 0
                            if emit(Chunk(text, logprobs=logprobs, tool_calls=calls)):
                                return  # the caller went away: closing the response cancels upstream
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))
        except httpx.TimeoutException as exc:
            raise ExpertFailed(f"expert {spec.name!r}: timed out ({type(exc).__name__})") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise ExpertFailed(f"expert {spec.name!r}: {exc}") from None
        emit(Chunk("", finish if finish in ("length", "tool_calls") else "stop", usage or Usage(0, streamed)))
