"""Run every expert of a library on suite items, grade the answers, append one JSON line per item.

    resume  -> ids already in the output file are skipped (an item is never graded twice)
    ask     -> each expert pinned by name through the engine (real pool and scheduler), greedy
    grade   -> the suite's grader; an expert or grader failure is recorded per item, the run goes on
    write   -> ``{"id", "category", "scores", "tokens", "latency_s", "errors"?, "prompt"?}``, flushed

The file holds ids, not prompt text, unless ``with_prompts`` is set. This module knows nothing about
where suites read their data or how a grader works.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coserve.engine.engine import Engine
from coserve.errors import ConfigError, CoserveError
from coserve.outcomes.suites import Item, Suite
from coserve.types import Message, Request, Sampling

__all__ = ["RunSummary", "done_ids", "run_outcomes"]


@dataclass
class RunSummary:
    """What a run did: items written and skipped, failures, and per-expert, per-category scores."""

    written: int = 0
    skipped: int = 0  # already in the output file
    expert_errors: int = 0  # (item, expert) pairs where the expert failed
    grader_errors: int = 0  # (item, expert) pairs where grading raised
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
            f"expert failures {self.expert_errors}, grader errors {self.grader_errors}"
        )
        return "\n".join(lines)


def done_ids(out: Path) -> set[str]:
    """Ids already in ``out``; a partial last line (a run killed mid-write) is cut off the file."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with out.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    ids: set[str] = set()
    for number, text in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{out}:{number}: malformed JSON ({exc.msg}); fix or move the file to resume") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise ConfigError(f"{out}:{number}: a line must be an object with a string id; fix or move the file")
        ids.add(obj["id"])
    return ids


async def _ask(engine: Engine, expert: str, prompt: str, max_tokens: int) -> tuple[str, int, float]:
    """One greedy answer of one pinned expert: (text, completion tokens, seconds incl. queueing)."""
    request = Request((Message("user", prompt),), expert, Sampling(max_tokens=max_tokens, temperature=0.0))
    start = time.monotonic()
    decision = await engine.route(request)
    # No fallback: the score must be this expert's own, so a failure is recorded, not rerouted.
    decision = dataclasses.replace(decision, alternatives=())
    stream, completion = await engine.complete(request, decision)
    if stream.expert != expert:
        raise CoserveError(f"answered by {stream.expert!r} instead")
    return completion.text, completion.usage.completion_tokens, time.monotonic() - start


async def _run_item(
    engine: Engine, suite: Suite, item: Item, max_tokens: int, with_prompts: bool, summary: RunSummary
) -> dict[str, Any]:
    prompt = suite.prompt(item)
    category = suite.category(item)
    experts = engine.library.expert_names
    results = await asyncio.gather(*(_ask(engine, e, prompt, max_tokens) for e in experts), return_exceptions=True)
    row: dict[str, Any] = {"id": item.id, "category": category, "scores": {}, "tokens": {}, "latency_s": {}}
    errors: dict[str, str] = {}
    for expert, result in zip(experts, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            errors[expert] = f"expert: {type(result).__name__}: {result}"
            summary.expert_errors += 1
            continue
        text, tokens, seconds = result
        row["tokens"][expert] = tokens
        row["latency_s"][expert] = round(seconds, 4)
        try:
            score = float(suite.grade(text, item))
            if not 0.0 <= score <= 1.0 or math.isnan(score):
                raise ValueError(f"score {score} out of [0, 1]")
        except Exception as exc:  # a grader bug must not stop the run; it is recorded per item
            errors[expert] = f"grader: {type(exc).__name__}: {exc}"
            summary.grader_errors += 1
            continue
        row["scores"][expert] = score
        summary.scores.setdefault((expert, category), []).append(score)
    if errors:
        row["errors"] = errors
    if with_prompts:
        row["prompt"] = prompt
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
) -> RunSummary:
    """Ask every expert on every item not yet in ``out`` and append its line; returns the summary.

    ``max_tokens`` overrides each suite's default cap; ``concurrency`` bounds items in flight (each
    item sends one request per expert, which the engine batches by expert).
    """
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    summary = RunSummary(skipped=sum(item.id in done for _, item in work))
    pending = [(s, i) for s, i in work if i.id not in done]
    bound = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(pending), desc="outcomes", unit="item", disable=not progress)

    async def one(suite: Suite, item: Item, handle: Any) -> None:
        async with bound:
            row = await _run_item(engine, suite, item, max_tokens or suite.max_tokens, with_prompts, summary)
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        summary.written += 1
        bar.update(1)

    try:
        with out.open("a", encoding="utf-8") as handle:
            await asyncio.gather(*(one(s, i, handle) for s, i in pending))
    finally:
        bar.close()
    return summary
