"""``coserve bench serve``: the serving engine against simpler policies and a real peer.

One workload — routed prompts with Poisson arrivals, categories drawn from a fixed mix — is
decided once by the router, then replayed with the same expert for every request against:

* ``load_per_request``: arrival order, each request loads its expert and unloads it after;
* ``lru``: arrival order, experts kept within the memory budget, least recently used evicted;
* ``lookahead``: coserve's scheduler (batch by expert, bounded wait), lookahead eviction, prefetch;
* ``all_resident``: the same scheduler with unlimited memory (the bound: no switches after warm-up);
* ``peer``: llama-cpp-python's OpenAI-compatible server in multi-model mode (its config lists the
  same GGUF files; it loads the model a request names and drops the previous one), installed by
  ``scripts/setup-peer``.

Each coserve policy runs as a real server process (``coserve serve --policy``), so both sides pay
the same HTTP and streaming costs. The memory budget of the ACTIVE tier holds about half the
library (loaded footprints, KV caches included); the RAM tier (page cache) holds all of it.
Switch time is measured directly (load of an expert whose file is in RAM) against its floor:
file bytes / read bandwidth, from the page cache and from disk, both measured in this run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from coserve.assets import cache_dir, model_path
from coserve.backends.base import get_backend
from coserve.backends.staging import read_bandwidth
from coserve.config import LibraryConfig, default_library_path
from coserve.cpus import usable_cores
from coserve.router.router import CoERouter
from coserve.types import Message, Request

__all__ = ["bench_serve", "make_workload"]

MIX = {"chat": 0.35, "code": 0.35, "knowledge": 0.12, "math": 0.10, "writing": 0.08}  # category shares
ROOT = Path(__file__).resolve().parents[2]


def make_workload(library: LibraryConfig, n: int, rate: float, seed: int) -> list[dict[str, Any]]:
    """``n`` requests: arrival time (Poisson at ``rate``/s), prompt, and the router's expert."""
    rng = random.Random(seed)
    router = CoERouter.load_or_fit(library, cache_dir())
    pools = {name: list(c.examples) for name, c in library.categories.items()}
    mix = {k: v for k, v in MIX.items() if k in pools} or {k: 1.0 for k in pools}
    names, weights = zip(*mix.items(), strict=True)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        category = rng.choices(names, weights)[0]
        prompt = rng.choice(pools[category])
        decision = router.route(Request((Message("user", prompt),), "coserve"))
        out.append({"i": i, "at": t, "prompt": prompt, "category": category, "expert": decision.expert})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


async def _replay(base: str, workload: list[dict[str, Any]], max_tokens: int, routed: bool = False) -> dict[str, Any]:
    """Send every request at its arrival time (streamed); collect latency and time to first token.

    ``routed``: ask for the virtual model ``coserve``, so the server routes each prompt itself (its
    router's cost included), and count answers from another expert than the workload planned."""
    results: list[dict[str, float]] = []
    elsewhere = 0
    limits = httpx.Limits(max_connections=len(workload) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        start = time.monotonic()

        async def one(item: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + item["at"] - time.monotonic()))
            sent = time.monotonic()
            first = math.nan
            nonlocal elsewhere
            body = {
                "model": "coserve" if routed else item["expert"],
                "messages": [{"role": "user", "content": item["prompt"]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
            }
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]" and math.isnan(first):
                        chunk = json.loads(line[6:])
                        if chunk.get("choices") and (chunk["choices"][0].get("delta") or {}).get("content"):
                            first = time.monotonic() - sent
                            elsewhere += chunk.get("model") != item["expert"]
            results.append({"latency": time.monotonic() - sent, "ttft": first})

        await asyncio.gather(*(one(item) for item in workload))
        makespan = time.monotonic() - start
    latencies = sorted(r["latency"] for r in results)
    ttfts = [r["ttft"] for r in results if not math.isnan(r["ttft"])]
    return {
        "throughput_rps": len(results) / makespan,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "ttft_p50_s": statistics.median(ttfts) if ttfts else math.nan,
        "makespan_s": makespan,
        **({"routed": True, "not_the_planned_expert": elsewhere} if routed else {}),
    }


def _bench_library(library: LibraryConfig, folder: Path, active: int, ram: int) -> Path:
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
    path = folder / "bench-library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _run_coserve(library_path: Path, policy: str, workload: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    port = _free_port()
    cmd = [sys.executable, "-m", "coserve.cli", "serve", "--library", str(library_path), "--port", str(port),
           "--policy", policy, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(f"http://127.0.0.1:{port}/health", proc)
        result = asyncio.run(_replay(f"http://127.0.0.1:{port}", workload, max_tokens, routed=True))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        result["switches"] = int(health["engine"]["switches"])
        result["loads"] = int(_metric(metrics, "coserve_expert_loads_total"))
        result["bytes_moved"] = int(_metric(metrics, "coserve_bytes_moved"))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _run_peer(library: LibraryConfig, workload: list[dict[str, Any]], max_tokens: int, folder: Path) -> dict[str, Any]:
    python = ROOT / ".venv-peer" / "bin" / "python"
    if not python.exists():
        return {"skipped": "llama-cpp-python is not installed: run scripts/setup-peer"}
    base = library.path.parent if library.path else None
    threads = usable_cores()  # what coserve's llama.cpp backends use by default
    models = [
        {"model": str(model_path(spec, base)), "model_alias": spec.name, "n_ctx": spec.context,
         "n_threads": threads, "n_threads_batch": threads, "verbose": False}
        for spec in library.experts
    ]  # fmt: skip
    port = _free_port()
    config = folder / "peer.json"
    # interrupt_requests=False: by default the peer aborts a streaming request when another arrives;
    # queueing them (as a server must) is the fair comparison.
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "interrupt_requests": False, "models": models}))
    proc = subprocess.Popen([str(python), "-m", "llama_cpp.server", "--config_file", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_up(f"http://127.0.0.1:{port}/v1/models", proc)
        result = asyncio.run(_replay(f"http://127.0.0.1:{port}", workload, max_tokens))
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


def measure_switch(library: LibraryConfig) -> dict[str, Any]:
    """Load time of each expert from RAM and from disk, against bytes / measured bandwidth."""
    base = library.path.parent if library.path else None
    rows: dict[str, Any] = {}
    for spec in library.experts:
        backend = get_backend(spec.backend)
        path = model_path(spec, base)
        size = path.stat().st_size
        disk_bw = read_bandwidth(path, from_disk=True)
        cache_bw = read_bandwidth(path, from_disk=False)
        # Through the backend's own tiers: for `llamacpp` RAM is the file's pages in the page
        # cache, for `llamacpp-split` the model loaded without a context.
        staged = backend.stage(spec, base)  # in RAM
        times = []
        for _ in range(3):  # the median of three moves RAM -> ACTIVE -> RAM
            start = time.perf_counter()
            handle = backend.load(spec, staged)
            times.append(time.perf_counter() - start)
            backend.unload(handle)
        from_ram = statistics.median(times)
        backend.unstage(staged)  # now on disk only
        start = time.perf_counter()
        staged = backend.stage(spec, base)
        handle = backend.load(spec, staged)
        from_disk = time.perf_counter() - start
        backend.unload(handle)
        backend.unstage(staged)
        rows[spec.name] = {
            "bytes": size,
            "ram_to_active_s": from_ram,
            "ram_to_active_runs_s": times,
            "ram_floor_s": size / cache_bw,
            "disk_to_active_s": from_disk,
            "disk_floor_s": size / disk_bw,
            "cache_gb_s": cache_bw / 1e9,
            "disk_gb_s": disk_bw / 1e9,
        }
    return rows


def bench_serve(
    library: LibraryConfig | None = None,
    n: int = 48,
    rate: float = 2.0,
    max_tokens: int = 24,
    seed: int = 0,
    policies: tuple[str, ...] = ("load_per_request", "lru", "lookahead", "all_resident", "peer"),
) -> dict[str, Any]:
    """Run the workload under every policy; print and return the figures."""
    from coserve.config import load_library

    library = library or load_library(default_library_path())
    base = library.path.parent if library.path else None
    weights = sum(model_path(spec, base).stat().st_size for spec in library.experts)
    sizes = sorted(get_backend(spec.backend).footprint(spec, base) for spec in library.experts)
    total = sum(sizes)
    # About half the library, loaded footprints counted (KV caches included); when one expert is
    # most of the library, the largest and the smallest together (never all of them).
    active = max(int(total * 0.5), int((sizes[-1] + sizes[0]) * 1.02))
    workload = make_workload(library, n, rate, seed)
    counts = {e: sum(w["expert"] == e for w in workload) for e in library.expert_names}
    print(f"workload: {n} requests, Poisson {rate}/s, {max_tokens} tokens each, experts {counts}")
    print(
        f"memory: library {weights / 2**20:.0f} MiB of weights, {total / 2**20:.0f} MiB loaded; "
        f"ACTIVE budget {active / 2**20:.0f} MiB, RAM holds all"
    )
    result: dict[str, Any] = {
        "policies": {},
        "workload": {"n": n, "rate": rate, "max_tokens": max_tokens, "experts": counts, "active_budget_bytes": active},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        half = _bench_library(library, folder, active, 2 * weights)
        (folder / "all").mkdir()
        everything = _bench_library(library, folder / "all", 4 * total, 4 * total)
        print(f"{'policy':<18} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'ttft p50':>9} {'switches':>9} {'GB moved':>9}")
        for policy in policies:
            if policy == "peer":
                row = _run_peer(library, workload, max_tokens, folder)
            elif policy == "all_resident":
                row = _run_coserve(everything, "lookahead", workload, max_tokens)
            else:
                row = _run_coserve(half, policy, workload, max_tokens)
            result["policies"][policy] = row
            if "skipped" in row:
                print(f"{policy:<18} skipped: {row['skipped']}", flush=True)
                continue
            print(
                f"{policy:<18} {row['throughput_rps']:>7.3f} {row['p50_s']:>7.2f} {row['p95_s']:>7.2f} "
                f"{row['ttft_p50_s']:>9.2f} {row['switches']:>9} {row['bytes_moved'] / 1e9:>9.2f}",
                flush=True,
            )
    switch = measure_switch(library)
    name = max(switch, key=lambda k: switch[k]["bytes"])
    result["switch"] = {"expert": name, "time_s": switch[name]["ram_to_active_s"],
                        "floor_s": switch[name]["ram_floor_s"], "experts": switch,
                        "malloc_hugepages": _hugepages_on()}  # fmt: skip
    _print_switch(switch, "")
    huge = measure_switch_hugepages(library)
    if huge is not None:
        result["switch"]["hugepages"] = {"time_s": huge[name]["ram_to_active_s"], "floor_s": huge[name]["ram_floor_s"],
                                         "experts": huge}  # fmt: skip
        _print_switch(huge, f" ({HUGEPAGES})")
    result["targets"] = targets(result)
    for name, row in result["targets"].items():
        print(f"target {name:<24} {row['value']:.2f} (want {row['want']}): {'met' if row['met'] else 'MISSED'}")
    return result


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The serving targets (docs/serving.md) read off one run: ratio, what is wanted, met or not."""
    rows: dict[str, dict[str, Any]] = {}
    policies = result.get("policies", {})

    def rps(policy: str) -> float | None:
        row = policies.get(policy, {})
        return row.get("throughput_rps") if "skipped" not in row else None

    ours = rps("lookahead")
    for name, other, want in (("x_load_per_request", "load_per_request", 2.0), ("x_peer", "peer", 2.0)):
        theirs = rps(other)
        if ours and theirs:
            rows[name] = {"value": ours / theirs, "want": f">= {want}", "met": ours / theirs >= want}
    bound = rps("all_resident")
    if ours and bound:
        below = 1 - ours / bound
        rows["below_all_resident"] = {"value": below, "want": "<= 0.10", "met": below <= 0.10}
    switch = result.get("switch", {})
    for name, row in (("switch_over_floor", switch), ("switch_over_floor_hugepages", switch.get("hugepages"))):
        if row and row.get("floor_s"):
            ratio = row["time_s"] / row["floor_s"]
            rows[name] = {"value": ratio, "want": "<= 1.5", "met": ratio <= 1.5}
    return rows


def _print_switch(switch: dict[str, Any], note: str) -> None:
    for expert, row in switch.items():
        print(f"switch {expert:<8} RAM->ACTIVE {row['ram_to_active_s']:.3f} s (floor {row['ram_floor_s']:.3f} s at "
              f"{row['cache_gb_s']:.2f} GB/s); DISK->ACTIVE {row['disk_to_active_s']:.2f} s "
              f"(floor {row['disk_floor_s']:.2f} s at {row['disk_gb_s']:.2f} GB/s){note}")  # fmt: skip


HUGEPAGES = "glibc.malloc.hugetlb=1"  # glibc asks for transparent huge pages on what malloc maps


def _hugepages_on() -> bool:
    return HUGEPAGES in os.environ.get("GLIBC_TUNABLES", "")


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "none"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "none"


def measure_switch_hugepages(library: LibraryConfig) -> dict[str, Any] | None:
    """The same switch measurement in a process whose malloc uses transparent huge pages (a glibc
    tunable, read at process start): a new context's KV cache then faults in 2 MiB pages, not
    4 KiB ones. None where that cannot change anything (no THP, or this process has it already)."""
    if library.path is None or _hugepages_on() or _thp_mode() not in ("madvise", "always"):
        return None
    tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES", ""), HUGEPAGES) if t)
    out = subprocess.run(
        [sys.executable, "-m", "coserve.bench.serve", "switch", str(library.path)],
        env={**os.environ, "GLIBC_TUNABLES": tunables},
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    measured: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return measured


if __name__ == "__main__" and sys.argv[1:2] == ["switch"]:
    from coserve.config import load_library

    print(json.dumps(measure_switch(load_library(sys.argv[2]))))
