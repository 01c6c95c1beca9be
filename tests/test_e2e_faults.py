"""Faults through real experts: a corrupt model file and a hash mismatch fall back to a real expert."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from coserve.assets import model_path
from coserve.config import load_library
from coserve.engine import residency
from coserve.engine.engine import Engine
from coserve.paths import default_library_path
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["llamacpp", "llamacpp-split"])
def test_corrupt_file_and_hash_mismatch_fall_back_to_a_real_expert(
    backend: str, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed expert stays in backoff for an hour: what a pinned request gets below does not
    # depend on how long the requests before it took.
    monkeypatch.setattr(residency, "BACKOFF_START_S", 3600.0)
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
        # The backoff outlasts the test (set above), so a pinned request lands inside it whatever the
        # machine's speed: it is refused with the cause the earlier failure recorded.
        for name, cause in (("corrupt", str(corrupt)), ("mismatch", "does not match sha256")):
            recorded = client.get("/health").json()["experts"][name]["last_error"]
            assert cause in recorded, recorded
            pinned = client.post(
                "/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert pinned.status_code == 503, pinned.text
            error = pinned.json()["error"]
            assert error["code"] == "expert_backoff" and recorded in error["message"], error
        health = client.get("/health").json()["experts"]
        assert health["general"]["tier"] == "active"
        assert health["corrupt"]["last_error"] and health["mismatch"]["last_error"]
