"""Replay a workload against an OpenAI-compatible server: each request sent at its arrival time,
streamed; latency, time to first token and generated tokens recorded per request.

Generated tokens come from the stream's final usage (``stream_options.include_usage``) where the
server sends one, else from the number of chunks that carried text (one token each on llama.cpp
servers); each request says which. It knows nothing about what serves the requests.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from typing import Any

import httpx

__all__ = ["replay", "summarise"]


async def replay(base: str, workload: list[dict[str, Any]], max_tokens: int, routed: bool = False) -> dict[str, Any]:
    """Send every request; the summary (``summarise``) and the per-request records.

    ``routed``: ask for the virtual model ``coserve``, so the server routes each prompt itself (its
    router's cost included), and count answers from another expert than the workload planned."""
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=len(workload) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        start = time.monotonic()

        async def one(item: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + item["at"] - time.monotonic()))
            sent = time.monotonic()
            first, chunks, model = math.nan, 0, None
            usage: dict[str, Any] = {}
            body = {
                "model": "coserve" if routed else item["expert"],
                "messages": [{"role": "user", "content": item["prompt"]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    if chunk.get("choices") and (chunk["choices"][0].get("delta") or {}).get("content"):
                        chunks += 1
                        if math.isnan(first):
                            first, model = time.monotonic() - sent, chunk.get("model")
            counted = usage.get("completion_tokens") is not None
            records.append({
                "i": item["i"], "expert": item["expert"], "answered_by": model,
                "latency_s": time.monotonic() - sent, "ttft_s": first,
                "completion_tokens": int(usage["completion_tokens"]) if counted else chunks,
                "tokens_from": "usage" if counted else "chunks",
            })  # fmt: skip

        await asyncio.gather(*(one(item) for item in workload))
        makespan = time.monotonic() - start
    records.sort(key=lambda r: r["i"])
    return {**summarise(records, makespan, routed), "requests": records}


def summarise(records: list[dict[str, Any]], makespan: float, routed: bool) -> dict[str, Any]:
    """Throughput, latency percentiles, time to first token and generated tokens of one replay."""
    latencies = sorted(r["latency_s"] for r in records)
    ttfts = [r["ttft_s"] for r in records if not math.isnan(r["ttft_s"])]
    out: dict[str, Any] = {
        "throughput_rps": len(records) / makespan,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "ttft_p50_s": statistics.median(ttfts) if ttfts else math.nan,
        "makespan_s": makespan,
        "completion_tokens": sum(r["completion_tokens"] for r in records),
    }
    if routed:
        out["routed"] = True
        out["not_the_planned_expert"] = sum(r["answered_by"] != r["expert"] for r in records)
    return out
