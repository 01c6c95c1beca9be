"""The server routes with a router trained by `coserve train` and named in the library file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import library_data
from fastapi.testclient import TestClient
from test_eval_harness import write_separable

from coserve.cli import main
from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app

URL = "/v1/chat/completions"
CODE = "debug this python function loop"
CHAT = "hello friend nice weekend movie"


@pytest.fixture
def trained_dir(tmp_path: Path, cache: Path) -> Path:
    data, experts = write_separable(tmp_path)
    out = tmp_path / "router"
    argv = ["train", "--data", str(data), "--experts", str(experts), "--out", str(out), "--embedder", "hashing"]
    assert main([*argv, "--budget-params", "6"]) == 0
    return out


def _library(tmp_path: Path, trained: str, experts: list[str] | None = None) -> Path:
    data = library_data()
    template = data["experts"][0]
    sizes = {"small": 1.0, "mid": 3.0, "big": 7.0}
    data["experts"] = [
        {**template, "name": name, "params_b": sizes.get(name, 1.0), "tags": [name]}
        for name in (experts or ["small", "mid", "big"])
    ]
    data.pop("categories")
    data["router"] = {"embedder": "hashing", "trained": trained, "fallback": {"expert": "big"}}
    path = tmp_path / "trained-library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _post(client: TestClient, text: str, **coserve: Any) -> Any:
    body: dict[str, Any] = {"model": "coserve", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    if coserve:
        body["coserve"] = coserve
    return client.post(URL, json=body)


def test_server_routes_with_the_trained_router(tmp_path: Path, trained_dir: Path, cache: Path) -> None:
    library = load_library(_library(tmp_path, "router"))  # relative to the library file
    engine = Engine.build(library, cache, embedder=HashingEmbedder())
    assert engine.router.trained is not None
    with TestClient(create_app(engine)) as client:
        code = _post(client, CODE)
        assert code.status_code == 200, code.text
        assert code.json()["coserve"]["expert"] == "big"
        assert code.json()["coserve"]["category"] == "code"
        assert _post(client, CHAT).json()["coserve"]["expert"] == "small"
        # a per-request budget that affords only the cheapest expert
        cheap = _post(client, CODE, budget=1.0).json()["coserve"]
        assert cheap["expert"] == "small"
        # a constraint that excludes the trained choice: the next expert by expected score
        constrained = _post(client, CODE, exclude_experts=["big"]).json()["coserve"]
        assert constrained["expert"] != "big" and constrained["reason"] == "constrained"
        # a budget below every expert's cost
        infeasible = _post(client, CODE, budget=0.1)
        assert infeasible.status_code == 422
        assert infeasible.json()["error"]["param"] == "coserve.budget"


def test_budget_override_needs_a_trained_router(make_engine: Any) -> None:
    with TestClient(create_app(make_engine())) as client:
        response = _post(client, "write a python function", budget=1.0)
        assert response.status_code == 422
        assert response.json()["error"]["param"] == "coserve.budget"


def test_trained_router_naming_missing_experts_is_refused(tmp_path: Path, trained_dir: Path, cache: Path) -> None:
    library = load_library(_library(tmp_path, str(trained_dir), experts=["small", "big"]))
    with pytest.raises(ConfigError, match="mid"):
        Engine.build(library, cache, embedder=HashingEmbedder())
