"""Shared fixtures of the unit tests: a small library of fake experts and an engine over it.

Nothing here loads a real model: the router uses ``HashingEmbedder`` and the experts use the
``fake`` backend, scripted through each expert's ``options``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app

MiB = 2**20

CATEGORIES: dict[str, dict[str, Any]] = {
    "code": {
        "description": "programming",
        "examples": [
            "write a python function to sort a list",
            "fix this javascript bug in my code",
            "my python script crashes with a type error",
            "compile the rust code and fix the compiler error",
            "write a sql query that joins two tables",
            "debug this java class method",
            "refactor the python function to use a loop",
        ],
    },
    "math": {
        "description": "mathematics",
        "examples": [
            "solve the equation x squared plus 3 x equals 10",
            "compute the integral of sine x",
            "find the derivative of x cubed",
            "prove that the square root of two is irrational",
            "what is the probability of rolling two sixes with dice",
            "calculate 17 times 23 plus 4",
            "solve for y in the equation 2 y minus 4 equals 8",
        ],
    },
    "chat": {
        "description": "small talk",
        "examples": [
            "hello how are you today",
            "tell me a funny joke",
            "good morning my friend",
            "what is your favourite movie",
            "thanks for the help have a nice day",
            "hi there nice to meet you",
            "how was your weekend friend",
        ],
    },
}

# Held-out prompts (not among the examples) and the category each must be routed to.
HELD_OUT = {
    "code": "write a python function that reverses a string",
    "math": "solve the equation 5 x plus 2 equals 12",
    "chat": "hello friend how are you this morning",
}


def library_data() -> dict[str, Any]:
    """The small library as plain data (a fresh deep copy each call)."""
    return copy.deepcopy(
        {
            "experts": [
                {
                    "name": "small",
                    "backend": "fake",
                    "params_b": 0.1,
                    "price": {"input": 0.1, "output": 0.1},
                    "context": 2048,
                    "tags": ["chat"],
                    "options": {"nbytes": 10 * MiB},
                },
                {
                    "name": "coder",
                    "backend": "fake",
                    "params_b": 0.5,
                    "price": {"input": 0.2, "output": 0.4},
                    "context": 4096,
                    "tags": ["code"],
                    "options": {"nbytes": 20 * MiB},
                },
                {
                    "name": "big",
                    "backend": "fake",
                    "params_b": 1.5,
                    "price": {"input": 1.0, "output": 2.0},
                    "context": 8192,
                    "tags": ["general"],
                    "options": {"nbytes": 30 * MiB},
                },
            ],
            "categories": CATEGORIES,
            "router": {
                "embedder": "hashing",
                "classifier": "logistic",
                "map": {"code": "coder", "math": "big", "chat": "small"},
                "fallback": {"expert": "big", "min_confidence": 0.4},
            },
            "memory": {"ram": "1GiB", "active": "1GiB"},
        }
    )


def write_library(
    tmp_path: Path,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    fields: dict[str, dict[str, Any]] | None = None,
    all_fields: dict[str, Any] | None = None,
    filename: str = "library.yaml",
    **sections: Any,
) -> Path:
    """Write the small library into ``tmp_path`` and return the file's path.

    ``options={"coder": {"fail_load": True}}`` merges into an expert's backend options;
    ``fields={"coder": {"context": 128}}`` sets fields of one expert, ``all_fields`` of every expert;
    any other keyword (``experts``, ``categories``, ``router``, ``memory``, or an unknown key)
    replaces that top-level section.
    """
    data = library_data()
    for spec in data["experts"]:
        spec.update(copy.deepcopy(all_fields or {}))
        spec.update(copy.deepcopy((fields or {}).get(spec["name"], {})))
        spec["options"].update(copy.deepcopy((options or {}).get(spec["name"], {})))
    data.update(sections)
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``COSERVE_CACHE`` for tests that set none (the decision log goes there, never to ~/.cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSERVE_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder, also exported as ``COSERVE_CACHE``."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("COSERVE_CACHE", str(path))
    return path


@pytest.fixture
def library_path(tmp_path: Path) -> Path:
    return write_library(tmp_path)


@pytest.fixture
def client(make_engine: Callable[..., Engine]) -> Iterator[TestClient]:
    """The real app over an engine of the fake library, in process (test_server.py has its own)."""
    with TestClient(create_app(make_engine()), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def make_engine(tmp_path: Path, cache: Path) -> Iterator[Callable[..., Engine]]:
    """``make_engine(**write_library_overrides)``: an Engine over the fake library.

    Engines are closed at teardown unless a test (or an app's lifespan) closed them already.
    """
    engines: list[Engine] = []
    counter = iter(range(1000))

    def make(**overrides: Any) -> Engine:
        folder = tmp_path / f"lib{next(counter)}"
        folder.mkdir()
        path = write_library(folder, **overrides)
        engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


def greedy(pool: Any, name: str, tokens: int = 24, prompt: str = "Name three primary colours.") -> tuple[str, str]:
    """Through a real pool: (greedy answer, the tier the expert was in before it was acquired)."""
    from coserve.types import Chunk, Message, Sampling

    async def run() -> tuple[str, str]:
        before = pool.residency()[name].value
        lease = await pool.acquire(name)
        parts: list[str] = []

        def emit(chunk: Chunk) -> bool:
            parts.append(chunk.text)
            return False

        messages = (Message("user", prompt),)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, pool.backends[name].stream, lease.handle, messages, Sampling(tokens, 0.0, 1.0, 7), emit
            )
        finally:
            lease.release()
        await asyncio.sleep(0.05)  # let the release settle (evictions happen there)
        return "".join(parts), before

    return asyncio.run(run())
