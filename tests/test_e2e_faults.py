"""Faults through real experts: a corrupt model file and a hash mismatch fall back to a real expert."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from coserve.assets import model_path
from coserve.config import default_library_path, load_library
from coserve.engine.engine import Engine
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["llamacpp", "llamacpp-split"])
def test_corrupt_file_and_hash_mismatch_fall_back_to_a_real_expert(backend: str, tmp_path: Path, cache: Path) -> None:
    default = load_library()
    good = model_path(default.expert("general"), default_library_path().parent)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(good.read_bytes()[: 2**20])  # a truncated GGUF: the header is fine, the tensors are not
    general = {"name": "general", "backend": backend, "source": str(good), "params_b": 0.135,
               "context": 2048, "tags": ["chat"], "options": {"n_parallel": 1}}  # fmt: skip
    data = {
        "experts": [
            {**general, "name": "corrupt", "source": str(corrupt), "params_b": 1.0},
            {**general, "name": "mismatch", "sha256": "0" * 64, "params_b": 0.5},
            general,
        ],
        "categories": {
            "code": {"examples": ["write a python function", "fix this bug in my code", "sort a list in python"]},
            "chat": {"examples": ["hello there friend", "how are you today", "tell me a joke"]},
        },
        "router": {
            "embedder": "hashing",
            "map": {"code": "corrupt", "chat": "mismatch"},
            "fallback": {"expert": "general", "min_confidence": 0.0},
        },
    }
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        for text, failed in (("write a python function to sort", "corrupt"), ("hello there friend", "mismatch")):
            body = {"model": "coserve", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "general"
            # the mapped expert failed first; the other broken one (next in the alternatives) too
            assert response.json()["coserve"]["fallback_from"][0] == failed
            assert set(response.json()["coserve"]["fallback_from"]) == {"corrupt", "mismatch"}
        # Each expert's own error, or its backoff if the pinned request comes within it (the
        # backoff starts at 1 s, so which one depends on the machine's speed).
        for name, words in (("corrupt", r"truncated or corrupt GGUF header|failed to load"), ("mismatch", "sha256")):
            pinned = client.post(
                "/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert pinned.status_code == 503, pinned.text
            assert re.search(f"{words}|is in backoff", pinned.json()["error"]["message"]), pinned.text
        health = client.get("/health").json()["experts"]
        assert health["general"]["tier"] == "active"
        assert health["corrupt"]["last_error"] and health["mismatch"]["last_error"]
