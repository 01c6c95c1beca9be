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

__all__ = ["outcome_of", "replay", "summarise"]


async def replay(
    base: str,
    workload: list[dict[str, Any]],
    max_tokens: int,
    routed: bool = False,
    tolerate_errors: bool = False,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Send every request; the summary (``summarise``) and the per-request records.

    ``routed``: ask for the virtual model ``coserve``, so the server routes each prompt itself (its
    router's cost included), and count answers from another expert than the workload planned.
    ``tolerate_errors``: a request that fails is recorded with its ``outcome`` (``outcome_of``)
    instead of ending the replay. ``timeout_s``: every request ends at the latest this many seconds
    after the last arrival (one that has not counts as lost)."""
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=len(workload) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        start = time.monotonic()
        last = max((item["at"] for item in workload), default=0.0)
        deadline = None if timeout_s is None else start + last + timeout_s

        async def one(item: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + item["at"] - time.monotonic()))
            record: dict[str, Any] = {"i": item["i"], "expert": item["expert"], "answered_by": None,
                                      "ttft_s": math.nan, "completion_tokens": 0, "tokens_from": "chunks"}  # fmt: skip
            body = {
                "model": "coserve" if routed else item["expert"],
                "messages": [{"role": "user", "content": item["prompt"]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            sent = time.monotonic()
            try:
                wait = None if deadline is None else max(0.0, deadline - sent)
                await asyncio.wait_for(_stream(client, body, record, sent, tolerate_errors), wait)
            except (httpx.HTTPError, TimeoutError) as exc:
                if not tolerate_errors:
                    raise
                record["outcome"] = f"lost: {type(exc).__name__}"
            record["latency_s"] = time.monotonic() - sent
            records.append(record)

        await asyncio.gather(*(one(item) for item in workload))
        makespan = time.monotonic() - start
    records.sort(key=lambda r: r["i"])
    return {**summarise(records, makespan, routed), "requests": records}


async def _stream(
    client: httpx.AsyncClient, body: dict[str, Any], record: dict[str, Any], sent: float, tolerate_errors: bool
) -> None:
    """One streamed request; fills ``record`` (first token, tokens, the expert, the outcome)."""
    chunks, frames = 0, []
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200 and tolerate_errors:
            await response.aread()
            record["outcome"] = outcome_of(response.status_code, response.headers.get("retry-after"), [])
            return
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            frames.append(line[6:])
            if line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            if chunk.get("choices") and (chunk["choices"][0].get("delta") or {}).get("content"):
                chunks += 1
                if math.isnan(record["ttft_s"]):
                    record["ttft_s"], record["answered_by"] = time.monotonic() - sent, chunk.get("model")
    counted = usage.get("completion_tokens") is not None
    record["completion_tokens"] = int(usage["completion_tokens"]) if counted else chunks
    record["tokens_from"] = "usage" if counted else "chunks"
    record["outcome"] = outcome_of(200, None, frames)


def outcome_of(status: int, retry_after: str | None, frames: list[str]) -> str:
    """How a request ended: ``ok`` (200 and a complete stream), ``clean_error`` (429/503 with
    Retry-After, or a stream that ends with an error event and ``[DONE]``), else ``lost: why`` (any
    other status, or a stream cut off without an error event)."""
    if status != 200:
        return "clean_error" if status in (429, 503) and retry_after else f"lost: status {status}"
    if frames[-1:] != ["[DONE]"]:
        errored = any(f.startswith('{"error"') for f in frames)
        return "clean_error" if errored else "lost: truncated stream"
    return "clean_error" if any(f.startswith('{"error"') for f in frames[:-1]) else "ok"


def summarise(records: list[dict[str, Any]], makespan: float, routed: bool) -> dict[str, Any]:
    """Throughput, latency percentiles and time to first token (of the answered requests),
    generated tokens, and how many requests were answered, refused cleanly or lost."""
    ok = [r for r in records if r.get("outcome", "ok") == "ok"]
    latencies = sorted(r["latency_s"] for r in ok) or [math.nan]
    ttfts = [r["ttft_s"] for r in ok if not math.isnan(r["ttft_s"])]
    out: dict[str, Any] = {
        "throughput_rps": len(ok) / makespan,  # answered requests per second of the whole replay
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "ttft_p50_s": statistics.median(ttfts) if ttfts else math.nan,
        "makespan_s": makespan,
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "sent": len(records),
        "ok": len(ok),
        "clean_errors": sum(r.get("outcome") == "clean_error" for r in records),
        "lost": sum(str(r.get("outcome", "ok")).startswith("lost") for r in records),
    }
    if routed:
        out["routed"] = True
        out["not_the_planned_expert"] = sum(r["answered_by"] != r["expert"] for r in records)
    return out
