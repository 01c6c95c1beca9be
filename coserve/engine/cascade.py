"""Cascades when unsure (``routing.mode: cascade``): the routed expert answers first; the answer check
returns its answer or asks the next, stronger expert of the Decision's order.

    ladder    -> the decision's expert, then its alternatives (already within the request's
                 constraints, in the router's order), keeping only experts with more parameters
                 than the one before: escalation always goes up, never sideways or down. With
                 ``categories`` set, only the listed categories cascade, each from its own start
                 expert (cheaper than single choice's; it must be within the request's
                 constraints); any other request answers by single choice, one step, unchecked
    gate      -> with ``start_gate``: before anything is generated, the gate's P(the start expert's
                 answer is good | prompt) (coserve.router.gate); below the limit (``start_gate_
                 threshold``, else break-even params(start) / params(next rung)) the start is
                 skipped (a "skipped" step, reason ``start_gate``) and the next rung answers first
    complete  -> each step is the whole answer of one expert (asked with log-probabilities, which
                 the check needs; the client gets them only if it asked), checked: P(good) >=
                 ``threshold`` returns it; otherwise the next rung answers, until ``max_steps``
                 experts were asked or the ladder ends (the last answer is returned); with
                 ``run_examples`` the answer's code runs on the prompt's examples (a thread, a child
                 process) for the check's ``examples_passed`` signal
    stream    -> with ``buffer_streams``: complete, then stream the accepted answer; without it,
                 no answer can be checked before its tokens are sent, so the only escalation is
                 before the first token, when the router's confidence is below
                 ``stream_min_confidence`` or the start gate skips the start

Every step is recorded on the call (``Call.steps``): the response's ``coserve`` field and the
decision log show them. The first step falls back like a single choice when its expert fails (the
ladder then climbs from the expert that answered); an escalation that fails ends the cascade with
the answer before it (a "failed" step). Pinned requests are never cascaded. This module knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

from coserve.backends.registry import capabilities
from coserve.config import LibraryConfig
from coserve.config_routing import CascadeSettings
from coserve.engine.call import Call, Step
from coserve.engine.cascade_guard import EscalationGuard
from coserve.errors import ConfigError, CoserveError
from coserve.router.check import AnswerCheck, load_check, signals_of
from coserve.router.gate import StartGate, load_gate, start_limit
from coserve.types import Chunk, Completion, Decision, Usage

__all__ = ["Cascade", "cascade_rungs", "ladder", "next_rung", "params_of"]


class Engine(Protocol):
    """What a cascade needs of the engine (coserve.engine.engine.Engine): one expert's answer."""

    library: LibraryConfig

    async def complete_one(self, call: Call) -> Completion: ...

    async def stream_one(self, call: Call) -> AsyncIterator[Chunk]: ...


def next_rung(decision: Decision, after: str, params_b: Mapping[str, float]) -> str | None:
    """The first of the decision's alternatives with more parameters than ``after`` (None: the top)."""
    return next((n for n in decision.alternatives if params_b[n] > params_b[after]), None)


def ladder(decision: Decision, params_b: Mapping[str, float]) -> list[str]:
    """The experts a cascade may ask, in order: the decision's, then ever larger alternatives."""
    rungs = [decision.expert]
    while (rung := next_rung(decision, rungs[-1], params_b)) is not None:
        rungs.append(rung)
    return rungs


def cascade_rungs(decision: Decision, params_b: Mapping[str, float], starts: Mapping[str, str] | None) -> list[str]:
    """The experts a cascade may ask for ``decision``: its ``ladder`` when ``starts`` is None; else,
    for a category of ``starts``, the ladder from that start expert (when the request may use it:
    it is the decision's expert or one of its alternatives); any other decision: its expert alone."""
    if starts is None:
        return ladder(decision, params_b)
    start = starts.get(decision.category or "")
    order = (decision.expert, *decision.alternatives)
    if start is None or start not in order or decision.reason == "pinned":
        return [decision.expert]
    return ladder(
        dataclasses.replace(decision, expert=start, alternatives=tuple(n for n in order if n != start)), params_b
    )


def params_of(library: LibraryConfig) -> dict[str, float]:
    """Each expert's billions of active parameters: what the ladder climbs."""
    return {spec.name: spec.params_b for spec in library.experts}


class Cascade:
    """The cascade of one library: its settings and its answer check."""

    def __init__(self, settings: CascadeSettings, check: AnswerCheck, gate: StartGate | None = None):
        self.settings = settings
        self.check = check
        self.gate = gate  # routing.cascade.start_gate (None: every cascade asks its start expert)
        self.guard = EscalationGuard(settings.guard_window, settings.guard_probe, settings.guard_max_escalation)

    @classmethod
    def from_library(cls, library: LibraryConfig) -> Cascade | None:
        """The library's cascade (None in ``single`` mode); the check file is read now."""
        settings = library.routing.cascade
        if library.routing.mode != "cascade" or settings is None:
            return None
        base = library.path.parent if library.path else Path.cwd()
        check = load_check(base / settings.check)
        if check.reads_examples() and not settings.run_examples:
            raise ConfigError(
                f"{settings.check}: the check learned from answers run on the prompt's examples; set "
                "routing.cascade.run_examples: true (runs model code on this host, docs/library.md) or "
                "train it with --features leaving out examples_passed,examples_failed"
            )
        gate = load_gate(base / settings.start_gate) if settings.start_gate else None
        if gate is not None and gate.expert not in params_of(library):
            known = ", ".join(params_of(library))
            raise ConfigError(
                f"routing.cascade.start_gate: {settings.start_gate}: the start gate is for expert {gate.expert!r}, "
                f"not an expert of this library (experts: {known})"
            )
        return cls(settings, check, gate)

    def skips_start(self, call: Call, rungs: list[str], params: Mapping[str, float]) -> Step | None:
        """The "skipped" step when the start gate sends ``call`` past its first rung (None: it does not)."""
        if self.gate is None or len(rungs) < 2 or rungs[0] != self.gate.expert:
            return None
        assert call.decision is not None
        prompt = next((m.content for m in reversed(call.request.messages) if m.role == "user"), "")
        probability = self.gate.probability(prompt, call.decision.confidence)
        limit = self.settings.start_gate_threshold
        limit = start_limit(params[rungs[0]], params[rungs[1]]) if limit is None else limit
        return Step(rungs[0], probability, "skipped", "start_gate", None) if probability < limit else None

    @staticmethod
    def _step_call(call: Call, expert: str, library: LibraryConfig, first: bool) -> Call:
        """A sub-call that asks ``expert`` with log-probabilities where its runtime gives them (the
        check's signals). The first step falls back like a single choice (the rest of the decision's
        order, those that give them too); an escalation has no fallback (its failure ends the cascade)."""
        assert call.decision is not None
        logprobs = call.request.sampling.logprobs or "logprobs" in capabilities(library.expert(expert))
        order = (call.decision.expert, *call.decision.alternatives)
        rest = tuple(
            n for n in order if n != expert and (not logprobs or "logprobs" in capabilities(library.expert(n)))
        )
        request = dataclasses.replace(
            call.request, sampling=dataclasses.replace(call.request.sampling, logprobs=logprobs), stream=False
        )
        decision = dataclasses.replace(call.decision, expert=expert, alternatives=rest if first else ())
        return Call(request, key=call.key, decision=decision, timings=call.timings)

    async def complete(self, engine: Engine, call: Call) -> Completion:
        """Ask, check and escalate until an answer is accepted; the accepted answer (see module doc).
        An escalation whose expert fails ends the cascade with the answer before it (step "failed")."""
        assert call.decision is not None
        library, params = engine.library, params_of(engine.library)
        call.steps.clear()  # a cluster's ingress may run a call's complete again (a host died mid-answer)
        rungs = cascade_rungs(call.decision, params, self.settings.categories)
        if self.settings.categories is not None and len(rungs) == 1:  # no cascade here: single choice
            single = await engine.complete_one(call)
            call.steps.append(Step(str(call.expert), None, "accepted", "no_cascade", single.usage.completion_tokens))
            return single
        category = call.decision.category or ""
        if len(rungs) > 1 and not self.guard.allows(category, self.guard.limit(params[rungs[0]], params[rungs[1]])):
            single = await engine.complete_one(call)  # too many escalations lately: single choice
            call.steps.append(Step(str(call.expert), None, "accepted", "guard", single.usage.completion_tokens))
            return single
        skipped = self.skips_start(call, rungs, params)
        if skipped is not None:  # the gate: the prompt looks too hard for the start expert
            call.steps.append(skipped)
            rungs = rungs[1:]
        expert = rungs[0]
        completion: Completion | None = None
        while True:
            step_call = self._step_call(call, expert, library, first=completion is None)
            try:
                answer = await engine.complete_one(step_call)
            except CoserveError:
                if completion is None:
                    raise  # nothing answered: the request fails as a single choice would
                call.steps.append(Step(expert, None, "failed", "expert_failed"))
                break
            completion, call.expert, call.usage = answer, step_call.expert, step_call.usage
            call.tried.extend(step_call.tried)
            answered = str(step_call.expert)
            signals = await asyncio.to_thread(
                signals_of, answer, call.decision.confidence, call.request.messages, self.settings.run_examples
            )
            probability = self.check.probability(signals, answered)
            tokens = answer.usage.completion_tokens
            rung = next((r for r in rungs if params[r] > params[answered]), None)
            if probability >= self.settings.threshold:
                call.steps.append(Step(answered, probability, "accepted", "check", tokens))
                break
            if rung is None or sum(s.outcome != "skipped" for s in call.steps) + 1 >= self.settings.max_steps:
                reason = "no_stronger_expert" if rung is None else "max_steps"
                call.steps.append(Step(answered, probability, "accepted", reason, tokens))
                break
            call.steps.append(Step(answered, probability, "escalated", "check", tokens))
            expert = rung
        if len(rungs) > 1 and skipped is None:  # a skipped start is not a cascade the guard counts
            self.guard.record(category, any(step.outcome == "escalated" for step in call.steps))
        if not call.request.sampling.logprobs:
            completion = dataclasses.replace(completion, logprobs=())
        return completion

    async def stream(self, engine: Engine, call: Call) -> AsyncIterator[Chunk]:
        """The chunks of a streamed cascaded request (returns once the first chunk exists)."""
        assert call.decision is not None
        if self.settings.buffer_streams:
            completion = await self.complete(engine, call)
            return _replay(completion)
        params = params_of(engine.library)
        rungs = ladder(call.decision, params)
        single = self.settings.categories is not None  # per-category starts: an unchecked stream is single choice
        skipped = None if single else self.skips_start(call, rungs, params)
        unsure = call.decision.confidence < self.settings.stream_min_confidence
        if not single and (skipped is not None or unsure) and len(rungs) > 1:
            call.steps.append(skipped or Step(rungs[0], None, "escalated", "router_confidence"))
            order = (call.decision.expert, *call.decision.alternatives)
            call.decision = dataclasses.replace(
                call.decision, expert=rungs[1], alternatives=tuple(n for n in order if n != rungs[1])
            )
        chunks = await engine.stream_one(call)
        call.steps.append(Step(str(call.expert), None, "accepted", "unchecked_stream"))
        return chunks


async def _replay(completion: Completion) -> AsyncIterator[Chunk]:
    """A buffered answer as a stream: its text (with its log-probabilities), then the end."""
    if completion.text or completion.logprobs:
        yield Chunk(completion.text, logprobs=completion.logprobs)
    yield Chunk("", completion.finish_reason, completion.usage or Usage())
