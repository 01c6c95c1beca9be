#!/usr/bin/env python
"""Offer a coserve server twice the load it can take and count how it answers.

    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:8000 [--factor 2] [--warmup 3]
        [--measure-s 2] [--duration-s 5]

First a warm-up: ``--warmup`` sequential requests of the workload's own prompt, not timed, so that
the expert the workload reaches is loaded (right after a start, the first request pays for the load
and a capacity measured on it is the load's, not the server's). Then the capacity: sequential chat
requests for ``--measure-s`` seconds (requests/s). Then an open loop at ``--factor`` times that
rate for ``--duration-s`` seconds (at most ``--max-requests``).
Every answer must be 200, or 429/503 with a Retry-After header; anything else, a connection error
or a time-out is a failure. Prints the figures, and a last line of JSON; exits 1 on any failure,
2 (one line) when the capacity run cannot reach the server or gets anything but a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

PROMPT = "write a python function that reverses a string"


class Unreachable(Exception):
    """The capacity run got no 200 from the server: nothing to measure the load against."""


def positive(number: type[int] | type[float]) -> Callable[[str], float]:
    """A flag's type: a finite ``number`` above 0 (this client needs only httpx, not coserve's helpers)."""

    def parse(text: str) -> float:
        value = number(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is not a positive number")
        return value

    parse.__name__ = number.__name__  # argparse's "invalid int value: 'x'"
    return parse


def non_negative(text: str) -> int:
    """A flag's type: a whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


non_negative.__name__ = "int"  # argparse's "invalid int value: 'x'"


def body(max_tokens: int) -> dict[str, Any]:
    return {"model": "coserve", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens}


async def post_ok(client: httpx.AsyncClient, url: str, max_tokens: int) -> None:
    """One request of the workload; Unreachable unless it is answered 200."""
    try:
        response = await client.post(url, json=body(max_tokens))
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach {url} ({type(exc).__name__}: {exc or 'no detail'})") from None
    if response.status_code != 200:
        raise Unreachable(f"{url} answered {response.status_code}: {response.text[:200]}")


async def warm_up(client: httpx.AsyncClient, url: str, requests: int, max_tokens: int) -> list[float]:
    """Seconds each of ``requests`` sequential requests took (the first loads the expert when cold)."""
    took = []
    for _ in range(requests):
        start = time.monotonic()
        await post_ok(client, url, max_tokens)
        took.append(time.monotonic() - start)
    return took


async def capacity(client: httpx.AsyncClient, url: str, seconds: float, max_tokens: int) -> float:
    """Sequential requests per second over ``seconds`` (at least 1, at most 10000 requests)."""
    done, start = 0, time.monotonic()
    while done == 0 or (time.monotonic() - start < seconds and done < 10000):
        await post_ok(client, url, max_tokens)
        done += 1
    return done / (time.monotonic() - start)


async def offer(
    client: httpx.AsyncClient, url: str, rate: float, seconds: float, max_requests: int, max_tokens: int
) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``seconds`` (open loop) and count the outcomes."""
    count = max(1, min(max_requests, round(rate * seconds)))
    counts = {"sent": count, "admitted": 0, "rejected": 0, "failed": 0, "timeouts": 0, "connection_errors": 0}
    statuses: dict[str, int] = {}
    latencies: list[float] = []

    async def one(i: int, start: float) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        sent = time.monotonic()
        try:
            response = await client.post(url, json=body(max_tokens))
        except httpx.TimeoutException:
            counts["timeouts"] += 1
            counts["failed"] += 1
            return
        except httpx.TransportError:
            counts["connection_errors"] += 1
            counts["failed"] += 1
            return
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        if response.status_code == 200:
            counts["admitted"] += 1
            latencies.append(time.monotonic() - sent)
        elif response.status_code in (429, 503) and response.headers.get("retry-after"):
            counts["rejected"] += 1
        else:
            counts["failed"] += 1

    start = time.monotonic()
    await asyncio.gather(*(one(i, start) for i in range(count)))
    latencies.sort()
    return {
        **counts,
        "statuses": statuses,
        "elapsed_s": round(time.monotonic() - start, 2),
        "p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "max_s": round(latencies[-1], 3) if latencies else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/") + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {args.key}"} if args.key else {}
    limits = httpx.Limits(max_connections=args.max_requests, max_keepalive_connections=args.max_requests)
    async with httpx.AsyncClient(timeout=args.timeout_s, limits=limits, headers=headers) as client:
        took = await warm_up(client, url, args.warmup, args.max_tokens)
        if took:
            print(f"warm-up: {len(took)} requests, the first {took[0]:.2f} s, the last {took[-1]:.2f} s", flush=True)
        rps = await capacity(client, url, args.measure_s, args.max_tokens)
        print(f"capacity: {rps:.1f} requests/s (sequential, {args.measure_s:g} s)", flush=True)
        rate = args.factor * rps
        print(f"offering {rate:.1f} requests/s for {args.duration_s:g} s", flush=True)
        result = await offer(client, url, rate, args.duration_s, args.max_requests, args.max_tokens)
    warm = {"warmup_requests": len(took), "warmup_first_s": round(took[0], 3) if took else None}
    return {**warm, "capacity_rps": round(rps, 2), "rate_rps": round(rate, 2), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Before measuring the capacity it sends --warmup sequential requests, not timed: the first "
        "request after a start loads the expert the workload reaches, and the capacity is then the "
        "server's, not the load's. --warmup 0 measures from cold.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--key", help="API key, if the server needs one")
    parser.add_argument("--factor", type=positive(float), default=2.0, help="offered load / measured capacity")
    parser.add_argument(
        "--warmup", type=non_negative, default=3, help="sequential requests, not timed, before the capacity run"
    )
    parser.add_argument("--measure-s", type=positive(float), default=2.0, help="seconds of sequential requests")
    parser.add_argument("--duration-s", type=positive(float), default=5.0, help="seconds of offered load")
    parser.add_argument("--max-requests", type=positive(int), default=2000, help="cap on the requests offered")
    parser.add_argument("--max-tokens", type=positive(int), default=8)
    parser.add_argument("--timeout-s", type=positive(float), default=60.0, help="per-request time-out")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except Unreachable as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"sent {result['sent']}, admitted {result['admitted']}, rejected {result['rejected']} (429/503), "
        f"failed {result['failed']} (timeouts {result['timeouts']}, connection errors "
        f"{result['connection_errors']}); statuses {result['statuses']}; p50 {result['p50_s']} s, "
        f"max {result['max_s']} s"
    )
    print(json.dumps(result))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
