"""``coserve bench route``: the cost of one routing decision (embedding included), per embedder.

Prompts are made of distinct random words so the embedding cache never answers; each length is
checked with the embedder's own tokenizer. Batched throughput routes 256 distinct prompts at once.
BLAS runs with the thread limit the engine sets while experts decode (one thread) unless told
otherwise. With ``embedders`` (variants such as ``minilm:max_tokens=128`` or
``minilm-int8:threads=2``, see ``coserve.router.embedders``), each variant routes the library's
categories with its own classifier, and the report gives, beside the decision times, the
tokenizer's share of a 64-token decision and the time of a repeated (cached) prompt.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from coserve.config import LibraryConfig
from coserve.paths import cache_dir
from coserve.router.router import CoERouter
from coserve.types import ROUTED_MODEL, Message, Request

__all__ = ["bench_route", "decision_times"]

LENGTHS = (16, 64, 256)
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


def _route(router: CoERouter, text: str) -> float:
    start = time.perf_counter()
    router.route(Request((Message("user", text),), ROUTED_MODEL))
    return (time.perf_counter() - start) * 1000


def _p50_p95(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))]}


def decision_times(router: CoERouter, lengths: Sequence[int] = LENGTHS, n: int = 200) -> dict[str, Any]:
    """p50/p95 milliseconds of one decision per prompt length (distinct prompts, no cache hits)."""
    rng = random.Random(0)
    out: dict[str, Any] = {}
    for length in lengths:
        prompts = [_prompt(router, rng, length) for _ in range(n)]
        _route(router, prompts[0])  # warm-up
        out[str(length)] = _p50_p95([_route(router, text) for text in prompts[1:]])
    return out


def _batched_per_s(router: CoERouter) -> float:
    rng = random.Random(1)
    batch = [_prompt(router, rng, 24) for _ in range(256)]
    start = time.perf_counter()
    router.probabilities(batch)
    return len(batch) / (time.perf_counter() - start)


def _extras(router: CoERouter, n: int) -> dict[str, Any]:
    """Tokenizer time of a 64-token prompt, and a decision for a prompt seen before."""
    rng = random.Random(2)
    prompts = [_prompt(router, rng, 64) for _ in range(n)]
    embedder = getattr(router.embedder, "base", router.embedder)  # a featured embedder's own tokenizer
    tokenizer = getattr(embedder, "tokenizer", None)
    out: dict[str, Any] = {}
    if tokenizer is not None:
        times = []
        for text in prompts:
            start = time.perf_counter()
            tokenizer.encode(text)
            times.append((time.perf_counter() - start) * 1000)
        out["tokenizer_ms_64"] = _p50_p95(times)
    _route(router, prompts[0])
    out["repeated_prompt_ms_64"] = _p50_p95([_route(router, prompts[0]) for _ in range(n)])
    return out


def _limited(blas_threads: int | None) -> Any:
    from contextlib import nullcontext

    if blas_threads is None:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(blas_threads, user_api="blas")


def _print(label: str, row: dict[str, Any]) -> None:
    times = "  ".join(f"{k} tok p50 {v['p50']:.2f} ms" for k, v in row["decision_ms"].items())
    print(f"{label:<36} {times}  batched {row['batched_per_s']:.0f} decisions/s")


def bench_route(
    library: LibraryConfig, n: int = 200, embedders: Sequence[str] = (), blas_threads: int | None = 1
) -> dict[str, Any]:
    """Decision times for 16/64/256-token prompts and batched decisions per second: the library's
    router, or each embedder variant in turn."""
    from coserve.router.embedders import make_embedder, parse_variant

    result: dict[str, Any] = {"blas_threads": blas_threads}
    with _limited(blas_threads):
        if not embedders:
            router = CoERouter.load_or_fit(library, cache_dir())
            result.update(decision_ms=decision_times(router, n=n), batched_per_s=_batched_per_s(router))
            result["embedder"] = router.embedder.name
            _print(router.embedder.name, result)
            return result
        result["variants"] = {}
        for spec in embedders:
            name, options = parse_variant(spec)
            router = CoERouter.load_or_fit(library, cache_dir(), embedder=make_embedder(name, **options))
            row = {"decision_ms": decision_times(router, n=n), "batched_per_s": _batched_per_s(router)}
            row.update(_extras(router, n))
            result["variants"][spec] = row
            _print(spec, row)
    return result
