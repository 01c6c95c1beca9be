"""``coserve bench route``: the cost of one routing decision (embedding included).

Prompts are made of distinct random words so the embedding cache never answers; each length is
checked with the embedder's own tokenizer. Batched throughput routes 256 distinct prompts at once.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from coserve.config import LibraryConfig
from coserve.paths import cache_dir
from coserve.router.router import CoERouter
from coserve.types import ROUTED_MODEL, Message, Request

__all__ = ["bench_route", "decision_times"]

_WORDS = (
    "river model token cache write python garden number proof story query vector budget expert memory route "
    "answer letter planet market engine kernel theorem poem recipe travel"
).split()


def _prompt(router: CoERouter, rng: random.Random, tokens: int) -> str:
    words = [rng.choice(_WORDS) + str(rng.randrange(10)) for _ in range(tokens)]
    count = getattr(router.embedder, "count_tokens", None)
    if count is None:
        return " ".join(words[:tokens])
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose token count stays within `tokens`
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def decision_times(library: LibraryConfig, lengths: tuple[int, ...] = (16, 64, 256), n: int = 200) -> dict[str, Any]:
    """p50/p95 milliseconds of one decision per prompt length."""
    router = CoERouter.load_or_fit(library, cache_dir())
    rng = random.Random(0)
    out: dict[str, Any] = {}
    for length in lengths:
        prompts = [_prompt(router, rng, length) for _ in range(n)]
        router.route(Request((Message("user", prompts[0]),), ROUTED_MODEL))  # warm-up
        times = []
        for text in prompts[1:]:
            start = time.perf_counter()
            router.route(Request((Message("user", text),), ROUTED_MODEL))
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        out[str(length)] = {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))]}
    return out


def bench_route(library: LibraryConfig, n: int = 200) -> dict[str, Any]:
    """Decision times for 16/64/256-token prompts and batched decisions per second."""
    result: dict[str, Any] = {"decision_ms": decision_times(library, n=n)}
    router = CoERouter.load_or_fit(library, cache_dir())
    rng = random.Random(1)
    batch = [_prompt(router, rng, 24) for _ in range(256)]
    start = time.perf_counter()
    router.probabilities(batch)
    result["batched_per_s"] = len(batch) / (time.perf_counter() - start)
    for length, row in result["decision_ms"].items():
        print(f"route {length:>4} tokens: p50 {row['p50']:.2f} ms  p95 {row['p95']:.2f} ms")
    print(f"batched: {result['batched_per_s']:.0f} decisions/s (256 distinct 24-token prompts)")
    return result
