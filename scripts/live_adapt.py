"""Learning from traffic on the real experts: `router.online` served live, measured end to end.

Starts the real server (``coserve serve``) on a library (default: the bundled one) with a trained
router, a budget that binds and ``router.online`` on (``--modes static`` runs the same stream with it
off), then sends a seeded stream of benchmark items in phases whose suite mix drifts, grades each
answer with its suite's grader and posts the grade to ``/v1/feedback`` for a seeded share of the
answered requests. Per window of requests it records the realised mean active parameters (of the
experts that answered), the quality, which experts answered, and the server's cost weight and map
version (``/metrics``); at the end the server is restarted and the resumed weight and map version
compared. The suites (prompts, grading) are ``coserve outcomes``'s; this script knows nothing of
how the router learns.

    PYTHONPATH=. .venv/bin/python scripts/live_adapt.py --trained router/ --budget 0.8 \\
        --json docs/data/live-adapt-s14.json
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coserve.bench.processes import wait_until_up
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.cli.common import load_served_library
from coserve.errors import ConfigError
from coserve.outcomes.runner import done_ids
from coserve.outcomes.suite import Graded, Item, Suite
from coserve.outcomes.suites import make_suite
from coserve.paths import cache_dir, default_library_path, package_data
from coserve.router.router import CoERouter
from coserve.types import ROUTED_MODEL, Message, Request

CHAT = "/v1/chat/completions"
# The online router's gauges read at each window's end (absent, or NaN, without router.online).
GAUGES = {"coserve_cost_weight": "cost_weight", "coserve_map_version": "map_version"}


@dataclass(frozen=True)
class Planned:
    """One request of the stream: where it sits, what it asks and whether its grade is fed back."""

    index: int  # position in the stream (0-based)
    phase: int  # the phase it belongs to (0-based)
    suite: str
    item: Item
    feedback: bool  # the grade is posted to /v1/feedback if the request is answered


@dataclass(frozen=True)
class Answer:
    """What one request got: who answered, at what cost, how well, and whether feedback went."""

    index: int
    phase: int
    suite: str
    item: str  # item id
    status: int  # HTTP status of the chat request
    expert: str | None  # who answered (None: refused)
    params_b: float | None  # the answering expert's active parameters (billions)
    score: float | None  # the suite's grade in [0, 1] (None: refused)
    feedback: int | None  # HTTP status of the feedback post (None: none sent)
    seconds: float  # wall time of the chat request


def parse_phases(text: str) -> list[dict[str, float]]:
    """``"mmlu=0.9,gsm8k=0.1;gsm8k=1"`` -> one suite mix per phase, shares normalised to sum 1."""
    phases: list[dict[str, float]] = []
    for chunk in text.split(";"):
        mix: dict[str, float] = {}
        for part in chunk.split(","):
            name, _, share = part.partition("=")
            try:
                value = float(share)
            except ValueError:
                raise ConfigError(f"--phases: {part.strip()!r} is not suite=share") from None
            if value < 0:
                raise ConfigError(f"--phases: share of {name.strip()!r} is negative")
            mix[name.strip()] = mix.get(name.strip(), 0.0) + value
        total = sum(mix.values())
        if total <= 0:
            raise ConfigError(f"--phases: phase {chunk.strip()!r} has no positive share")
        phases.append({name: share / total for name, share in mix.items() if share > 0})
    return phases


def phase_counts(mix: dict[str, float], size: int) -> dict[str, int]:
    """Requests per suite in a phase of ``size``: the shares rounded by largest remainder (exact sum)."""
    exact = {name: share * size for name, share in mix.items()}
    counts = {name: int(value) for name, value in exact.items()}
    left = size - sum(counts.values())
    for name in sorted(exact, key=lambda n: (counts[n] - exact[n], n))[:left]:
        counts[name] += 1
    return counts


def plan_stream(
    phases: Sequence[dict[str, float]], per_phase: int, pools: dict[str, list[Item]], feedback: float, seed: int
) -> list[Planned]:
    """The whole stream: each phase's exact suite counts in a seeded order, items drawn without
    replacement from each suite's seeded shuffle, and a seeded feedback flag per request."""
    rng = random.Random(seed)
    queues = {name: rng.sample(items, len(items)) for name, items in sorted(pools.items())}
    order: list[tuple[int, str]] = []
    for phase, mix in enumerate(phases):
        names = [name for name, count in sorted(phase_counts(mix, per_phase).items()) for _ in range(count)]
        rng.shuffle(names)
        order += [(phase, name) for name in names]
    need = Counter(name for _, name in order)
    for name, count in need.items():
        if len(queues.get(name, [])) < count:
            raise ConfigError(f"the stream needs {count} {name} items; {len(queues.get(name, []))} are available")
    flags = random.Random(seed + 1)
    return [
        Planned(i, phase, name, queues[name].pop(), flags.random() < feedback) for i, (phase, name) in enumerate(order)
    ]


def serve_one(
    client: httpx.Client, planned: Planned, suite: Suite, max_tokens: int, params_b: dict[str, float], learn: bool
) -> Answer:
    """Ask one item, grade the answer and, when planned and ``learn``, post the grade once as feedback."""
    body = {
        "model": ROUTED_MODEL,
        "messages": [{"role": "user", "content": suite.prompt(planned.item)}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    start = time.monotonic()
    response = client.post(CHAT, json=body)
    seconds = time.monotonic() - start
    if response.status_code != 200:
        return Answer(
            planned.index, planned.phase, planned.suite, planned.item.id, response.status_code, None, None, None, None,
            seconds,
        )  # fmt: skip
    reply = response.json()
    expert = str(reply["coserve"]["expert"])
    graded = suite.grade(reply["choices"][0]["message"]["content"] or "", planned.item)
    score = graded.score if isinstance(graded, Graded) else float(graded)
    sent = None
    if learn and planned.feedback:
        sent = client.post("/v1/feedback", json={"id": reply["id"], "score": 2.0 * score - 1.0}).status_code
    return Answer(
        planned.index, planned.phase, planned.suite, planned.item.id, 200, expert, params_b[expert], score, sent,
        seconds,
    )  # fmt: skip


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(answers: Sequence[Answer], target: float) -> dict[str, Any]:
    """Requests, answered ones, realised mean parameters (answered only) and its gap to ``target``,
    quality (mean grade of the answered), feedback sent, and each expert's share of the answers."""
    answered = [a for a in answers if a.expert is not None]
    realised = _mean([a.params_b for a in answered if a.params_b is not None])
    experts = Counter(a.expert for a in answered if a.expert is not None)
    return {
        "requests": len(answers),
        "answered": len(answered),
        "realised_params_b": realised,
        "gap_to_target": None if realised is None else realised - target,
        "quality": _mean([a.score for a in answered if a.score is not None]),
        "feedback_sent": sum(1 for a in answers if a.feedback is not None),
        "suites": dict(sorted(Counter(a.suite for a in answers).items())),
        "experts": {name: experts[name] / len(answered) for name in sorted(experts)},
    }


def gauges(metrics_text: str) -> dict[str, float | None]:
    """The online router's cost weight and map version from ``/metrics`` (None where absent or NaN)."""
    found: dict[str, float | None] = dict.fromkeys(GAUGES.values())
    for family in text_string_to_metric_families(metrics_text):
        if family.name in GAUGES and family.samples:
            value = float(family.samples[0].value)
            found[GAUGES[family.name]] = None if value != value else value
    return found


def run_stream(
    client: httpx.Client,
    plan: Sequence[Planned],
    suites: dict[str, Suite],
    max_tokens: dict[str, int],
    params_b: dict[str, float],
    *,
    learn: bool,
    window: int,
    target: float,
    concurrency: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[Answer], list[dict[str, Any]]]:
    """Serve the plan window by window (``concurrency`` requests in flight within a window); after
    each window its summary with the server's gauges read then."""
    answers: list[Answer] = []
    windows: list[dict[str, Any]] = []

    def one(planned: Planned) -> Answer:
        suite = suites[planned.suite]
        return serve_one(client, planned, suite, max_tokens[planned.suite], params_b, learn)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for start in range(0, len(plan), window):
            chunk = plan[start : start + window]
            done = [one(p) for p in chunk] if concurrency == 1 else list(pool.map(one, chunk))
            answers += done
            row = {"window": len(windows), "first": start, "phases": sorted({a.phase for a in done})}
            row |= summarise(done, target) | gauges(client.get("/metrics").text)
            windows.append(row)
            if progress is not None:
                progress(row)
    return answers, windows


def _shown(path: Path) -> str:
    """The library as the data file records it: the bundled one by its place in the package (this
    machine's checkout path says nothing to a reader), any other as given."""
    bundled = default_library_path()
    return "coserve/data/default.yaml (bundled)" if path.resolve() == bundled.resolve() else str(path)


def live_library(base: Path, trained: Path, budget: float, online: bool, log: Path) -> dict[str, Any]:
    """``base`` (a library file) served by ``trained`` under ``budget`` (avg_params_b), online or not,
    logging decisions to ``log``: its outcome map and priors dropped (the trained router replaces them)."""
    data = yaml.safe_load(base.read_text())
    router = data.setdefault("router", {})
    for key in ("outcomes", "priors", "map"):
        router.pop(key, None)
    data.pop("categories", None)  # the trained router brings its own
    router["trained"] = str(trained.resolve())
    router["budget"] = {"avg_params_b": budget}
    if online:
        router["online"] = {}
    else:
        router.pop("online", None)
    data.setdefault("server", {})["log"] = {"path": str(log.resolve())}
    return dict(data)


class Server:
    """``coserve serve`` in a child process on loopback, stopped with SIGTERM (state saved at shutdown)."""

    def __init__(self, library: Path, port: int, output: Path, start_timeout_s: float = 300.0):
        self.library, self.port, self.output, self.start_timeout_s = library, port, output, start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "coserve.cli", "serve", "--library", str(self.library)]
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--port", str(self.port), "--log-level", "warning"], stdout=out, stderr=out
            )
        try:
            wait_until_up(f"{self.url}/health", self.proc, self.start_timeout_s, ok_below=300)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def run_mode(
    online: bool,
    args: argparse.Namespace,
    plan: Sequence[Planned],
    suites: dict[str, Suite],
    progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """One server (online or static) on a fresh decision log, the stream, and (online) a restart check."""
    mode = "online" if online else "static"
    work: Path = args.work
    log = work / f"{mode}.sqlite"
    for stale in (log, log.with_name(log.name + "-wal"), log.with_name(log.name + "-shm")):
        stale.unlink(missing_ok=True)
    data = live_library(args.library, args.trained, args.budget, online, log)
    library = work / f"{mode}.yaml"
    library.write_text(yaml.safe_dump(data, sort_keys=False))
    params_b = {str(e["name"]): float(e["params_b"]) for e in data["experts"]}
    max_tokens = {name: args.max_tokens.get(name, suite.max_tokens) for name, suite in suites.items()}
    server = Server(library, args.port, work / f"{mode}.out")
    started = time.monotonic()
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=600.0) as client:
            answers, windows = run_stream(
                client, plan, suites, max_tokens, params_b, learn=online, window=args.window, target=args.budget,
                concurrency=args.concurrency, progress=progress,
            )  # fmt: skip
            before = gauges(client.get("/metrics").text)
        seconds = time.monotonic() - started
        restart = None
        if online:
            server.stop()
            server.start()
            after = gauges(httpx.get(f"{server.url}/metrics", timeout=30.0).text)
            restart = {"before": before, "after": after, "resumed": before == after}
    finally:
        server.stop()
    phases = [summarise([a for a in answers if a.phase == p], args.budget) for p in range(len(args.phases))]
    return {
        "mode": mode,
        "seconds": round(seconds, 1),
        "max_tokens": max_tokens,
        "overall": summarise(answers, args.budget),
        "phases": phases,
        "windows": windows,
        "restart": restart,
        "answers": [asdict(a) for a in answers],
    }


def static_routes(args: argparse.Namespace, plan: Sequence[Planned], suites: dict[str, Suite]) -> dict[str, Any]:
    """The static map's decision for each request of the same stream, without generation (the trained
    router under the same budget, router.online off): the realised cost it would have, window by window."""
    data = live_library(args.library, args.trained, args.budget, False, args.work / "routes.sqlite")
    library = args.work / "routes.yaml"
    library.write_text(yaml.safe_dump(data, sort_keys=False))
    params_b = {str(e["name"]): float(e["params_b"]) for e in data["experts"]}
    router = CoERouter.load_or_fit(load_served_library(str(library)), cache_dir())
    answers = []
    for p in plan:
        decision = router.route(Request((Message("user", suites[p.suite].prompt(p.item)),), ROUTED_MODEL))
        answers.append(
            Answer(
                p.index, p.phase, p.suite, p.item.id, 200, decision.expert, params_b[decision.expert], None, None, 0.0
            )
        )
    windows = [
        {"window": w, "first": start, **summarise(answers[start : start + args.window], args.budget)}
        for w, start in enumerate(range(0, len(answers), args.window))
    ]
    phases = [summarise([a for a in answers if a.phase == p], args.budget) for p in range(len(args.phases))]
    experts = [a.expert for a in answers]
    return {
        "mode": "routes",
        "overall": summarise(answers, args.budget),
        "phases": phases,
        "windows": windows,
        "experts": experts,
    }


def _mix_tokens(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not suite=tokens (a positive integer)")
        out[name.strip()] = int(value)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--library", type=Path, default=default_library_path(), help="default: the bundled one")
    parser.add_argument("--trained", type=Path, required=True, help="a `coserve train` directory for its experts")
    parser.add_argument("--budget", type=float, default=0.8, help="router.budget avg_params_b (default 0.8)")
    parser.add_argument(
        "--phases", type=parse_phases, default="mmlu=0.9,gsm8k=0.1;mmlu=0.4,gsm8k=0.6;mmlu=0.7,gsm8k=0.3"
    )
    parser.add_argument("--per-phase", type=int, default=70, help="requests per phase (default 70)")
    parser.add_argument("--window", type=int, default=35, help="requests per reported window (default 35)")
    parser.add_argument("--feedback", type=float, default=0.5, help="share of answered requests graded back")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    parser.add_argument("--max-tokens", type=_mix_tokens, default={}, help="per suite caps: gsm8k=160")
    parser.add_argument(
        "--exclude", type=Path, action="append", default=None,
        help="outcome files whose items are left out (default: the bundled outcomes the router may be trained on)",
    )  # fmt: skip
    parser.add_argument(
        "--modes", default="online,routes", help="any of online, static (served) and routes (static decisions only)"
    )
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--work", type=Path, required=True, help="folder for the libraries, logs and server output")
    parser.add_argument("--json", type=Path, required=True, help="data file to write (after each mode)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.feedback <= 1.0:
        parser.error("--feedback must be between 0 and 1")
    if min(args.per_phase, args.window, args.concurrency) < 1:
        parser.error("--per-phase, --window and --concurrency must be at least 1")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"online", "static", "routes"}:
        parser.error("--modes takes online, static and routes")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exclude: set[str] = set()
    for path in args.exclude or [package_data("default-outcomes.jsonl")]:
        exclude |= done_ids(path, repair=False)
    names = sorted({name for mix in args.phases for name in mix})
    suites = {name: make_suite(name) for name in names}
    pools = {name: suite.load(exclude=exclude) for name, suite in suites.items()}
    plan = plan_stream(args.phases, args.per_phase, pools, args.feedback, args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    settings = {
        "library": _shown(args.library), "trained": str(args.trained), "budget_avg_params_b": args.budget,
        "phases": args.phases, "per_phase": args.per_phase, "window": args.window, "feedback": args.feedback,
        "seed": args.seed, "concurrency": args.concurrency, "excluded_items": len(exclude),
    }  # fmt: skip
    runs: dict[str, Any] = {}
    for mode in args.modes:
        done: list[dict[str, Any]] = []

        def progress(row: dict[str, Any], mode: str = mode, done: list[dict[str, Any]] = done) -> None:
            print(mode, row, file=sys.stderr, flush=True)
            done.append(row)  # a run stopped part-way keeps its finished windows
            write_data(args.json, {"settings": settings, "runs": runs, "unfinished": {mode: done}})

        if mode == "routes":
            runs[mode] = static_routes(args, plan, suites)
        else:
            runs[mode] = run_mode(mode == "online", args, plan, suites, progress)
        write_data(args.json, {"settings": settings, "runs": runs})
    return 0


if __name__ == "__main__":
    run_script(main)
