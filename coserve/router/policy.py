"""The routing policy: category probabilities + constraints + library -> Decision. Pure, no I/O.

Order of reasoning, for a routed request:
1. the experts the caller's constraint flags allow, and that have the capabilities the request
   needs (``logprobs``, nonzero penalties, ``tools``, ``response_format`` JSON: ``json_schema``;
   coserve.backends.registry.capabilities) (none -> InfeasibleConstraints naming the flag, or the
   parameter; an ``exclude_experts`` name the library does not have -> InvalidRequest);
2. the top category's mapped expert, or the fallback generalist when the top probability is below
   ``min_confidence`` (an uncertain router should not send a prompt to a specialist);
3. if that expert is not allowed, the next categories' experts by probability, then the fallback,
   then the remaining allowed experts, strongest (most parameters) first;
4. the alternatives, for fallback at execution time, are the rest of that same order.
When a capability took the first choice out, the Decision's ``narrowed_by`` names it.

A pinned request (model = an expert's name) goes to that expert; its constraints still apply.
"""

from __future__ import annotations

from collections.abc import Mapping

from coserve.backends.registry import CAPABILITY_PARAMS, capabilities
from coserve.config import ExpertSpec, LibraryConfig
from coserve.errors import InfeasibleConstraints, InvalidRequest, NotFound
from coserve.types import ROUTED_MODEL, Constraints, Decision

__all__ = ["allowed", "decide"]


def _violation(spec: ExpertSpec, c: Constraints) -> str | None:
    """The first constraint flag this expert violates, or None."""
    if c.max_params_b is not None and spec.params_b > c.max_params_b:
        return "max_params_b"
    if c.max_price is not None and spec.price.mean > c.max_price:
        return "max_price"
    if c.min_context is not None and spec.context < c.min_context:
        return "min_context"
    if c.require_tags and not set(c.require_tags) <= set(spec.tags):
        return "require_tags"
    if spec.name in c.exclude_experts:
        return "exclude_experts"
    missing = [name for name in c.capabilities if name not in capabilities(spec)]
    return missing[0] if missing else None


def _param(flag: str) -> str:
    """The request field a violated flag stands for: a capability is a top-level parameter."""
    return CAPABILITY_PARAMS.get(flag, f"coserve.{flag}")


def _narrowed_by(first_choice: str, library: LibraryConfig, constraints: Constraints) -> tuple[str, ...]:
    """The capabilities the request needs that its first choice lacks (what moved it elsewhere)."""
    if first_choice not in library.expert_names:
        return ()
    have = capabilities(library.expert(first_choice))
    return tuple(name for name in constraints.capabilities if name not in have)


def _refuse_unknown_exclusions(library: LibraryConfig, constraints: Constraints) -> None:
    """A name in ``exclude_experts`` that is not an expert of the library is a 400: a typo would
    otherwise exclude nothing and let the request reach the expert the caller meant to avoid."""
    unknown = [name for name in constraints.exclude_experts if name not in library.expert_names]
    if unknown:
        raise InvalidRequest(
            f"coserve.exclude_experts: unknown expert {unknown[0]!r}; "
            f"the library's experts: {', '.join(library.expert_names)}",
            param="coserve.exclude_experts",
        )


def allowed(library: LibraryConfig, constraints: Constraints) -> list[str]:
    """Names of the experts that satisfy every constraint; raises if there are none, or if
    ``exclude_experts`` names an expert the library does not have (InvalidRequest, 400)."""
    _refuse_unknown_exclusions(library, constraints)
    names = [spec.name for spec in library.experts if _violation(spec, constraints) is None]
    if not names:
        flags = sorted({_violation(spec, constraints) or "" for spec in library.experts})
        if len(flags) == 1 and flags[0] in CAPABILITY_PARAMS:
            param = _param(flags[0])
            raise InfeasibleConstraints(f"{param}: no expert can serve it (none has {flags[0]!r})", param=param)
        raise InfeasibleConstraints(
            f"no expert satisfies the constraints ({', '.join(flags)} excluded every expert)",
            param=_param(flags[0]) if len(flags) == 1 else "coserve",
        )
    return names


def decide(
    probabilities: Mapping[str, float],
    library: LibraryConfig,
    constraints: Constraints | None = None,
    pinned: str | None = None,
) -> Decision:
    """Choose the expert for one request."""
    constraints = constraints or Constraints()
    if pinned is not None and pinned != ROUTED_MODEL:
        if pinned not in library.expert_names:
            raise NotFound(f"The model '{pinned}' does not exist", param="model")
        _refuse_unknown_exclusions(library, constraints)
        violated = _violation(library.expert(pinned), constraints)
        if violated is not None:
            raise InfeasibleConstraints(
                f"the pinned expert {pinned!r} violates the constraint {violated}", param=_param(violated)
            )
        return Decision(pinned, None, 1.0, (), "pinned", dict(probabilities))

    permitted = set(allowed(library, constraints))
    ranked = sorted(probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked:
        raise ValueError("decide() needs at least one category probability")
    top_category, confidence = ranked[0]
    fallback = library.router.fallback
    uncertain = confidence < fallback.min_confidence

    order: list[str] = []
    if uncertain:
        order.append(fallback.expert)
    order.extend(library.router.map[category] for category, _ in ranked)
    order.append(fallback.expert)
    order.extend(spec.name for spec in sorted(library.experts, key=lambda s: (-s.params_b, s.name)))
    candidates = list(dict.fromkeys(name for name in order if name in permitted))

    first_choice = order[0]
    expert = candidates[0]
    if expert != first_choice:
        reason = "constrained"
    elif uncertain:
        reason = "low_confidence"
    else:
        reason = "routed"
    narrowed = _narrowed_by(first_choice, library, constraints) if expert != first_choice else ()
    return Decision(
        expert,
        top_category,
        float(confidence),
        tuple(candidates[1:]),
        reason,
        dict(probabilities),
        narrowed_by=narrowed,
    )


def decide_ranked(
    chosen: str,
    ranking: list[str],
    library: LibraryConfig,
    constraints: Constraints,
    *,
    category: str | None,
    confidence: float,
    uncertain: bool,
    probabilities: Mapping[str, float],
) -> Decision:
    """A trained router's choice (already budget-aware) -> Decision, under the caller's constraints.

    ``ranking`` orders experts by the router's expected score; it supplies the replacement when
    ``chosen`` is not allowed and the alternatives for fallback at execution time.
    """
    permitted = set(allowed(library, constraints))
    known = set(library.expert_names)
    order = [chosen, *ranking, library.router.fallback.expert]
    candidates = list(dict.fromkeys(n for n in order if n in permitted and n in known))
    if not candidates:
        candidates = [s.name for s in sorted(library.experts, key=lambda s: -s.params_b) if s.name in permitted]
    expert = candidates[0]
    reason = "constrained" if expert != chosen else "low_confidence" if uncertain else "routed"
    narrowed = _narrowed_by(chosen, library, constraints) if expert != chosen else ()
    return Decision(
        expert, category, float(confidence), tuple(candidates[1:]), reason, dict(probabilities), narrowed_by=narrowed
    )
