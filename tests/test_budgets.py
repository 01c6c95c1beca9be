"""The memory budgets against the experts' sizes: an expert over a budget alone is never loaded and
named at start; a RAM budget short of the weights the ACTIVE budget holds is a warning at start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from conftest import MiB, write_library
from live import LiveServer

from coserve.assets import model_path
from coserve.backends.fake import FakeBackend
from coserve.backends.registry import get_backend
from coserve.config import MemorySettings, load_library
from coserve.engine import budgets
from coserve.engine.budgets import check_budgets, held_weights, over_budget, ram_warning
from coserve.engine.engine import Engine
from coserve.engine.pool import ExpertPool
from coserve.errors import ExpertLoadError
from coserve.router.embed import HashingEmbedder

SIZES = {"a": (10, 15), "b": (20, 25), "c": (30, 40), "huge": (5, 100)}  # bytes: weights, footprint


def test_an_expert_over_either_budget_alone_is_named_with_both_numbers() -> None:
    assert over_budget("x", 10, 15, ram=10, active=15) is None  # exactly at both budgets: it fits
    active = over_budget("x", 10, 16, ram=100, active=15)
    assert active is not None and "needs 16 bytes when loaded" in active and "ACTIVE memory budget (15 bytes)" in active
    ram = over_budget("x", 11, 15, ram=10, active=15)
    assert ram is not None and "has 11 bytes of weights" in ram and "RAM memory budget (10 bytes)" in ram


def test_the_weights_held_are_those_of_the_heaviest_set_the_active_budget_holds() -> None:
    # 55 bytes of ACTIVE: a + c (footprints 15 + 40) hold 40 bytes of weights; b + c (65) do not fit;
    # a + b (40) hold 30; huge (100) never fits, whatever its light weights.
    assert held_weights(SIZES, 55) == (40, ("a", "c"))
    assert held_weights(SIZES, 40) == (30, ("a", "b"))  # a + b and c alone both hold 30: the first found
    assert held_weights(SIZES, 14) == (0, ())


def test_past_the_exact_limit_the_set_is_taken_greedily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets, "EXACT_UP_TO", 1)
    # weight per footprint byte: a 0.67, b 0.8, c 0.75: b, then c (65 > 55: skipped), then a
    assert held_weights(SIZES, 55) == (30, ("b", "a"))


def test_the_ram_warning_names_the_numbers_and_the_experts() -> None:
    assert ram_warning(SIZES, ram=40, active=55) is None
    warning = ram_warning(SIZES, ram=39, active=55)
    assert warning is not None
    assert "memory.ram (39 bytes)" in warning and "memory.active (55 bytes)" in warning
    assert "(40 bytes: a, c)" in warning and "at least 40" in warning


def test_the_pool_refuses_an_expert_whose_weights_exceed_the_ram_budget(tmp_path: Path) -> None:
    """Before: the pool loaded it, and the RAM tier held 30 MiB of weights against a 25 MiB budget."""
    library = load_library(write_library(tmp_path))  # small 10, coder 20, big 30 MiB of weights
    backend = FakeBackend()
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), 1024 * MiB, ram_budget_bytes=25 * MiB)

    async def scenario() -> None:
        with pytest.raises(ExpertLoadError, match=f"has {30 * MiB} bytes of weights.*RAM memory budget") as err:
            await pool.acquire("big")
        assert err.value.status == 503 and err.value.code == "expert_unavailable"
        lease = await pool.acquire("coder")  # within the budget: served
        lease.release()
        await pool.close()

    asyncio.run(scenario())
    assert backend.loads == ["coder"] and "big" not in backend.stages


def test_an_engine_names_at_start_the_experts_over_a_budget_and_warns_of_the_ram(tmp_path: Path) -> None:
    library = load_library(write_library(tmp_path, memory={"ram": "25MiB", "active": "1GiB"}))
    engine = Engine.build(library, tmp_path / "cache", HashingEmbedder(256))
    assert set(engine.unavailable) == {"big"} and "RAM memory budget" in engine.unavailable["big"]
    assert engine.memory_warning is not None  # small + coder hold 30 MiB of weights when loaded
    assert f"holds at once ({30 * MiB} bytes: small, coder)" in engine.memory_warning
    roomy = load_library(write_library(tmp_path, memory={"ram": "1GiB", "active": "1GiB"}))
    engine = Engine.build(roomy, tmp_path / "cache", HashingEmbedder(256))
    assert engine.unavailable == {} and engine.memory_warning is None


def test_coserve_serve_says_so_at_start_and_a_pinned_request_gets_the_reason(tmp_path: Path) -> None:
    with LiveServer(tmp_path, memory={"ram": "25MiB", "active": "1GiB"}) as live:
        reply = httpx.post(
            f"{live.url}/v1/chat/completions",
            json={"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=30,
        )
        health = httpx.get(f"{live.url}/health", timeout=30).json()
    output = live.output()
    assert "coserve: warning: expert big cannot load (expert 'big' has" in output
    assert f"coserve: warning: memory.ram ({25 * MiB} bytes) is less than the weights" in output
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "expert_unavailable"
    assert "RAM memory budget" in reply.json()["error"]["message"]
    assert "RAM memory budget" in health["experts"]["big"]["last_error"]


@pytest.mark.e2e
def test_the_default_experts_real_sizes_against_a_small_ram_budget(tmp_path: Path) -> None:
    """The real twin of the fake sizes above: the default library's files, measured from their headers."""
    default = load_library()
    base = default.path.parent if default.path else None
    for spec in default.experts:
        model_path(spec, base)  # assembled into the test session's cache, as the other e2e tests do
    small = default.model_copy(update={"memory": MemorySettings(ram=600 * MiB, active=4096 * MiB)})
    backends = {spec.name: get_backend(spec.backend) for spec in small.experts}
    never, warning = check_budgets(small, backends)
    assert set(never) == {"large"}  # a 1,066 MiB file (docs/data/experts.json) against 600 MiB
    assert warning is not None and "general, coder" in warning  # 94 + 469 MiB files, with their vocabularies more


def test_coserve_experts_marks_what_serve_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coserve.cli import main

    tight = write_library(tmp_path, memory={"ram": "25MiB", "active": "1GiB"})
    assert main(["experts", "--library", str(tight)]) == 0
    out = capsys.readouterr().out
    big = next(line for line in out.splitlines() if line.startswith("big "))
    assert " refused " in big and "refused: expert 'big' has" in out and "RAM memory budget" in out
    assert f"warning: memory.ram ({25 * MiB} bytes) is less than the weights" in out
    assert main(["experts", "--library", str(tight), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["experts"]}
    assert rows["big"]["tier"] == "refused" and "RAM memory budget" in rows["big"]["refused"]
    assert rows["small"]["refused"] is None and rows["small"]["tier"] == "disk"
    (tmp_path / "roomy").mkdir()
    roomy = write_library(tmp_path / "roomy", memory={"ram": "1GiB", "active": "1GiB"})
    assert main(["experts", "--library", str(roomy)]) == 0
    assert "refused" not in capsys.readouterr().out
