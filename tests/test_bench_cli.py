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
    assert set(result) == {"provenance", "decision_ms", "batched_per_s", "blas_threads", "embedder"}
    assert result["blas_threads"] == 1 and result["embedder"] == "hashing"  # the engine's limit by default
    assert result["provenance"]["command"].endswith(f"--json {out}")
    assert set(result["decision_ms"]) == {"16", "64", "256"}
    for row in result["decision_ms"].values():
        assert 0 < row["p50"] <= row["p95"]
    assert result["batched_per_s"] > 0
    assert "decisions/s" in capsys.readouterr().out


def test_bench_route_compares_embedder_variants(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "route.json"
    library = str(write_library(tmp_path))
    variants = "hashing;hashing+features;hashing:dim=64"
    argv = ["bench", "route", "--library", library, "--n", "6", "--embedders", variants, "--blas-threads", "0"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["blas_threads"] is None
    assert list(result["variants"]) == ["hashing", "hashing+features", "hashing:dim=64"]
    for row in result["variants"].values():
        assert set(row["decision_ms"]) == {"16", "64", "256"}
        assert row["batched_per_s"] > 0
        assert 0 < row["repeated_prompt_ms_64"]["p50"] <= row["repeated_prompt_ms_64"]["p95"]
        assert "tokenizer_ms_64" not in row  # the hashing embedder has no tokenizer


def test_bench_route_refuses_a_malformed_variant(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    library = str(write_library(tmp_path))
    assert main(["bench", "route", "--library", library, "--embedders", "hashing:dim=big"]) == 2
    assert "options are key=integer" in capsys.readouterr().err


def test_bench_experts_measures_every_expert(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "experts.json"
    library = write_library(tmp_path, all_fields={"options": {"token_delay": 0.001}})
    assert (
        main(["bench", "experts", "--library", str(library), "--tokens", "4", "--repeats", "1", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["experts"]) == {"small", "coder", "big"}
    assert {"commit", "date", "cpu_model", "usable_cores"} <= set(result["provenance"])
    for row in result["experts"].values():
        assert row["ttft_cold_s"] >= row["load_s"] >= 0
        assert row["decode_tok_s"] > 0
    assert result["route_ms_64_p50"] > 0


def test_serve_bench_library_copy_keeps_every_file_it_names(tmp_path: Path) -> None:
    """The serve benchmark writes a copy of the library elsewhere with other budgets: the files the
    library names relative to itself (categories, outcomes, model files) must still resolve."""
    from coserve.bench.contenders import bench_library
    from coserve.config import load_library
    from coserve.router.measured import with_measured_map

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "small.bin").write_bytes(b"x" * 100)
    outcomes = [{"id": f"q{i}", "category": c, "scores": {"small": 1.0, "coder": 0.5, "big": 0.2}}
                for i, c in enumerate(["code", "math", "chat"] * 2)]  # fmt: skip
    (tmp_path / "outcomes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in outcomes))
    router = {"embedder": "hashing", "outcomes": "outcomes.jsonl", "fallback": {"expert": "big", "min_confidence": 0.4}}
    original = load_library(write_library(tmp_path, fields={"small": {"source": "models/small.bin"}}, router=router))
    (tmp_path / "elsewhere").mkdir()
    copy = load_library(bench_library(original, tmp_path / "elsewhere", active=123 * 2**20, ram=456 * 2**20))
    assert (copy.memory.active, copy.memory.ram) == (123 * 2**20, 456 * 2**20)
    solved = with_measured_map(original).router.map
    assert with_measured_map(copy).router.map == solved and set(solved) == {"code", "math", "chat"}  # same outcomes
    assert copy.expert("small").parts == (str(tmp_path / "models" / "small.bin"),)
    assert copy.server.log.path == tmp_path / "elsewhere" / "decisions.sqlite"  # was: the user's own log


@pytest.mark.e2e
def test_serve_bench_switch_measurement_goes_through_the_backends_tiers(tmp_path: Path) -> None:
    """The switch figures of `coserve bench serve`, on a real expert: for llamacpp-split a move
    from RAM (the model loaded) to ACTIVE only creates a context, far below a move from disk; the
    huge-page variant runs in a process of its own and reports the same figures."""
    import yaml

    from coserve.assets import model_path
    from coserve.bench.switch import measure_switch, measure_switch_hugepages, thp_mode
    from coserve.config import load_library
    from coserve.paths import default_library_path

    default = load_library()
    path = model_path(default.expert("general"), default_library_path().parent)
    expert = {"name": "general", "backend": "llamacpp-split", "source": str(path), "params_b": 0.135,
              "context": 1024, "options": {"n_parallel": 2}}  # fmt: skip
    data = {"experts": [expert], "categories": {"chat": {"examples": ["hello", "how are you"]},
                                               "code": {"examples": ["sort a list", "fix a bug"]}},
            "router": {"embedder": "hashing", "map": {"chat": "general", "code": "general"},
                       "fallback": {"expert": "general", "min_confidence": 0.0}}}  # fmt: skip
    library = tmp_path / "one.yaml"
    library.write_text(yaml.safe_dump(data))
    rows = measure_switch(load_library(library))
    row = rows["general"]
    assert row["bytes"] == path.stat().st_size and len(row["ram_to_active_runs_s"]) == 3
    assert 0 < row["ram_to_active_s"] < row["disk_to_active_s"]
    # the split backend's RAM tier holds the loaded weights: the move creates a context only, and
    # its floor is the measured cost of an empty context of that size
    assert row["reads_weights"] is False and row["ram_floor"] == "empty context of context_bytes"
    assert row["context_bytes"] > 0 and row["ram_floor_s"] == row["empty_context_s"] > 0 and row["disk_floor_s"] > 0
    huge = measure_switch_hugepages(load_library(library))
    if thp_mode() not in ("madvise", "always"):
        assert huge is None
    else:
        assert huge is not None and set(huge["general"]) == set(row)


def test_serve_bench_reads_its_targets_off_the_medians() -> None:
    from coserve.bench.serve import summarise_runs, targets

    def rps(*values: float) -> list[dict[str, float]]:
        return [{"throughput_rps": v, "completion_tokens": 100} for v in values]

    runs = {
        "load_per_request": rps(0.25, 0.2, 0.3),
        "lru": rps(0.9, 1.0, 0.8),  # median 0.9
        "lookahead": rps(0.5, 1.0, 1.5),  # median 1.0
        "all_resident": rps(1.2, 1.1, 1.3),  # median 1.2
        "peer": rps(0.4, 0.9, 0.1),  # median 0.4
    }
    summary = summarise_runs(runs)
    assert summary["lookahead"]["throughput_rps"] == {"median": 1.0, "min": 0.5, "max": 1.5}
    switch = {"time_s": 0.3, "floor_s": 0.1, "hugepages": {"time_s": 0.06, "floor_s": 0.05}}
    rows = targets(summary, switch)
    assert {k: (round(v["value"], 3), v["met"]) for k, v in rows.items()} == {
        "x_lru": (1.111, True),
        "x_load_per_request": (4.0, True),
        "x_peer": (2.5, True),
        "below_all_resident": (0.167, False),
        "switch_over_floor": (3.0, False),
        "switch_over_floor_hugepages": (1.2, True),
    }
    runs["peer"] = [{"skipped": "llama-cpp-python is not installed"}]
    del switch["hugepages"]
    assert set(targets(summarise_runs(runs), switch)) == {
        "x_lru", "x_load_per_request", "below_all_resident", "switch_over_floor"
    }  # fmt: skip


def test_serve_bench_flags_runs_with_unequal_generated_tokens() -> None:
    from coserve.bench.serve import summarise_runs

    same = summarise_runs({"lru": [{"completion_tokens": 96}] * 2, "peer": [{"completion_tokens": 96}]})
    assert same["completion_tokens_equal"] is True and "completion_tokens_unequal" not in same
    differ = summarise_runs({"lru": [{"completion_tokens": 96}], "peer": [{"completion_tokens": 90}]})
    assert differ["completion_tokens_equal"] is False
    assert differ["completion_tokens_unequal"] == {"lru": [96], "peer": [90]}


@pytest.mark.e2e
def test_serve_bench_routed_replay_counts_answers_from_another_expert(tmp_path: Path, cache: Path) -> None:
    """The coserve policies send `model: coserve`: the server routes each prompt itself, and the
    replay counts answers from another expert than the workload planned."""
    import asyncio

    from live import LiveServer

    from coserve.bench.replay import replay
    from coserve.bench.workload import make_workload
    from coserve.config import load_library

    with LiveServer(tmp_path) as live:
        workload = make_workload(load_library(live.library), 6, 20.0, seed=1)  # the same router, in-process
        assert {w["expert"] for w in workload} <= {"small", "coder", "big"}
        routed = asyncio.run(replay(live.url, workload, 4, routed=True))
        assert routed["routed"] is True and routed["not_the_planned_expert"] == 0
        assert routed["throughput_rps"] > 0 and routed["p50_s"] > 0
        # the fake experts' answers are cut at max_tokens (4 words), reported in the stream's usage
        assert [(r["completion_tokens"], r["tokens_from"]) for r in routed["requests"]] == [(4, "usage")] * 6
        assert routed["completion_tokens"] == 24
        wrong = [{**w, "expert": "nobody"} for w in workload]
        assert asyncio.run(replay(live.url, wrong, 4, routed=True))["not_the_planned_expert"] == len(wrong)
        pinned = asyncio.run(replay(live.url, workload, 4))  # the peer's way: each expert by name
        assert "not_the_planned_expert" not in pinned
