"""``coserve bench experts``: per expert, time to first token cold and warm, and decode speed;
plus the router's decision time for a 64-token prompt.

Cold = the expert is moved RAM -> ACTIVE (its backend's RAM tier: the file's pages for
``llamacpp``, the loaded model for ``llamacpp-split``; as on a running server that evicted it) and
then answers; warm = it is already ACTIVE. Each repeat uses a
different prompt so llama.cpp's prompt cache cannot answer from memory. Figures are medians.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from coserve.backends.registry import get_backend
from coserve.config import LibraryConfig
from coserve.types import Chunk, Message, Sampling

__all__ = ["bench_experts", "first_token_and_decode"]

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short note inviting a colleague to lunch on Friday.",
    "List three uses of a hash table and say why each one fits.",
    "Describe how a bicycle's gears make climbing a hill easier.",
    "Give two tips for writing clear commit messages.",
]


def first_token_and_decode(backend: Any, handle: Any, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to first token, decode tokens per second, tokens decoded) for one greedy answer."""
    stamps: list[float] = []

    def emit(chunk: Chunk) -> bool:
        if chunk.text:
            stamps.append(time.perf_counter())
        return False

    start = time.perf_counter()
    backend.stream(handle, (Message("user", prompt),), Sampling(max_tokens=tokens, temperature=0.0, seed=1), emit)
    if not stamps:
        return float("nan"), float("nan"), 0
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return stamps[0] - start, decode, len(stamps)


def bench_experts(library: LibraryConfig, tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Measure every expert and the router; print a table and return the figures."""
    from coserve.bench.route import decision_times
    from coserve.paths import cache_dir
    from coserve.router.router import CoERouter

    base = library.path.parent if library.path else None
    results: dict[str, Any] = {"experts": {}, "tokens": tokens, "repeats": repeats}
    print(f"{'expert':<10} {'load s':>7} {'cold ttft s':>12} {'warm ttft s':>12} {'decode tok/s':>13}")
    for spec in library.experts:
        backend = get_backend(spec.backend)
        loads, colds, warms, decodes = [], [], [], []
        staged = backend.stage(spec, base)  # RAM: the loads below are RAM -> ACTIVE moves
        for i in range(repeats):
            start = time.perf_counter()
            handle = backend.load(spec, staged)
            loads.append(time.perf_counter() - start)
            ttft, _, _ = first_token_and_decode(backend, handle, PROMPTS[i % len(PROMPTS)], 1)
            colds.append(time.perf_counter() - start)
            for j in range(repeats):
                ttft, decode, _ = first_token_and_decode(backend, handle, PROMPTS[(i + j + 1) % len(PROMPTS)], tokens)
                warms.append(ttft)
                decodes.append(decode)
            backend.unload(handle)
            del handle
        backend.unstage(staged)
        row = {
            "load_s": statistics.median(loads),
            "ttft_cold_s": statistics.median(colds),
            "ttft_warm_s": statistics.median(warms),
            "decode_tok_s": statistics.median(decodes),
            "params_b": spec.params_b,
        }
        results["experts"][spec.name] = row
        print(
            f"{spec.name:<10} {row['load_s']:>7.2f} {row['ttft_cold_s']:>12.3f} {row['ttft_warm_s']:>12.3f} "
            f"{row['decode_tok_s']:>13.1f}",
            flush=True,
        )
    route = decision_times(CoERouter.load_or_fit(library, cache_dir()), lengths=(64,), n=200)
    results["route_ms_64_p50"] = route["64"]["p50"]
    print(
        f"router: decision time for a 64-token prompt, p50 {route['64']['p50']:.2f} ms, p95 {route['64']['p95']:.2f} ms"
    )
    return results
