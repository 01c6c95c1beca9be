#!/usr/bin/env python3
"""Throughput of one expert under different backends: the same routed prompts, a few at a time.

    .venv/bin/python scripts/backend_throughput.py --expert large --n 16 llamacpp llamacpp-split

Prompts are the serve benchmark's workload (its seed 0) for that expert; greedy, 24 tokens, 4
requests in flight; the expert is loaded (RAM -> ACTIVE) before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

from coserve.backends.registry import backend_entry, check_library, get_backend
from coserve.bench.script_run import run_script
from coserve.bench.serve import make_workload
from coserve.cli.common import at_least
from coserve.config import load_library
from coserve.types import Chunk, Message, Sampling, Usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--expert", default="large")
    parser.add_argument("--n", type=at_least(1), default=16)
    parser.add_argument("--concurrency", type=at_least(1), default=4)
    parser.add_argument("--tokens", type=at_least(1), default=24)
    args = parser.parse_args()
    library = check_library(load_library())
    if args.expert not in library.expert_names:
        known = ", ".join(library.expert_names)
        parser.error(f"--expert {args.expert}: not an expert of the default library ({known})")
    for name in args.backends:  # every name checked before the first expert loads
        backend_entry(name)
    base = library.path.parent if library.path else None
    prompts = [w["prompt"] for w in make_workload(library, 400, 2.0, 0) if w["expert"] == args.expert][: args.n]
    results = {}
    for name in args.backends:
        backend = get_backend(name)
        spec = library.expert(args.expert).model_copy(update={"backend": name})
        staged = backend.stage(spec, base)
        handle = backend.load(spec, staged)
        usage: list[Usage] = []

        def one(prompt: str) -> None:
            parts: list[Chunk] = []
            settings = Sampling(max_tokens=args.tokens, temperature=0.0)
            backend.stream(handle, (Message("user", prompt),), settings, parts.append)  # noqa: B023
            usage.append(parts[-1].usage or Usage())  # noqa: B023

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, prompts))
        seconds = time.perf_counter() - start
        backend.unload(handle)
        backend.unstage(staged)
        results[name] = {
            "seconds": seconds,
            "requests_per_s": len(prompts) / seconds,
            "prompt_tokens": sum(u.prompt_tokens for u in usage),
            "completion_tokens": sum(u.completion_tokens for u in usage),
        }
        print(f"{name:<16} {seconds:6.2f} s  {len(prompts) / seconds:6.3f} req/s  {results[name]}", flush=True)
    print(json.dumps({"expert": args.expert, "n": len(prompts), "backends": results}))


if __name__ == "__main__":
    run_script(main)
