"""What a platform team meets on its first day with a real ``coserve serve``: a load balancer's
``HEAD /health`` probe, each expert's price beside the ``max_price`` flag that filters by it,
``coserve chat --model`` naming no expert, and a copy of the default library to edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from conftest import write_library
from live import LiveServer

import coserve
from coserve.cli import main
from coserve.config import load_library


def test_a_head_probe_of_health_and_each_experts_price_in_the_models_list(tmp_path: Path) -> None:
    with LiveServer(tmp_path) as live:
        head = httpx.head(f"{live.url}/health", timeout=30)
        models = httpx.get(f"{live.url}/v1/models", timeout=30).json()["data"]
    assert head.status_code == 200 and head.content == b""  # was 405: probes that send HEAD saw a failure
    price = {m["id"]: m["coserve"].get("price") for m in models}
    assert price == {
        "coserve": None,
        "small": {"input": 0.1, "output": 0.1},
        "coder": {"input": 0.2, "output": 0.4},
        "big": {"input": 1.0, "output": 2.0},
    }  # USD per million tokens, as in the library


def test_chat_refuses_a_model_that_is_no_expert_before_the_first_turn(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = write_library(tmp_path)
    assert main(["chat", "--library", str(library), "--model", "lrage"]) == 2  # was: every turn answered an error
    err = capsys.readouterr().err
    assert err == "coserve: error: --model lrage: not an expert of the library (small, coder, big) nor 'coserve'\n"


def test_the_default_library_copied_as_docs_library_md_says_loads_from_anywhere(tmp_path: Path) -> None:
    """docs/library.md: copy default.yaml with the two files it names beside it, then edit it."""
    data = Path(coserve.__file__).parent / "data"
    for name in ("default.yaml", "categories.yaml", "default-outcomes.jsonl"):
        shutil.copy(data / name, tmp_path / ("lib.yaml" if name == "default.yaml" else name))
    copied, bundled = load_library(tmp_path / "lib.yaml"), load_library()
    assert copied.experts == bundled.experts and copied.categories == bundled.categories
    assert copied.router.outcomes is not None
