"""The neighbour correction of prompt mode (coserve.router.online_neighbours, router.online.neighbours):
exact values on tiny vectors, worked out by hand in each test's comments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from test_online_serving import _engine
from test_trained_routing import trained_dir  # noqa: F401  (a fixture)

from coserve.bench.adapt import AdaptOptions, replay_adapt
from coserve.config_routing import NeighbourSettings, OnlineSettings
from coserve.errors import ConfigError
from coserve.router.online import OnlineRouter
from coserve.router.online_neighbours import NeighbourMemory


def _memory(**knobs: object) -> NeighbourMemory:
    settings = NeighbourSettings(**{"k": 2, "memory": 4, "shrink": 1.0, "min_similarity": 0.5, **knobs})
    memory = NeighbourMemory(settings, experts=2)
    memory.add([1.0, 0.0], 0, 0.3)  # slot 0
    memory.add([1.0, 1.0], 0, -0.6)  # slot 1: similarity 1/sqrt(2) = 0.707 to [1, 0]
    memory.add([0.0, 1.0], 0, 0.9)  # slot 2: similarity 0 to [1, 0], under the floor
    memory.add([1.0, 0.0], 1, 0.2)  # slot 3
    return memory


def test_correction_is_the_shrunk_mean_of_the_nearest_residuals_per_expert() -> None:
    memory = _memory()
    # expert 0: slots 0 and 1 pass the floor, (0.3 - 0.6) / (2 + 1); expert 1: slot 3, 0.2 / (1 + 1)
    assert memory.correction([1.0, 0.0]) == pytest.approx([-0.1, 0.1])
    # a longer vector of the same direction is the same prompt for cosine similarity
    assert memory.correction([3.0, 0.0]) == pytest.approx([-0.1, 0.1])
    assert len(memory) == 4


def test_k_keeps_only_the_most_similar() -> None:
    # k = 1: expert 0 keeps slot 0 (similarity 1) over slot 1 (0.707): 0.3 / (1 + 1)
    assert _memory(k=1).correction([1.0, 0.0]) == pytest.approx([0.15, 0.1])


def test_the_similarity_floor_and_no_neighbour_mean_no_correction() -> None:
    # floor 0.8: slot 1 (0.707) drops out of expert 0's neighbours: 0.3 / 2
    assert _memory(min_similarity=0.8).correction([1.0, 0.0]) == pytest.approx([0.15, 0.1])
    # [0, -1] is at similarity <= 0 to every slot: nothing passes the floor
    assert _memory().correction([0.0, -1.0]).tolist() == [0.0, 0.0]
    assert NeighbourMemory(NeighbourSettings(), experts=3).correction([1.0, 2.0]).tolist() == [0.0, 0.0, 0.0]


def test_skip_identical_leaves_out_the_same_vector() -> None:
    # slots 0 and 3 are [1, 0] itself: expert 0 keeps slot 1, -0.6 / 2; expert 1 has none left
    assert _memory(skip_identical=True).correction([2.0, 0.0]) == pytest.approx([-0.3, 0.0])


def test_the_memory_is_a_ring_and_forget_drops_an_expert() -> None:
    memory = _memory()
    memory.add([0.0, 1.0], 1, 1.0)  # the fifth residual overwrites slot 0
    # expert 0: slot 1 only, -0.6 / 2; expert 1: slot 3 (slot 4 is under the floor), 0.2 / 2
    assert memory.correction([1.0, 0.0]) == pytest.approx([-0.3, 0.1])
    memory.forget(0)
    assert memory.correction([1.0, 0.0]) == pytest.approx([0.0, 0.1])
    assert len(memory) == 2


def test_bad_vectors_and_experts_are_refused() -> None:
    memory = _memory()
    with pytest.raises(ValueError, match="not all zero"):
        memory.correction([0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        memory.add([np.nan, 1.0], 0, 0.1)
    with pytest.raises(ValueError, match="must have 2 numbers"):
        memory.correction([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="out of range"):
        memory.add([1.0, 0.0], 2, 0.1)


def _router(**knobs: object) -> OnlineRouter:
    neighbours = NeighbourSettings(k=5, memory=10, shrink=1.0, min_similarity=0.5)
    return OnlineRouter(
        np.array([[0.5, 0.6]]), [1.0, 1.0], 1.0, granularity="prompt", explore_cap=0.0, neighbours=neighbours,
        **knobs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_feedback_remembers_the_score_less_the_prompts_estimate_and_moves_a_similar_prompt() -> None:
    router = _router()
    # predicted 0.7 for expert 0 (its category's offline 0.5): the estimate was 0.5 + (0.7 - 0.5) = 0.7,
    # the score 0.9: a residual of 0.2, so a prompt at [1, 0] is corrected by 0.2 / (1 + 1) for expert 0
    router.feedback(0, 0, 0.9, predicted=0.7, vector=[1.0, 0.0])
    assert router.neighbours is not None
    assert router.neighbours.correction([1.0, 0.0]) == pytest.approx([0.1, 0.0])
    # the category's cell learnt 0.9 - 0.2 = 0.7: mean (25 + 0.7) / 51 = 0.5039; a prompt predicted
    # [0.55, 0.6] scores [0.5539, 0.6] (expert 1) alone, [0.6539, 0.6] (expert 0) near the fed-back one
    predicted = [0.55, 0.6]
    assert router.choose(0, predicted=predicted).expert == 1
    assert router.choose(0, predicted=predicted, vector=[0.0, 1.0]).expert == 1  # similarity 0: no neighbour
    assert router.choose(0, predicted=predicted, vector=[0.9, 0.1]).expert == 0


def test_feedback_without_a_vector_or_prediction_remembers_nothing() -> None:
    router = _router()
    router.feedback(0, 0, 0.9, predicted=0.7)
    router.feedback(0, 0, 0.9, vector=[1.0, 0.0])
    assert router.neighbours is not None and len(router.neighbours) == 0


def test_neighbours_need_prompt_mode() -> None:
    with pytest.raises(ValidationError, match="need granularity prompt"):
        OnlineSettings(granularity="category", neighbours=NeighbourSettings())
    with pytest.raises(ValueError, match="need granularity prompt"):
        OnlineRouter(np.array([[0.5, 0.6]]), [1.0, 1.0], 1.0, neighbours=NeighbourSettings())
    assert OnlineSettings().neighbours is None  # off by default
    assert OnlineRouter.from_settings(np.array([[0.5, 0.6]]), [1.0, 1.0], 1.0, OnlineSettings()).neighbours is None


def test_the_replay_needs_the_streams_vectors_for_neighbours() -> None:
    options = AdaptOptions(neighbours={"k": 5})
    assert options.online().neighbours == NeighbourSettings(k=5)
    with pytest.raises(ConfigError, match="prompt vectors"):
        replay_adapt(np.zeros((1, 2)), None, None, None, options, predicted=np.zeros((1, 2)))  # type: ignore[arg-type]


@pytest.mark.usefixtures("trained_dir")
def test_a_server_refuses_neighbours_it_would_not_use(tmp_path: Path, cache: Path) -> None:
    # the server does not pass prompt vectors to the online router yet: the setting is refused, not ignored
    with pytest.raises(ConfigError, match="neighbours: replay only"):
        _engine(tmp_path, cache, online={"granularity": "prompt", "neighbours": {"k": 5}})
