"""The serve benchmark's contenders, each a real server process replaying the same workload:
coserve under a residency (``coserve serve --residency``) and llama-cpp-python's multi-model
server (the peer). Each run returns the replay's figures plus the switches, loads and bytes moved.
It knows nothing about repetitions or targets (``coserve.bench.serve``)."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from coserve.assets import model_path
from coserve.bench.processes import free_port, wait_until_up
from coserve.bench.replay import replay
from coserve.config import LibraryConfig
from coserve.cpus import usable_cores

__all__ = ["PEER_COMMAND", "bench_library", "run_coserve", "run_peer"]

ROOT = Path(__file__).resolve().parents[2]
# How the peer starts (``scripts/setup-peer`` installs it); ``--config_file FILE`` is appended.
PEER_COMMAND = (str(ROOT / ".venv-peer" / "bin" / "python"), "-m", "llama_cpp.server")
START_TIMEOUT_S = 300.0


def bench_library(library: LibraryConfig, folder: Path, active: int, ram: int) -> Path:
    """A copy of the library in ``folder`` with these memory budgets (bytes); files it names resolved,
    and its decision log in ``folder`` (else the benchmark's requests fill the library's own log)."""
    data = yaml.safe_load(library.path.read_text()) if library.path else {}
    if library.path is not None:  # the copy lives elsewhere: files it names, made absolute
        if isinstance(data.get("categories"), str):
            data["categories"] = str(library.path.parent / data["categories"])
        router = data.get("router", {})
        for key in ("outcomes", "trained"):
            if isinstance(router.get(key), str):
                router[key] = str(library.path.parent / router[key])
        for expert in data.get("experts", []):
            sources = expert.get("source")
            if sources is not None:
                listed = [sources] if isinstance(sources, str) else sources
                absolute = [s if s.startswith("pkg:") else str(library.path.parent / s) for s in listed]
                expert["source"] = absolute[0] if isinstance(sources, str) else absolute
    data["memory"] = {**data.get("memory", {}), "active": active, "ram": ram}
    server = data.get("server") or {}  # the benchmark's requests are logged beside it, never in the user's log
    data["server"] = {**server, "log": {**(server.get("log") or {}), "path": str(folder / "decisions.sqlite")}}
    path = folder / "bench-library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_coserve(library_path: Path, residency: str, workload: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """One replay against ``coserve serve --residency RESIDENCY`` (routed: the server routes)."""
    port = free_port()
    cmd = [sys.executable, "-m", "coserve.cli", "serve", "--library", str(library_path), "--port", str(port),
           "--residency", residency, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/health", proc, START_TIMEOUT_S)
        result = asyncio.run(replay(base, workload, max_tokens, routed=True))
        metrics = httpx.get(f"{base}/metrics").text
        result["switches"] = int(httpx.get(f"{base}/health").json()["engine"]["switches"])
        result["loads"] = int(_metric(metrics, "coserve_expert_loads_total"))
        result["bytes_moved"] = int(_metric(metrics, "coserve_bytes_moved"))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_peer(
    library: LibraryConfig,
    workload: list[dict[str, Any]],
    max_tokens: int,
    folder: Path,
    command: tuple[str, ...] = PEER_COMMAND,
) -> dict[str, Any]:
    """One replay against the peer, each request naming its planned expert (the peer cannot route)."""
    if not Path(command[0]).exists():
        return {"skipped": "llama-cpp-python is not installed: run scripts/setup-peer"}
    base = library.path.parent if library.path else None
    threads = usable_cores()  # what coserve's llama.cpp backends use by default
    models = [
        {"model": str(model_path(spec, base)), "model_alias": spec.name, "n_ctx": spec.context,
         "n_threads": threads, "n_threads_batch": threads, "verbose": False}
        for spec in library.experts
    ]  # fmt: skip
    port = free_port()
    config = folder / "peer.json"
    # interrupt_requests=False: by default the peer aborts a streaming request when another arrives;
    # queueing them (as a server must) is the fair comparison.
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "interrupt_requests": False, "models": models}))
    proc = subprocess.Popen([*command, "--config_file", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc, START_TIMEOUT_S)
        result = asyncio.run(replay(f"http://127.0.0.1:{port}", workload, max_tokens))
        # The peer reloads whenever consecutive requests (in its serving order) name different models.
        order = [w["expert"] for w in sorted(workload, key=lambda w: w["at"])]
        pairs = list(itertools.pairwise(order))
        switches = 1 + sum(a != b for a, b in pairs)
        sizes = {spec.name: model_path(spec, base).stat().st_size for spec in library.experts}
        result["switches"] = switches
        result["loads"] = switches
        result["bytes_moved"] = sizes[order[0]] + sum(sizes[b] for a, b in pairs if a != b)
        result["note"] = "switches and bytes counted from arrival order (the peer serves one request at a time)"
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=60)
