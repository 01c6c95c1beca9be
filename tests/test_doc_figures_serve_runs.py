"""scripts/doc_figures.py serve-runs: one entry per recorded run, from single-run and multi-run files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "doc_figures.py"
POLICY_ORDER = ("lookahead", "all_resident", "lru", "load_per_request", "peer")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("doc_figures_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(rps: tuple[float, ...], routed: bool = False) -> dict[str, dict[str, Any]]:
    pairs = zip(POLICY_ORDER, rps, strict=True)
    out: dict[str, dict[str, Any]] = {p: {"throughput_rps": r, "p50_s": 1.0} for p, r in pairs}
    if routed:
        out["lookahead"]["routed"] = True
    return out


def _write(folder: Path, name: str, body: dict[str, Any]) -> None:
    (folder / name).write_text(json.dumps(body))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    # Old layout: one run, `policies` and one `switch` (plain and huge pages).
    single_switch = {
        "experts": {"large": {"ram_to_active_s": 0.3, "ram_floor_s": 0.1}},
        "hugepages": {"experts": {"large": {"ram_to_active_s": 0.12, "ram_floor_s": 0.1}}},
    }
    _write(
        tmp_path,
        "serve-aaa.json",
        {
            "provenance": {"commit": "aaa"},
            "policies": _figures((1.0, 1.25, 0.8, 0.25, 0.5)),
            "switch": single_switch,
        },
    )
    # New layout: two alternating runs per policy under `runs`, a `summary`, one `switch` for the file.
    run_one, run_two = _figures((2.0, 2.0, 1.6, 0.5, 0.8), True), _figures((1.5, 2.0, 2.0, 0.5, 1.0), True)
    _write(
        tmp_path,
        "serve-bbb.json",
        {
            "provenance": {"commit": "bbb"},
            "summary": {p: {"throughput_rps": {"median": 9.0, "min": 9.0, "max": 9.0}} for p in POLICY_ORDER},
            "runs": {p: [run_one[p], run_two[p]] for p in POLICY_ORDER},
            "switch": {"experts": {"coder": {"ram_to_active_s": 0.2, "ram_floor_s": 0.1}}},
        },
    )
    # No peer: skipped and said so; the output of an earlier job is not read as a run.
    _write(tmp_path, "serve-ccc.json", {"policies": {p: {"throughput_rps": 1.0} for p in POLICY_ORDER[:4]}})
    _write(tmp_path, "serve-runs.json", {"runs": [], "over_runs": {}})
    return tmp_path


def test_every_run_of_both_layouts_is_one_entry(data: Path) -> None:
    body = json.loads(_script().serve_runs(data).read_text())
    assert body["provenance"]["command"] == "scripts/doc_figures.py serve-runs"
    assert body["files"] == 2
    assert body["skipped"] == ["docs/data/serve-ccc.json: no run of every policy with throughput_rps"]
    entries = [(r["file"], r["run"], r["runs_in_file"], r["commit"], r["routed_in_server"]) for r in body["runs"]]
    assert entries == [
        ("docs/data/serve-aaa.json", 1, 1, "aaa", False),
        ("docs/data/serve-bbb.json", 1, 2, "bbb", True),
        ("docs/data/serve-bbb.json", 2, 2, "bbb", True),
    ]
    assert body["runs"][2]["req_per_s"] == dict(zip(POLICY_ORDER, (1.5, 2.0, 2.0, 0.5, 1.0), strict=True))
    ratio_names = (
        "lookahead_x_peer",
        "lookahead_x_lru",
        "lookahead_x_load_per_request",
        "lookahead_below_all_resident",
        "all_resident_x_peer",
    )
    expected_ratios = [(2.0, 1.25, 4.0, 0.2, 2.5), (2.5, 1.25, 4.0, 0.0, 2.5), (1.5, 0.75, 3.0, 0.25, 2.0)]
    for entry, expected in zip(body["runs"], expected_ratios, strict=True):
        assert [entry[name] for name in ratio_names] == pytest.approx(list(expected))
    # The multi-run file's switch was measured once: it goes with its first run only.
    switches = [r["switch_over_floor"] for r in body["runs"]]
    assert switches[0] == {"plain": {"large": pytest.approx(3.0)}, "hugepages": {"large": pytest.approx(1.2)}}
    assert switches[1:] == [{"plain": {"coder": pytest.approx(2.0)}}, {}]


def test_the_spread_is_over_every_run(data: Path) -> None:
    over = json.loads(_script().serve_runs(data).read_text())["over_runs"]
    assert over["lookahead_x_peer"] == pytest.approx({"median": 2.0, "min": 1.5, "max": 2.5, "n": 3})
    assert over["lookahead_x_lru"] == pytest.approx({"median": 1.25, "min": 0.75, "max": 1.25, "n": 3})
    assert over["lookahead_below_all_resident"] == pytest.approx({"median": 0.2, "min": 0.0, "max": 0.25, "n": 3})
    assert over["lookahead_req_per_s"] == pytest.approx({"median": 1.5, "min": 1.0, "max": 2.0, "n": 3})
    assert over["peer_req_per_s"] == pytest.approx({"median": 0.8, "min": 0.5, "max": 1.0, "n": 3})


def test_a_switch_recorded_per_run_stays_with_its_run(tmp_path: Path) -> None:
    runs = [_figures((1.0, 1.0, 1.0, 1.0, 1.0)), _figures((1.0, 1.0, 1.0, 1.0, 1.0))]
    per_run_switch = [
        {"experts": {"large": {"ram_to_active_s": 0.4, "ram_floor_s": 0.1}}},
        {"experts": {"large": {"ram_to_active_s": 0.5, "ram_floor_s": 0.1}}},
    ]
    body = {"runs": {p: [r[p] for r in runs] for p in POLICY_ORDER}, "switch": per_run_switch}
    _write(tmp_path, "serve-ddd.json", body)
    out = json.loads(_script().serve_runs(tmp_path).read_text())
    assert [r["switch_over_floor"] for r in out["runs"]] == [
        {"plain": {"large": pytest.approx(4.0)}},
        {"plain": {"large": pytest.approx(5.0)}},
    ]
    assert [r["commit"] for r in out["runs"]] == ["not recorded", "not recorded"]
