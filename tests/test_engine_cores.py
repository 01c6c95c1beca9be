"""The router shares the cores with experts that decode on them: it keeps to one BLAS thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_library

from coserve.backends.fake import FakeBackend
from coserve.backends.registry import shares_cores
from coserve.config import load_library
from coserve.engine import assemble as assemble_module
from coserve.engine.engine import Engine
from coserve.router.embed import HashingEmbedder

_FILE = {"source": "m.gguf", "options": {}}


@pytest.mark.parametrize(
    ("big", "expected"),
    [
        ({}, False),  # every expert is the fake
        ({"backend": "llamacpp-split", **_FILE}, True),
        ({"backend": "llamacpp", **_FILE}, True),
        ({"backend": "llamacpp", "source": "m.gguf", "options": {"n_gpu_layers": -1}}, False),  # all on a GPU
        ({"backend": "llamacpp", "source": "m.gguf", "options": {"n_gpu_layers": 10}}, True),  # the rest here
        ({"backend": "transformers", "source": "hf", "options": {}}, True),  # CPU unless told
        ({"backend": "transformers", "source": "hf", "options": {"device": "cuda:0"}}, False),
        ({"backend": "openai", "options": {"base_url": "http://127.0.0.1:9/v1"}}, False),
        ({"backend": "vllm", "source": "hf", "options": {}}, False),
    ],
)
def test_which_libraries_share_the_routers_cores(tmp_path: Path, big: dict[str, Any], expected: bool) -> None:
    library = load_library(write_library(tmp_path, fields={"big": big}))
    assert shares_cores(library) is expected


@pytest.mark.parametrize(("backend", "limited"), [("llamacpp-split", True), ("fake", False)])
def test_an_engine_beside_cpu_experts_limits_blas(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, backend: str, limited: bool
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(assemble_module, "limit_blas_threads", lambda: calls.append(1))
    big = {"backend": backend, **_FILE} if backend != "fake" else {}
    library = load_library(write_library(tmp_path, fields={"big": big}))
    engine = Engine.build(library, cache, embedder=HashingEmbedder(), backends={backend: FakeBackend()})
    engine.executor.shutdown(wait=False)
    assert calls == ([1] if limited else [])


def test_limit_blas_threads_leaves_one_blas_thread() -> None:
    code = (
        "import numpy, threadpoolctl\n"
        "from coserve.cpus import limit_blas_threads\n"
        "limit_blas_threads()\n"
        "blas = [p for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
        "assert blas, 'numpy has no BLAS here'\n"
        "print(sorted({p['num_threads'] for p in blas}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1]"


# -- model files checked at start ---------------------------------------------------------------


def test_missing_files_names_each_expert_and_why(tmp_path: Path) -> None:
    from coserve.assets import missing_files

    fields = {
        "coder": {"backend": "llamacpp-split", "source": "pkg:no_such_model_pkg/m.gguf", "options": {}},
        "big": {"backend": "llamacpp-split", "source": "models/missing.gguf", "options": {}},
    }
    library = load_library(write_library(tmp_path, fields=fields))
    problems = missing_files(library)
    assert set(problems) == {"coder", "big"}  # "small" (the fake, no file) is fine
    assert "package 'no_such_model_pkg'" in problems["coder"] and "not installed" in problems["coder"]
    assert "model file not found" in problems["big"] and "missing.gguf" in problems["big"]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "missing.gguf").write_bytes(b"GGUF")
    assert set(missing_files(library)) == {"coder"}  # present now (its contents are checked at load)


def test_a_server_with_a_missing_model_file_starts_warns_and_reports_it(tmp_path: Path) -> None:
    import httpx
    from live import LiveServer

    big = {"backend": "llamacpp-split", "source": "missing.gguf", "options": {}}
    with LiveServer(tmp_path, fields={"big": big}) as live:
        health = httpx.get(f"{live.url}/health").json()
        assert "model file not found" in health["experts"]["big"]["last_error"]
        assert health["experts"]["small"]["last_error"] is None
        chat = {"model": "coserve", "messages": [{"role": "user", "content": "hello there"}]}
        reply = httpx.post(f"{live.url}/v1/chat/completions", json=chat, timeout=30)
        assert reply.status_code == 200  # the others keep serving
    assert "warning: expert big cannot load (model file not found" in live.output()
