"""The bundled library's real ``general`` expert loaded straight on a backend (no engine, no server),
for the tests that check what a backend computes from the model itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from coserve.types import Chunk, Message, Sampling


@contextmanager
def loaded_general(backend_name: str, backend: Any) -> Iterator[Any]:
    """``general`` staged and loaded on ``backend`` (registered as ``backend_name``, one slot); yields
    its handle, unloaded and unstaged on leaving."""
    from coserve.config import load_library

    library = load_library()
    spec = library.expert("general").model_copy(update={"backend": backend_name, "options": {"n_parallel": 1}})
    staged = backend.stage(spec, library.path.parent if library.path else None)
    handle = backend.load(spec, staged)
    try:
        yield handle
    finally:
        backend.unload(handle)
        backend.unstage(staged)


def stream_all(backend: Any, handle: Any, prompt: str, sampling: Sampling) -> list[Chunk]:
    """Every chunk of the answer to one user message, the whole stream run."""
    chunks: list[Chunk] = []
    backend.stream(handle, (Message("user", prompt),), sampling, lambda chunk: chunks.append(chunk) and False)
    return chunks
