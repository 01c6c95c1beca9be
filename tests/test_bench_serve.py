"""`coserve bench serve` with fakes: its prompt set, its workload, and a whole run (coserve's real
server over fake experts, and a fake peer on loopback) checked for what the benchmark records."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_library

from coserve.bench import serve
from coserve.bench.workload import PROMPTS, make_workload
from coserve.config import load_library
from coserve.errors import ConfigError


def test_the_prompts_are_none_of_the_classifiers_training_examples() -> None:
    default = load_library()
    examples = {e.strip().lower() for category in default.categories.values() for e in category.examples}
    ours = [p.strip().lower() for prompts in PROMPTS.values() for p in prompts]
    assert len(ours) == len(set(ours))  # no prompt twice in the set
    assert not set(ours) & examples
    assert set(PROMPTS) <= set(default.categories)


def test_a_workload_draws_each_prompt_once_unless_repeats_are_allowed(tmp_path: Path, cache: Path) -> None:
    library = load_library(write_library(tmp_path))  # categories code, math, chat
    available = sum(len(PROMPTS[c]) for c in ("code", "math", "chat"))
    workload = make_workload(library, 20, 5.0, seed=3)
    assert len({w["prompt"] for w in workload}) == 20
    assert all(w["prompt"] in PROMPTS[w["category"]] for w in workload)
    assert [w["at"] for w in workload] == sorted(w["at"] for w in workload)
    with pytest.raises(ConfigError, match="--allow-repeats"):
        make_workload(library, available + 1, 5.0, seed=3)
    assert len(make_workload(library, available + 1, 5.0, seed=3, allow_repeats=True)) == available + 1


FAKE_PEER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

config = json.load(open(sys.argv[sys.argv.index("--config_file") + 1]))
aliases = {m["model_alias"] for m in config["models"]}
log = open(sys.argv[sys.argv.index("--config_file") + 1] + ".log", "a")


class Peer(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": a} for a in sorted(aliases)]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        log.write(request["model"] + "\\n")
        log.flush()
        self.send_response(200 if request["model"] in aliases else 404)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(request["max_tokens"]):  # one word a chunk, no usage: counted from chunks
            chunk = {"model": request["model"], "choices": [{"delta": {"content": f" w{i}"}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
        self.wfile.write(b"data: [DONE]\\n\\n")

    def log_message(self, *args):
        pass


ThreadingHTTPServer((config["host"], config["port"]), Peer).serve_forever()
"""


def test_a_whole_run_alternates_contenders_and_records_every_request(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    for name in ("small", "coder", "big"):
        (tmp_path / "models" / f"{name}.gguf").write_bytes(b"x" * 1000)
    sources = {name: {"source": f"models/{name}.gguf"} for name in ("small", "coder", "big")}
    library = load_library(write_library(tmp_path, fields=sources))
    peer = tmp_path / "fake_peer.py"
    peer.write_text(FAKE_PEER)
    order: list[str] = []
    real_coserve, real_peer = serve.run_coserve, serve.run_peer

    def coserve_run(path: Path, residency: str, *args: Any) -> dict[str, Any]:
        order.append("all_resident" if path.parent.name == "all" else residency)
        return real_coserve(path, residency, *args)

    def peer_run(*args: Any) -> dict[str, Any]:
        order.append("peer")
        result = real_peer(*args)
        requested.extend((args[3] / "peer.json.log").read_text().split())
        (args[3] / "peer.json.log").unlink()
        return result

    requested: list[str] = []
    monkeypatch.setattr(serve, "run_coserve", coserve_run)
    monkeypatch.setattr(serve, "run_peer", peer_run)
    contenders = ("lru", "lookahead", "peer")
    result = serve.bench_serve(library, n=6, rate=50.0, max_tokens=4, contenders=contenders, repeats=2,
                               measure_switches=False, peer_command=(sys.executable, str(peer)))  # fmt: skip
    assert order == list(contenders) * 2  # alternating: ABCABC
    workload = make_workload(library, 6, 50.0, seed=0)
    planned = [w["expert"] for w in workload]
    assert sorted(requested) == sorted(planned * 2)  # the peer was asked for the planned experts
    for contender in contenders:
        runs = result["runs"][contender]
        assert len(runs) == 2
        for run in runs:
            # the fake experts answer "<expert> says: <prompt words>..." cut at max_tokens (4 words);
            # the fake peer sends 4 chunks: 4 tokens a request on both sides
            assert [r["completion_tokens"] for r in run["requests"]] == [4] * 6
            assert {r["tokens_from"] for r in run["requests"]} == {"chunks" if contender == "peer" else "usage"}
            assert run["completion_tokens"] == 24
        throughput = [run["throughput_rps"] for run in runs]
        assert result["summary"][contender]["throughput_rps"] == {
            "median": sorted(throughput)[0] / 2 + sorted(throughput)[1] / 2, "min": min(throughput),
            "max": max(throughput)}  # fmt: skip
    assert result["summary"]["completion_tokens_equal"] is True
    for contender in ("lru", "lookahead"):
        for run in result["runs"][contender]:
            assert run["not_the_planned_expert"] == 0 and run["loads"] >= len(set(planned))
    peer_switches = 1 + sum(a != b for a, b in itertools.pairwise(planned))
    assert [run["switches"] for run in result["runs"]["peer"]] == [peer_switches] * 2
    assert set(result["targets"]) == {"x_lru", "x_peer"}
    assert result["workload"]["repeats"] == 2 and result["workload"]["allow_repeats"] is False


def test_the_cli_writes_the_run_with_its_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coserve.cli import main

    seen: dict[str, Any] = {}

    def fake_bench(library: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"summary": {}, "targets": {}}

    monkeypatch.setattr(serve, "bench_serve", fake_bench)
    out = tmp_path / "serve.json"
    library = write_library(tmp_path)
    argv = ["bench", "serve", "--library", str(library), "--contenders", "lru,lookahead", "--json", str(out)]
    assert main(argv) == 0
    assert seen["repeats"] == 3 and seen["contenders"] == ("lru", "lookahead") and seen["allow_repeats"] is False
    written = json.loads(out.read_text())
    assert set(written["provenance"]) >= {"command", "commit", "date", "cpu_model", "usable_cores"}
    assert main(["bench", "serve", "--library", str(library), "--contenders", "lru,nobody"]) != 0
    assert yaml.safe_load(library.read_text())  # the library file is untouched


@pytest.mark.parametrize(
    ("flags", "message"),
    [  # session 12's walk: each of these started the benchmark (real servers, minutes) or a traceback
        (["--n", "0"], "--n must be at least 1"),
        (["--rate", "0"], "--rate must be a positive number of requests/s"),  # ZeroDivisionError
        (["--rate", "-1"], "--rate must be a positive number of requests/s"),  # "Poisson -1.0/s"
        (["--rate", "nan"], "--rate must be a positive number of requests/s"),
        (["--max-tokens", "0"], "--max-tokens must be between 1 and 8192"),  # every request a 422, then a traceback
        (["--max-tokens", "8193"], "--max-tokens must be between 1 and 8192"),
        (["--contenders", "lru,lru"], "--contenders names a contender twice"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--json", "/proc/no/serve.json"], "--json /proc/no/serve.json: cannot write it (No such file or directory)"),
    ],
)
def test_the_cli_refuses_bad_options_before_the_benchmark_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    from coserve.cli import main

    def started(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(serve, "bench_serve", started)
    library = write_library(tmp_path)
    assert main(["bench", "serve", "--library", str(library), *flags]) == 2
    assert capsys.readouterr().err == f"coserve: error: {message}\n"


def test_the_cli_refuses_a_folder_as_its_json_before_the_benchmark_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from coserve.cli import main

    monkeypatch.setattr(serve, "bench_serve", lambda *_, **__: pytest.fail("the benchmark started"))
    library = write_library(tmp_path)
    assert main(["bench", "serve", "--library", str(library), "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"coserve: error: --json {tmp_path}: cannot write it (a folder is in its place)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["library.yaml"]  # no probe file left behind
