"""The routing policy ``decide``: plain probabilities + constraints + library -> Decision.

The small library (see conftest): small 0.1B [chat] price 0.1, coder 0.5B [code] price 0.3,
big 1.5B [general] price 1.5; map code->coder, math->big, chat->small; fallback big below 0.4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import library_data, write_library

from coserve.config import LibraryConfig, load_library
from coserve.errors import InfeasibleConstraints, InvalidRequest, NotFound
from coserve.router.policy import allowed, decide
from coserve.types import Constraints, Decision


@pytest.fixture
def library(library_path: Path) -> LibraryConfig:
    return load_library(library_path)


def _check_alternatives(decision: Decision, library: LibraryConfig) -> None:
    assert decision.expert not in decision.alternatives
    assert len(set(decision.alternatives)) == len(decision.alternatives)
    assert set(decision.alternatives) <= set(library.expert_names)


# -- routed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probabilities", "expert", "category"),
    [
        ({"code": 0.8, "math": 0.15, "chat": 0.05}, "coder", "code"),
        ({"code": 0.1, "math": 0.7, "chat": 0.2}, "big", "math"),
        ({"code": 0.2, "math": 0.1, "chat": 0.7}, "small", "chat"),
    ],
)
def test_routed_to_the_mapped_expert(
    library: LibraryConfig, probabilities: dict[str, float], expert: str, category: str
) -> None:
    decision = decide(probabilities, library)
    assert decision.expert == expert
    assert decision.category == category
    assert decision.reason == "routed"
    assert decision.confidence == pytest.approx(probabilities[category])
    assert decision.probabilities == probabilities
    _check_alternatives(decision, library)


def test_confidence_at_the_threshold_is_routed(library: LibraryConfig) -> None:
    decision = decide({"code": 0.4, "math": 0.35, "chat": 0.25}, library)
    assert (decision.expert, decision.reason) == ("coder", "routed")


def test_below_min_confidence_goes_to_the_fallback(library: LibraryConfig) -> None:
    decision = decide({"chat": 0.39, "code": 0.33, "math": 0.28}, library)
    assert decision.expert == "big"
    assert decision.category == "chat"  # the top category is still reported
    assert decision.reason == "low_confidence"
    assert decision.confidence == pytest.approx(0.39)
    # then the categories' experts by probability (big, the math expert, is already chosen)
    assert decision.alternatives == ("small", "coder")


def test_low_confidence_when_the_top_category_maps_to_the_fallback(library: LibraryConfig) -> None:
    decision = decide({"math": 0.35, "chat": 0.34, "code": 0.31}, library)
    assert (decision.expert, decision.reason) == ("big", "low_confidence")
    assert decision.alternatives == ("small", "coder")


def test_ties_are_broken_by_category_name(library: LibraryConfig) -> None:
    decision = decide({"math": 0.45, "code": 0.45, "chat": 0.1}, library)
    assert decision.category == "code"
    assert decision.expert == "coder"


def test_alternatives_follow_category_probabilities(library: LibraryConfig) -> None:
    decision = decide({"code": 0.6, "chat": 0.3, "math": 0.1}, library)
    assert decision.expert == "coder"
    assert decision.alternatives == ("small", "big")
    decision = decide({"code": 0.6, "math": 0.3, "chat": 0.1}, library)
    assert decision.alternatives == ("big", "small")


def test_alternatives_then_fallback_then_strongest_first(tmp_path: Path) -> None:
    """With more experts than categories the order is: categories, fallback, the rest by params."""
    data = library_data()
    extra = [
        {"name": "mid", "backend": "fake", "params_b": 0.8},
        {"name": "huge", "backend": "fake", "params_b": 7.0},
        {"name": "tiny", "backend": "fake", "params_b": 0.05},
        {"name": "mid2", "backend": "fake", "params_b": 0.8},
    ]
    router = data["router"]
    router["map"] = {"code": "coder", "math": "coder", "chat": "small"}
    router["fallback"]["expert"] = "mid"
    library = load_library(write_library(tmp_path, experts=data["experts"] + extra, router=router))
    decision = decide({"code": 0.5, "math": 0.3, "chat": 0.2}, library)
    assert decision.expert == "coder"
    # small (chat), then the fallback mid, then by params desc (ties by name): huge, big, mid2, tiny
    assert decision.alternatives == ("small", "mid", "huge", "big", "mid2", "tiny")
    _check_alternatives(decision, library)


def test_decide_needs_probabilities(library: LibraryConfig) -> None:
    with pytest.raises(ValueError):
        decide({}, library)


def test_as_dict(library: LibraryConfig) -> None:
    decision = decide({"code": 0.812345678, "math": 0.1, "chat": 0.087654322}, library)
    assert decision.as_dict() == {
        "expert": "coder",
        "category": "code",
        "confidence": 0.8123,
        "alternatives": ["big", "small"],
        "reason": "routed",
    }


# -- constraints ----------------------------------------------------------------------------------

CODE = {"code": 0.8, "math": 0.15, "chat": 0.05}


@pytest.mark.parametrize(
    ("constraints", "expected", "alternatives"),
    [
        (Constraints(max_params_b=0.3), "small", ()),
        (Constraints(max_price=0.2), "small", ()),
        (Constraints(min_context=5000), "big", ()),
        (Constraints(require_tags=("general",)), "big", ()),
        (Constraints(exclude_experts=("coder",)), "big", ("small",)),
        (Constraints(max_params_b=1.0, exclude_experts=("coder",)), "small", ()),
    ],
    ids=["max_params_b", "max_price", "min_context", "require_tags", "exclude_experts", "combined"],
)
def test_constraint_ruling_out_the_mapped_expert(
    library: LibraryConfig, constraints: Constraints, expected: str, alternatives: tuple[str, ...]
) -> None:
    decision = decide(CODE, library, constraints)
    assert decision.expert == expected
    assert decision.reason == "constrained"
    assert decision.category == "code"
    assert decision.alternatives == alternatives
    assert expected in allowed(library, constraints)


@pytest.mark.parametrize(
    "constraints",
    [
        Constraints(max_params_b=0.5),
        Constraints(max_price=0.31),
        Constraints(min_context=4096),
        Constraints(require_tags=("code",)),
        Constraints(exclude_experts=("big", "small")),
    ],
)
def test_constraint_that_the_mapped_expert_meets(library: LibraryConfig, constraints: Constraints) -> None:
    decision = decide(CODE, library, constraints)
    assert (decision.expert, decision.reason) == ("coder", "routed")
    assert all(name in allowed(library, constraints) for name in decision.alternatives)


def test_constraints_filter_the_alternatives(library: LibraryConfig) -> None:
    decision = decide(CODE, library, Constraints(max_params_b=1.0))
    assert decision.expert == "coder"
    assert decision.alternatives == ("small",)


def test_constrained_fallback_when_uncertain(library: LibraryConfig) -> None:
    decision = decide({"chat": 0.35, "code": 0.34, "math": 0.31}, library, Constraints(max_params_b=1.0))
    assert decision.expert == "small"  # the fallback big is excluded; next is the top category's expert
    assert decision.reason == "constrained"
    assert decision.alternatives == ("coder",)


@pytest.mark.parametrize(
    ("constraints", "param"),
    [
        (Constraints(max_params_b=0.01), "coserve.max_params_b"),
        (Constraints(max_price=0.05), "coserve.max_price"),
        (Constraints(min_context=100_000), "coserve.min_context"),
        (Constraints(require_tags=("vision",)), "coserve.require_tags"),
        (Constraints(require_tags=("code", "chat")), "coserve.require_tags"),
        (Constraints(exclude_experts=("small", "coder", "big")), "coserve.exclude_experts"),
    ],
)
def test_constraints_ruling_out_everyone(library: LibraryConfig, constraints: Constraints, param: str) -> None:
    with pytest.raises(InfeasibleConstraints) as info:
        decide(CODE, library, constraints)
    assert info.value.param == param
    assert info.value.status == 422
    assert info.value.code == "infeasible_constraints"
    with pytest.raises(InfeasibleConstraints):
        allowed(library, constraints)


def test_several_flags_ruling_out_everyone(library: LibraryConfig) -> None:
    with pytest.raises(InfeasibleConstraints) as info:
        decide(CODE, library, Constraints(max_params_b=0.3, exclude_experts=("small",)))
    assert info.value.param == "coserve"
    assert "exclude_experts" in info.value.message and "max_params_b" in info.value.message


def test_allowed_lists_the_permitted_experts_in_library_order(library: LibraryConfig) -> None:
    assert allowed(library, Constraints()) == ["small", "coder", "big"]
    assert allowed(library, Constraints(max_params_b=0.5)) == ["small", "coder"]


@pytest.mark.parametrize("pinned", [None, "small"])
def test_an_unknown_expert_in_exclude_experts_is_refused(library: LibraryConfig, pinned: str | None) -> None:
    # A typo must not exclude nothing and let the request reach the expert it meant to avoid.
    with pytest.raises(InvalidRequest) as info:
        decide(CODE, library, Constraints(exclude_experts=("coder", "Coder")), pinned=pinned)
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_request", "coserve.exclude_experts")
    assert info.value.message == (
        "coserve.exclude_experts: unknown expert 'Coder'; the library's experts: small, coder, big"
    )
    with pytest.raises(InvalidRequest):
        allowed(library, Constraints(exclude_experts=("nobody",)))


# -- pinned ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "coder", "big"])
def test_pinned_expert(library: LibraryConfig, name: str) -> None:
    decision = decide(CODE, library, pinned=name)
    assert decision.expert == name
    assert decision.reason == "pinned"
    assert decision.category is None
    assert decision.confidence == 1.0
    assert decision.alternatives == ()


def test_pinned_needs_no_probabilities(library: LibraryConfig) -> None:
    assert decide({}, library, pinned="coder").expert == "coder"


def test_pinning_the_routed_model_routes(library: LibraryConfig) -> None:
    decision = decide(CODE, library, pinned="coserve")
    assert (decision.expert, decision.reason) == ("coder", "routed")


def test_unknown_pinned_expert(library: LibraryConfig) -> None:
    with pytest.raises(NotFound) as info:
        decide(CODE, library, pinned="gpt-4o")
    assert info.value.status == 404
    assert info.value.param == "model"
    assert "gpt-4o" in info.value.message


@pytest.mark.parametrize(
    ("constraints", "param"),
    [
        (Constraints(max_params_b=0.3), "coserve.max_params_b"),
        (Constraints(max_price=0.2), "coserve.max_price"),
        (Constraints(min_context=8192), "coserve.min_context"),
        (Constraints(require_tags=("general",)), "coserve.require_tags"),
        (Constraints(exclude_experts=("coder",)), "coserve.exclude_experts"),
    ],
)
def test_pinned_expert_violating_a_constraint(library: LibraryConfig, constraints: Constraints, param: str) -> None:
    with pytest.raises(InfeasibleConstraints) as info:
        decide(CODE, library, constraints, pinned="coder")
    assert info.value.param == param
    assert info.value.status == 422


def test_pinned_expert_meeting_the_constraints(library: LibraryConfig) -> None:
    decision = decide({}, library, Constraints(max_params_b=0.5, require_tags=("code",)), pinned="coder")
    assert (decision.expert, decision.reason) == ("coder", "pinned")
