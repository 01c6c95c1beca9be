#!/usr/bin/env python3
"""What the router's embeddings cost an expert decoding on the same cores.

    .venv/bin/python scripts/router_contention.py [--expert large] [--n 16] [--every 0.5]

Decodes the serve benchmark's prompts for one expert (llamacpp-split, 4 in flight, 24 greedy
tokens) three ways: alone; while a thread embeds another prompt with MiniLM every ``--every``
seconds (the benchmark's arrival rate) using numpy's default BLAS threads; and the same with one
BLAS thread, as ``Engine.build`` sets beside CPU experts (docs/decisions.md, 2026-11-30). Each mode
runs in a fresh process, twice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MODES = ("alone", "blas_default", "blas_one")


def _run(mode: str, expert: str, n: int, every: float) -> list[float]:
    from coserve.backends.registry import check_library, get_backend
    from coserve.bench.serve import make_workload
    from coserve.config import load_library
    from coserve.router.embed import MiniLMEmbedder
    from coserve.types import Chunk, Message, Sampling

    library = check_library(load_library())
    base = library.path.parent if library.path else None
    prompts = [w["prompt"] for w in make_workload(library, 400, 2.0, 0) if w["expert"] == expert][:n]
    others = [w["prompt"] for w in make_workload(library, 400, 2.0, 1)]
    embedder = MiniLMEmbedder(cache_size=0) if mode != "alone" else None
    if mode == "blas_one":
        from coserve.cpus import limit_blas_threads

        limit_blas_threads()
    spec = library.expert(expert).model_copy(update={"backend": "llamacpp-split"})
    backend = get_backend("llamacpp-split")
    staged = backend.stage(spec, base)
    handle = backend.load(spec, staged)
    stop = threading.Event()

    def route() -> None:
        i = 0
        while not stop.wait(every):
            assert embedder is not None
            embedder.encode([others[i % len(others)]])
            i += 1

    def one(prompt: str) -> None:
        parts: list[Chunk] = []
        backend.stream(handle, (Message("user", prompt),), Sampling(max_tokens=24, temperature=0.0), parts.append)

    rates = []
    for _ in range(2):
        stop.clear()
        router = threading.Thread(target=route, daemon=True) if embedder else None
        if router:
            router.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, prompts))
        rates.append(len(prompts) / (time.perf_counter() - start))
        stop.set()
        if router:
            router.join()
    backend.unload(handle)
    backend.unstage(staged)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expert", default="large")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in this process
    args = parser.parse_args()
    if args.n < 1 or args.every < 0:
        parser.error("--n must be 1 or more and --every 0 or more")
    if args.mode:
        print(json.dumps(_run(args.mode, args.expert, args.n, args.every)))
        return
    results = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode, "--expert", args.expert, "--n", str(args.n),
               "--every", str(args.every)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{mode:<13} " + " / ".join(f"{r:.3f}" for r in results[mode]) + " req/s", flush=True)
    print(json.dumps({"expert": args.expert, "n": args.n, "every_s": args.every, "requests_per_s": results}))


if __name__ == "__main__":
    main()
