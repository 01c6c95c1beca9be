"""``coserve serve | route | chat``: the commands that answer prompts with a library's experts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from coserve.cli.cluster import add_ray_arguments
from coserve.cli.common import (
    DEFAULT_SHUTDOWN_S,
    Subcommands,
    add_library_arg,
    load_engine,
    load_served_library,
    seconds,
    tcp_port,
)
from coserve.errors import CoserveError
from coserve.types import ROUTED_MODEL, Sampling

__all__ = ["add_chat_parser", "add_route_parser", "add_serve_parser", "cmd_chat", "cmd_route", "cmd_serve"]

DEFAULT_RESIDENCY = "lookahead"


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from coserve.cli.interrupt import cut_and_close
    from coserve.server.app import check_decision_log, create_app

    if args.ray is None and args.cluster is not None:
        raise CoserveError("--cluster places experts on a Ray cluster: add --ray [ADDRESS]")
    if args.ray is None and (args.min_replicas, args.max_replicas) != (None, None):
        raise CoserveError("--min-replicas and --max-replicas size the Ray ingress: add --ray [ADDRESS]")
    if args.ray is not None:  # the cluster path (coserve[ray]); the single process below needs no Ray
        for flag, value in [("--residency", args.residency), ("--log-level", args.log_level)]:
            if value is not None:  # given: the Ray path would ignore it
                raise CoserveError(
                    f"{flag} is the single process's (without --ray): on Ray the hosts keep experts by"
                    " lookahead, and Ray sets its own logging"
                )
        from coserve.cli.cluster import cmd_serve_ray

        return cmd_serve_ray(args)
    engine = load_engine(args.library, args.residency or DEFAULT_RESIDENCY)
    shutdown_s = args.shutdown_timeout  # seconds (uvicorn's type says int; it takes any number)
    if shutdown_s is None:
        shutdown_s = DEFAULT_SHUTDOWN_S
    check_decision_log(engine.library)
    app = create_app(engine)

    class DrainingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)  # a socket that cannot be bound ends here: uvicorn's error, exit 3
            if self.started:
                print(
                    f"coserve: serving on http://{args.host}:{args.port}/v1 (model '{ROUTED_MODEL}' routes)", flush=True
                )

        interrupted = False  # a Ctrl-C (SIGINT) stopped it: exit 130 (see below)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.interrupted = self.interrupted or sig == signal.SIGINT
            cut = self.should_exit and sig == signal.SIGINT and not self.force_exit
            super().handle_exit(sig, frame)  # a second Ctrl-C: force_exit, the drain stops waiting
            if cut:
                running = len(self.server_state.tasks)
                print(f"coserve: second interrupt: cutting {running} running request(s)", file=sys.stderr, flush=True)

        async def shutdown(self, sockets: Any = None) -> None:
            app.state.admission.draining = True  # from the signal on, new requests get 503
            await super().shutdown(sockets)
            if self.force_exit:  # uvicorn skips the app's shutdown here: cut as the drain deadline does
                await cut_and_close(self)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level or "info",
        timeout_graceful_shutdown=shutdown_s,
    )
    print(f"coserve: library {engine.library.path} — experts {', '.join(engine.library.expert_names)}", flush=True)
    for name, problem in engine.unavailable.items():
        print(f"coserve: warning: expert {name} cannot load ({problem}); its requests fall back", file=sys.stderr)
    if engine.memory_warning:
        print(f"coserve: warning: {engine.memory_warning}", file=sys.stderr)
    # uvicorn re-raises the signal that stopped it once it has drained; a SIGTERM that led to a
    # clean drain is a normal end here (exit 0), so the re-raised one is ignored.
    # A Ctrl-C exits 130 through that re-raise (KeyboardInterrupt) where SIGINT has Python's handler; a
    # process started with SIGINT ignored (a shell's background job) gets no KeyboardInterrupt from it,
    # so the exit status is said here too.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    server = DrainingServer(config)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 130 if server.interrupted else 0


def cmd_route(args: argparse.Namespace) -> int:
    from coserve.paths import cache_dir
    from coserve.router.router import CoERouter
    from coserve.types import Message, Request

    library = load_served_library(args.library)
    router = CoERouter.load_or_fit(library, cache_dir())
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        decision = router.route(Request((Message("user", text),), ROUTED_MODEL))
        ranked = sorted(decision.probabilities.items(), key=lambda kv: -kv[1])
        if args.json:
            print(
                json.dumps({"text": text, **decision.as_dict(), "probabilities": {k: round(v, 4) for k, v in ranked}})
            )
        else:
            probs = "  ".join(f"{k} {v:.2f}" for k, v in ranked)
            print(f"{decision.expert:<10} {decision.category or '-':<10} {decision.reason:<15} {probs}   | {text[:60]}")
    return 0


def _chat_sampling(args: argparse.Namespace) -> Sampling:
    """The chat's sampling flags, checked as the HTTP API checks them (one set of ranges): without
    ``--max-tokens`` the expert's own cap applies (its ``options.max_tokens``, else 512)."""
    from coserve.errors import RequestError
    from coserve.server.protocol import ChatCompletionRequest

    body = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    try:
        checked = ChatCompletionRequest.model_validate(
            {"model": args.model, "messages": [{"role": "user", "content": "-"}], **body}
        ).to_request()
    except RequestError as exc:
        flag = (exc.param or "").replace("_", "-")
        raise CoserveError(f"--{flag} {body.get(exc.param or '')}: {exc.message}") from None
    return checked.sampling


def cmd_chat(args: argparse.Namespace) -> int:
    from coserve.engine.call import Call
    from coserve.types import Message, Request

    sampling = _chat_sampling(args)
    engine = load_engine(args.library)
    if args.model != ROUTED_MODEL and args.model not in engine.library.expert_names:
        raise CoserveError(
            f"--model {args.model}: not an expert of the library ({', '.join(engine.library.expert_names)})"
            f" nor '{ROUTED_MODEL}'"
        )
    history: list[Message] = []

    async def turn(text: str) -> None:
        history.append(Message("user", text))
        request = Request(tuple(history), args.model, sampling)
        call = Call(request)
        decision = await engine.route(call)
        chunks = await engine.stream(call)
        label = f"{call.expert}" + (f" · {decision.category} {decision.confidence:.2f}" if decision.category else "")
        print(f"[{label}] ", end="", flush=True)
        parts = []
        async for chunk in chunks:
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


def add_serve_parser(sub: Subcommands) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    add_library_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=tcp_port, default=8000)
    # The next three default to None so that --ray can tell them given (they are the single process's).
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default info")
    p.add_argument(
        "--shutdown-timeout",
        type=seconds,
        help=f"seconds in-flight requests may take to finish after SIGTERM (default {DEFAULT_SHUTDOWN_S:g})",
    )
    p.add_argument(
        "--residency",
        choices=["lookahead", "lru", "load_per_request"],
        help=f"how experts are ordered and kept loaded (default {DEFAULT_RESIDENCY}; the others: benchmark baselines)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="serve on a Ray Serve cluster at ADDRESS (a local one without it); needs coserve[ray]",
    )
    add_ray_arguments(p)
    p.set_defaults(func=cmd_serve)


def add_route_parser(sub: Subcommands) -> None:
    p = sub.add_parser("route", help="show the routing decision for prompts (no generation)")
    add_library_arg(p)
    p.add_argument("text", nargs="*", help="prompts; read from stdin, one a line, when none are given")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_route)


def add_chat_parser(sub: Subcommands) -> None:
    p = sub.add_parser("chat", help="chat in the terminal through the router")
    add_library_arg(p)
    p.add_argument("--model", default=ROUTED_MODEL, help=f"'{ROUTED_MODEL}' routes; an expert's name pins it")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="tokens per answer at most (default: the expert's own cap)"
    )
    p.add_argument("--temperature", type=float, default=0.7)
    p.set_defaults(func=cmd_chat)
