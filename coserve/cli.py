"""The ``coserve`` command: serve | route | chat | experts | bench.

Arguments are parsed in ``main()``; nothing runs at import time. Errors a user can fix (a bad
library file, a missing model package) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from coserve.errors import CoserveError

__all__ = ["main"]


def _library(path: str | None) -> Any:
    from coserve.config import load_library

    return load_library(path)


def _engine(library_path: str | None) -> Any:
    from coserve.assets import cache_dir
    from coserve.engine.engine import Engine

    return Engine.build(_library(library_path), cache_dir())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from coserve.server.app import create_app

    engine = _engine(args.library)
    print(f"coserve: library {engine.library.path} — experts {', '.join(engine.library.expert_names)}", flush=True)
    print(f"coserve: serving on http://{args.host}:{args.port}/v1 (model 'coserve' routes)", flush=True)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from coserve.assets import cache_dir
    from coserve.router.router import CoERouter
    from coserve.types import Message, Request

    library = _library(args.library)
    router = CoERouter.load_or_fit(library, cache_dir())
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        decision = router.route(Request((Message("user", text),), "coserve"))
        ranked = sorted(decision.probabilities.items(), key=lambda kv: -kv[1])
        if args.json:
            print(
                json.dumps({"text": text, **decision.as_dict(), "probabilities": {k: round(v, 4) for k, v in ranked}})
            )
        else:
            probs = "  ".join(f"{k} {v:.2f}" for k, v in ranked)
            print(f"{decision.expert:<10} {decision.category:<10} {decision.reason:<15} {probs}   | {text[:60]}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from coserve.types import Message, Request, Sampling

    engine = _engine(args.library)
    history: list[Message] = []

    async def turn(text: str) -> None:
        history.append(Message("user", text))
        request = Request(
            tuple(history), args.model, Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
        )
        decision = await engine.route(request)
        stream = await engine.stream(request, decision)
        label = f"{stream.expert}" + (f" · {decision.category} {decision.confidence:.2f}" if decision.category else "")
        print(f"[{label}] ", end="", flush=True)
        parts = []
        async for chunk in stream.chunks:
            print(chunk.text, end="", flush=True)
            parts.append(chunk.text)
        print()
        history.append(Message("assistant", "".join(parts)))

    async def loop() -> None:
        try:
            while True:
                try:
                    text = await asyncio.get_running_loop().run_in_executor(None, input, "you> ")
                except EOFError:
                    break
                if text.strip() in {"/quit", "/exit"}:
                    break
                if text.strip() == "/reset":
                    history.clear()
                    continue
                if text.strip():
                    try:
                        await turn(text)
                    except CoserveError as exc:
                        history.pop()
                        print(f"error: {exc.message}")
        finally:
            await engine.close()

    print("coserve chat — /reset clears the conversation, /quit or Ctrl-D leaves.")
    asyncio.run(loop())
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    from coserve.assets import source_size

    library = _library(args.library)
    base = library.path.parent if library.path else None
    rows = []
    for spec in library.experts:
        size = source_size(spec, base)
        location = spec.parts[0] if len(spec.parts) == 1 else f"{len(spec.parts)} parts, {spec.parts[0]} ..."
        rows.append(
            {
                "name": spec.name,
                "backend": spec.backend,
                "params_b": spec.params_b,
                "context": spec.context,
                "price": spec.price.mean,
                "tags": list(spec.tags),
                "bytes": size,
                "tier": "disk" if size is not None else "missing",
                "source": location,
                "categories": [c for c, e in library.router.map.items() if e == spec.name],
            }
        )
    if args.json:
        print(json.dumps({"library": str(library.path), "experts": rows}, indent=2))
        return 0
    print(f"library: {library.path}")
    print(f"{'name':<10} {'backend':<9} {'params':>7} {'size':>9} {'context':>7} {'tier':<7} {'categories':<24} source")
    for r in rows:
        size_text = f"{r['bytes'] / 2**20:.0f} MiB" if r["bytes"] is not None else "-"
        print(
            f"{r['name']:<10} {r['backend']:<9} {r['params_b']:>6.2f}B {size_text:>9} {r['context']:>7} "
            f"{r['tier']:<7} {','.join(r['categories']):<24} {r['source']}"
        )
    fallback = library.router.fallback
    print(
        f"fallback: {fallback.expert} below confidence {fallback.min_confidence}; "
        f"memory: ram {library.memory.ram / 2**30:.1f} GiB, active {library.memory.active / 2**30:.1f} GiB"
    )
    return 0


def cmd_bench_experts(args: argparse.Namespace) -> int:
    from coserve.bench.experts import bench_experts

    result = bench_experts(_library(args.library), tokens=args.tokens, repeats=args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_bench_route(args: argparse.Namespace) -> int:
    from coserve.bench.route import bench_route

    result = bench_route(_library(args.library), n=args.n)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description="A Composition of Experts behind one endpoint.")
    sub = parser.add_subparsers(dest="command", required=True)

    def library_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--library", help="library file (YAML); default: the bundled default library")

    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    library_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("route", help="show the routing decision for prompts (no generation)")
    library_arg(p)
    p.add_argument("text", nargs="*", help="prompts; read from stdin, one a line, when none are given")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("chat", help="chat in the terminal through the router")
    library_arg(p)
    p.add_argument("--model", default="coserve", help="'coserve' routes; an expert's name pins it")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("experts", help="list the library's experts")
    library_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experts)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("experts", help="cold/warm time to first token, decode speed, routing time")
    library_arg(b)
    b.add_argument("--tokens", type=int, default=64, help="tokens to decode per measurement")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_experts)
    b = bench.add_parser("route", help="routing decision time (16/64/256 tokens) and batched throughput")
    library_arg(b)
    b.add_argument("--n", type=int, default=200, help="decisions per prompt length")
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_route)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except CoserveError as exc:
        print(f"coserve: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
