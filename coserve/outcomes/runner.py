"""Run every expert of a library on suite items, grade the answers, append one JSON line per item.

    resume  -> ids already in the output file are skipped (an item is never graded twice)
    ask     -> each expert pinned by name through the engine (real pool and scheduler), greedy
    grade   -> the suite's grader (off the event loop: HumanEval runs a fenced child process); a
               judged suite (MT-Bench) first asks the judge expert for a verdict; an expert, grader
               or judge failure is recorded per item and the run goes on
    write   -> ``{"id", "category", "stratum", "scores", "tokens", "latency_s", "signals", "router",
               "judge"?, "errors"?, "notes"?, "prompt"?, "texts"?, "routed_expert"?, "routed_steps"?}``,
               flushed (``signals``: per expert, what the cascade's answer check sees,
               coserve.router.check; ``texts``: per expert and ``routed``, the answer, with ``keep_text``)

The file holds ids, not prompt or answer text, unless ``with_prompts`` / ``keep_text`` is set (answer
texts let later verifiers be replayed on the recorded answers without generating again). This module knows nothing about
where suites read their data or how a grader works.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coserve.backends.registry import capabilities
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.errors import ConfigError, CoserveError
from coserve.jsonl import parse_lines, write_row
from coserve.outcomes.suites import Graded, Item, Suite
from coserve.router.check import signals_of
from coserve.types import ROUTED_MODEL, Completion, Message, Request, Sampling

__all__ = ["ROUTED", "RunSummary", "done_ids", "run_outcomes"]


@dataclass
class RunSummary:
    """What a run did: items written and skipped, failures, and per-expert, per-category scores."""

    written: int = 0
    skipped: int = 0  # already in the output file
    expert_errors: int = 0  # (item, expert) pairs where the expert failed
    grader_errors: int = 0  # (item, expert) pairs where grading raised (or the judge failed)
    grader_notes: int = 0  # (item, expert) pairs scored with a note (a program that timed out)
    scores: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (expert, category) -> scores

    def table(self, experts: Sequence[str]) -> str:
        """Mean score per expert (rows) and category (columns), with the number of scored items."""
        categories = sorted({c for _, c in self.scores})
        lines = [f"{'expert':<16}" + "".join(f"{c:>18}" for c in categories)]
        for expert in experts:
            cells = []
            for category in categories:
                values = self.scores.get((expert, category), [])
                cells.append(f"{sum(values) / len(values):>10.3f} (n={len(values)})" if values else f"{'-':>18}")
            lines.append(f"{expert:<16}" + "".join(f"{c:>18}" for c in cells))
        lines.append(
            f"items written {self.written}, skipped (already done) {self.skipped}, "
            f"expert failures {self.expert_errors}, grader errors {self.grader_errors}, "
            f"scored with a note (time-outs) {self.grader_notes}"
        )
        return "\n".join(lines)


def done_ids(out: Path, repair: bool = True) -> set[str]:
    """Ids already in ``out``; a partial last line (a run killed mid-write) is cut off the file, or with
    ``repair`` False (a file only read: ``--exclude``) only left out. A malformed file is a ConfigError
    whose advice fits the file's role: a run's output is resumed, an excluded file is not."""
    advice = "fix or move the file to resume" if repair else "fix the file: its ids are the items this run leaves out"
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if repair:
            with out.open("r+b") as handle:
                handle.truncate(cut)
        data = data[:cut]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{out} is not UTF-8 text ({exc.reason} at byte {exc.start}); {advice}") from None
    ids: set[str] = set()
    for number, obj in parse_lines(text.splitlines()):
        if isinstance(obj, str):
            raise ConfigError(f"{out}:{number}: {obj}; {advice}")
        if not isinstance(obj.get("id"), str):
            raise ConfigError(f"{out}:{number}: a line must be an object with a string id; {advice}")
        ids.add(obj["id"])
    return ids


ROUTED = "routed"  # the column of the library's own routing (``--routed``): model ROUTED_MODEL


@dataclass(frozen=True)
class _Answer:
    """One expert's answer to one item, as the row keeps it."""

    text: str
    tokens: int  # completion tokens
    seconds: float  # from submission to the last token, routing and queueing included
    expert: str  # who answered
    completion: Completion
    steps: list[dict[str, object]]  # a cascade's steps (the routed column of a cascade library), else []


async def _ask(
    engine: Engine, expert: str, messages: Sequence[tuple[str, str]], max_tokens: int, logprobs: bool = False
) -> _Answer:
    """One greedy answer (with per-token log-probabilities when ``logprobs`` and the expert can give them).

    ``expert`` is pinned, with no fallback (the score must be that expert's own, so a failure is
    recorded, not rerouted); ``ROUTED`` asks the router, fallback included, as a client would.
    """
    logprobs = logprobs and expert != ROUTED and "logprobs" in capabilities(engine.library.expert(expert))
    request = Request(
        tuple(Message(role, content) for role, content in messages),
        ROUTED_MODEL if expert == ROUTED else expert,
        Sampling(max_tokens=max_tokens, temperature=0.0, logprobs=logprobs),
    )
    start = time.monotonic()
    call = Call(request)
    decision = await engine.route(call)
    if expert != ROUTED:
        call.decision = dataclasses.replace(decision, alternatives=())
    completion = await engine.complete(call)
    if expert != ROUTED and call.expert != expert:
        raise CoserveError(f"answered by {call.expert!r} instead")
    seconds = time.monotonic() - start
    steps = [step.as_dict() for step in call.steps]
    return _Answer(completion.text, completion.usage.completion_tokens, seconds, str(call.expert), completion, steps)


async def _grade(engine: Engine, suite: Suite, text: str, item: Item, judge: str | None) -> float | Graded:
    """The suite's grade of one answer; a judged suite first asks the judge expert for its verdict."""
    if suite.judged:
        if judge is None:
            raise ConfigError(f"suite {suite.name!r} is graded by a judge: name one with --judge EXPERT")
        messages = suite.judge_messages(text, item) or []
        verdict = (await _ask(engine, judge, messages, suite.judge_max_tokens)).text
        try:
            return await asyncio.to_thread(suite.grade, verdict, item)
        except ValueError:
            if suite.rating_request is None:
                raise
        # The verdict ran out of tokens (or forgot the format) before its rating: ask for it alone.
        follow = [*messages, ("assistant", verdict), ("user", suite.rating_request)]
        text = (await _ask(engine, judge, follow, suite.rating_max_tokens)).text
    # Graders may block (HumanEval runs a child process): off the event loop.
    return await asyncio.to_thread(suite.grade, text, item)


async def _run_item(
    engine: Engine,
    suite: Suite,
    item: Item,
    max_tokens: int,
    with_prompts: bool,
    summary: RunSummary,
    judge: str | None,
    routed: bool,
    keep_text: bool = False,
    run_examples: bool = False,
) -> dict[str, Any]:
    prompt = suite.prompt(item)
    category = suite.category(item)
    experts = [*engine.library.expert_names, *([ROUTED] if routed else [])]
    ask = [("user", prompt)]
    decision = await engine.route(Call(Request((Message("user", prompt),), ROUTED_MODEL)))
    results = await asyncio.gather(
        *(_ask(engine, e, ask, max_tokens, logprobs=True) for e in experts), return_exceptions=True
    )
    row: dict[str, Any] = {
        "id": item.id,
        "category": category,
        "stratum": item.stratum,
        "scores": {},
        "tokens": {},
        "latency_s": {},
        "signals": {},
        "router": {
            "expert": decision.expert,
            "category": decision.category,
            "confidence": round(decision.confidence, 4),
            "alternatives": list(decision.alternatives),
            "probabilities": {c: round(p, 4) for c, p in decision.probabilities.items()},
        },
    }
    if suite.judged:
        row["judge"] = judge
    errors: dict[str, str] = {}
    notes: dict[str, str] = {}
    answered: list[tuple[str, str]] = []
    for expert, result in zip(experts, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            errors[expert] = f"expert: {type(result).__name__}: {result}"
            summary.expert_errors += 1
            continue
        if expert == ROUTED:
            row["routed_expert"] = result.expert
            if result.steps:
                row["routed_steps"] = result.steps
        else:
            messages = (Message("user", prompt),)
            # off the event loop: with run_examples the answer's code runs in a child process
            signals = await asyncio.to_thread(
                signals_of, result.completion, decision.confidence, messages, run_examples
            )
            row["signals"][expert] = signals.as_dict()
        row["tokens"][expert] = result.tokens
        row["latency_s"][expert] = round(result.seconds, 4)
        answered.append((expert, result.text))
    grades = await asyncio.gather(
        *(_grade(engine, suite, text, item, judge) for _, text in answered), return_exceptions=True
    )
    for (expert, _), graded in zip(answered, grades, strict=True):
        if isinstance(graded, BaseException):
            if not isinstance(graded, Exception):
                raise graded
            if isinstance(graded, ConfigError):
                raise graded  # a setup problem (no judge named, judge prompts unreadable): stop the run
            # A grader bug or a judge failure must not stop the run; it is recorded per item.
            errors[expert] = f"grader: {type(graded).__name__}: {graded}"
            summary.grader_errors += 1
            continue
        if isinstance(graded, Graded):
            notes[expert] = graded.note
            summary.grader_notes += 1
            graded = graded.score
        score = float(graded)
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            errors[expert] = f"grader: ValueError: score {score} out of [0, 1]"
            summary.grader_errors += 1
            continue
        row["scores"][expert] = score
        summary.scores.setdefault((expert, category), []).append(score)
    if notes:
        row["notes"] = notes
    if errors:
        row["errors"] = errors
    if with_prompts:
        row["prompt"] = prompt
    if keep_text:
        row["texts"] = dict(answered)
    return row


async def run_outcomes(
    engine: Engine,
    work: Sequence[tuple[Suite, Item]],
    out: str | Path,
    *,
    max_tokens: int | None = None,
    concurrency: int = 2,
    with_prompts: bool = False,
    progress: bool = True,
    judge: str | None = None,
    routed: bool = False,
    keep_text: bool = False,
    run_examples: bool = False,
) -> RunSummary:
    """Ask every expert on every item not yet in ``out`` and append its line; returns the summary.

    ``max_tokens`` overrides each suite's default cap; ``concurrency`` bounds items in flight (each
    item sends one request per expert, which the engine batches by expert). ``judge`` names the
    expert that rates answers of judged suites (MT-Bench); it must be one of the library's.
    ``routed`` adds a ``routed`` column: the library's router picks the expert (``routed_expert``).
    ``keep_text`` stores each answer's text in ``texts`` (per expert, ``routed`` included).
    ``run_examples`` runs each answer's code on the prompt's own examples (sandboxed child process,
    coserve.router.examples) for the ``examples_passed`` signal; off, it is None (unknown).
    """
    from tqdm import tqdm

    if any(suite.judged for suite, _ in work):
        if judge is None:
            judged = sorted({suite.name for suite, _ in work if suite.judged})
            raise ConfigError(
                f"{', '.join(judged)} is graded by a judge: name one of the library's experts with --judge"
            )
        if judge not in engine.library.expert_names:
            raise ConfigError(
                f"the judge {judge!r} is not an expert of this library ({', '.join(engine.library.expert_names)})"
            )
    for suite in {s.name: s for s, _ in work}.values():
        suite.prepare()  # a judged suite reads its judge prompts now: a broken package stops the run here
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    summary = RunSummary(skipped=sum(item.id in done for _, item in work))
    pending = [(s, i) for s, i in work if i.id not in done]
    bound = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(pending), desc="outcomes", unit="item", disable=not progress)

    async def one(suite: Suite, item: Item, handle: Any) -> None:
        async with bound:
            row = await _run_item(
                engine,
                suite,
                item,
                max_tokens or suite.max_tokens,
                with_prompts,
                summary,
                judge,
                routed,
                keep_text,
                run_examples,
            )
        write_row(handle, row)
        handle.flush()
        summary.written += 1
        bar.update(1)

    try:
        with out.open("a", encoding="utf-8") as handle:
            await asyncio.gather(*(one(s, i, handle) for s, i in pending))
    finally:
        bar.close()
    return summary
