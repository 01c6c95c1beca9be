"""`coserve bench route` and `coserve bench experts` print figures and write their JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_library

from coserve.cli import main


def test_bench_route_writes_its_schema(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "route.json"
    assert main(["bench", "route", "--library", str(write_library(tmp_path)), "--n", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"decision_ms", "batched_per_s"}
    assert set(result["decision_ms"]) == {"16", "64", "256"}
    for row in result["decision_ms"].values():
        assert 0 < row["p50"] <= row["p95"]
    assert result["batched_per_s"] > 0
    assert "decisions/s" in capsys.readouterr().out


def test_bench_experts_measures_every_expert(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "experts.json"
    library = write_library(tmp_path, all_fields={"options": {"token_delay": 0.001}})
    assert (
        main(["bench", "experts", "--library", str(library), "--tokens", "4", "--repeats", "1", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["experts"]) == {"small", "coder", "big"}
    for row in result["experts"].values():
        assert row["ttft_cold_s"] >= row["load_s"] >= 0
        assert row["decode_tok_s"] > 0
    assert result["route_ms_64_p50"] > 0
