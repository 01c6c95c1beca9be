"""The GPU tiers of the transformers backend, checked on a real model (run on a GPU machine).

    python scripts/gpu_check.py --model SmolLM2-135M-Instruct.Q4_1.gguf [--device cuda] [--json OUT]

Two experts share the model file; the pool's ACTIVE budget holds one of them, so serving them in
turn moves weights DISK -> RAM (pinned host copy) -> ACTIVE (device) and back. Prints, as JSON:

* greedy outputs along each path (DISK->ACTIVE, RAM->ACTIVE, reload from DISK after eviction) and
  whether they are identical;
* the RAM->ACTIVE switch (host->device copy of the weights, from the backend's own timing) against
  its floor: weight bytes / pinned host->device bandwidth measured in the same run;
* decode speed (greedy, 128 tokens) and the first-token time;
* device memory and host RSS over repeated load/unload cycles (drift).

Needs ``coserve[torch]`` (torch, transformers, gguf): without it, a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from coserve.cli.common import at_least
from coserve.config import load_library
from coserve.engine.pool import ExpertPool
from coserve.types import Chunk, Message, Sampling

if TYPE_CHECKING:
    from coserve.backends.transformers_hf import TransformersBackend

PROMPT = (Message("user", "Name three primary colours and say why they are called primary."),)


def library_file(folder: Path, model: Path, device: str) -> Path:
    expert = {"backend": "transformers", "source": str(model), "params_b": 0.135, "context": 2048}
    expert["options"] = {"device": device}
    data = {
        "experts": [{"name": "a", **expert}, {"name": "b", **expert}],
        "categories": {c: {"description": c, "examples": [c, c + " again"]} for c in ("x", "y")},
        "router": {"embedder": "hashing", "map": {"x": "a", "y": "b"}, "fallback": {"expert": "a"}},
    }
    path = folder / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def greedy(pool: ExpertPool, name: str, tokens: int = 32) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        before = pool.residency()[name].value
        start = time.monotonic()
        lease = await pool.acquire(name)
        acquired = time.monotonic() - start
        parts: list[str] = []
        first: list[float] = []

        def emit(chunk: Chunk) -> bool:
            if chunk.text and not first:
                first.append(time.monotonic() - t0)
            parts.append(chunk.text)
            return False

        t0 = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, pool.backends[name].stream, lease.handle, PROMPT, Sampling(tokens, 0.0), emit
            )
        finally:
            info = dict(lease.handle.info)
            lease.release()
        await asyncio.sleep(0.05)
        return {
            "expert": name,
            "tier_before": before,
            "acquire_s": round(acquired, 4),
            "copy_s": round(float(info.get("copy_s", 0.0)), 5),
            "ttft_s": round(first[0], 4) if first else None,
            "decode_s": round(time.monotonic() - t0, 4),
            "text": "".join(parts),
        }

    return asyncio.run(run())


def h2d_bandwidth(nbytes: int, device: str) -> float:
    """Bytes/s of a pinned host -> device copy of ``nbytes`` (median of 5 after a warm-up)."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    times = []
    for i in range(6):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times)


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_backend(parser: argparse.ArgumentParser) -> type[TransformersBackend]:
    """The transformers backend, or the parser's exit (2) naming the extra when it cannot be imported."""
    try:
        import torch  # noqa: F401  (the backend's own check looks for the package, not that it imports)

        from coserve.backends.transformers_hf import TransformersBackend
    except ImportError as exc:
        extra = "pip install 'coserve[torch]' (with the torch build for your machine)"
        reason = str(exc) if "coserve[torch]" in str(exc) else f"{exc}: {extra}"  # the backend's names it
        parser.exit(2, f"{parser.prog}: error: {reason}\n")
    return TransformersBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf)")
    parser.add_argument("--device", default="cuda", help="a torch device (default cuda; cpu runs without the copy)")
    parser.add_argument("--cycles", type=at_least(1), default=30, help="load/unload cycles for the drift")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    backend_class = torch_backend(parser)
    import torch

    result: dict[str, Any] = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as folder:
        library = load_library(library_file(Path(folder), args.model.resolve(), args.device))
        backend = backend_class()
        weights = backend.nbytes(library.expert("a"), None)
        one = weights + 2**20  # RAM holds one expert's weights
        loaded = backend.footprint(library.expert("a"), None) + 2**20  # ACTIVE holds one loaded expert
        # RAM holds both: an evicted expert drops to RAM (its pinned host copy) and comes back from there.
        pool = ExpertPool(library, {"a": backend, "b": backend}, loaded, ram_budget_bytes=2 * one)
        disk_run = greedy(pool, "a")
        other = greedy(pool, "b")
        ram_run = greedy(pool, "a")
        speed = greedy(pool, "a", tokens=128)
        asyncio.run(pool.close())
        # RAM holds one: an evicted expert drops to DISK and is read from the file again.
        pool = ExpertPool(library, {"a": backend, "b": backend}, loaded, ram_budget_bytes=one)
        greedy(pool, "a")
        greedy(pool, "b")
        reload_run = greedy(pool, "a")
        asyncio.run(pool.close())
        runs = {"disk_to_active": disk_run, "ram_to_active": ram_run, "reload_after_eviction": reload_run}
        result["paths"] = {k: {key: v for key, v in r.items() if key != "text"} for k, r in runs.items()}
        result["paths"]["other_expert"] = {k: v for k, v in other.items() if k != "text"}
        result["greedy_text"] = disk_run["text"]
        result["greedy_identical"] = len({r["text"] for r in runs.values()}) == 1 and bool(disk_run["text"].strip())
        result["decode_tok_s"] = round(128 / max(speed["decode_s"] - (speed["ttft_s"] or 0), 1e-9), 1)
        if args.device.startswith("cuda"):
            bandwidth = h2d_bandwidth(weights, args.device)
            result["switch"] = {
                "weights_bytes": weights,
                "h2d_pinned_gb_s": round(bandwidth / 1e9, 2),
                "floor_s": round(weights / bandwidth, 5),
                "copy_s": ram_run["copy_s"],
                "acquire_s": ram_run["acquire_s"],
                "ratio_copy_to_floor": round(ram_run["copy_s"] / (weights / bandwidth), 2),
            }
            # Drift: repeated RAM -> ACTIVE -> RAM cycles of one expert, straight on the backend.
            spec = library.expert("a")
            staged = backend.stage(spec, None)
            handle = backend.load(spec, staged)
            backend.unload(handle)
            torch.cuda.synchronize()
            base_dev, base_rss = torch.cuda.memory_allocated(), rss_mib()
            for _ in range(args.cycles):
                handle = backend.load(spec, staged)
                backend.unload(handle)
            torch.cuda.synchronize()
            result["cycles"] = {
                "n": args.cycles,
                "device_bytes_before": base_dev,
                "device_bytes_after": torch.cuda.memory_allocated(),
                "rss_mib_before": round(base_rss, 1),
                "rss_mib_after": round(rss_mib(), 1),
                "rss_drift_pct": round(100 * (rss_mib() - base_rss) / base_rss, 2),
            }
            backend.unstage(staged)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
