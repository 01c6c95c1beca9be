"""The placement planner, re-planning, two-phase transitions, the cluster file and ``coserve plan``.

Expected placements are derived by hand in each test's docstring; tiny random instances are checked
against brute-force enumeration of every hosting/residency choice (with the traffic split solved as
a small LP by scipy's linprog, not by the planner's model).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import yaml

from coserve.cli import main
from coserve.distributed.cluster import Cluster, Footprint, load_cluster
from coserve.distributed.planner import MIP_GAP, Placement, Replica, memory_used, plan
from coserve.distributed.replan import Step, drift, replan, transition, why_replan
from coserve.errors import ConfigError
from tests.conftest import write_library

GiB = 2**30
MiB = 2**20


def cluster(*nodes: tuple[str, int] | tuple[str, int, int], **planner: float) -> Cluster:
    """A cluster of (name, ram bytes[, accelerator bytes]) nodes."""
    specs = [{"name": n[0], "ram": n[1], "accelerator": n[2] if len(n) > 2 else 0} for n in nodes]
    return Cluster.model_validate({"nodes": specs, "planner": planner})


def hosting(placement: Placement) -> dict[str, set[tuple[str, bool]]]:
    """node -> {(expert, resident)}."""
    return {n.name: {(r.expert, r.resident) for r in placement.on(n.name)} for n in placement.nodes}


# -- the cluster file -------------------------------------------------------------------------


def test_cluster_file_reads_sizes_labels_and_planner_weights(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "nodes:\n"
        "  - {name: gpu-1, ram: 16GiB, accelerator: 80GB, labels: {zone: eu-1}}\n"
        "  - {name: cpu-1, ram: 512MiB}\n"
        "planner: {cold_load_weight: 2, move_weight: 0.1}\n"
        "experts: {big: {ram: 1GiB, accelerator: 2GiB}}\n"
    )
    loaded = load_cluster(path)
    assert [(n.name, n.ram, n.accelerator, n.labels) for n in loaded.nodes] == [
        ("gpu-1", 16 * GiB, 80 * 10**9, {"zone": "eu-1"}),
        ("cpu-1", 512 * MiB, 0, {}),
    ]
    weights = loaded.planner
    assert (weights.cold_load_weight, weights.move_weight, weights.drift_threshold) == (2, 0.1, 0.1)
    assert loaded.experts["big"].footprint() == Footprint(GiB, 2 * GiB)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes:\n  - {name: a, rma: 1GiB}\n", "nodes[0].rma: unknown key"),
        ("nodes:\n  - {name: a, ram: -5}\n", "nodes[0].ram: Value error, a size cannot be negative"),
        ("nodes:\n  - {name: a, ram: 2 lots}\n", "nodes[0].ram"),
        ("nodes: []\n", "nodes: a cluster needs at least one node"),
        ("nodes:\n  - {name: a, ram: 1GiB}\n  - {name: a, ram: 2GiB}\n", "nodes[1].name: duplicate node name 'a'"),
        ("nodes:\n  - {name: a, ram: 1GiB}\nplanner: {move_weight: -1}\n", "planner.move_weight"),
        ("nodez: []\n", "nodez: unknown key"),
        ("- a\n", "must be a mapping with nodes"),
    ],
)
def test_cluster_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    assert str(path) in caught.value.message
    assert message.replace("Value error, ", "") in caught.value.message


RULE = "use 1 to 64 ASCII letters, digits, '_', '.', ':' or '-', the first a letter or digit"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Session 12's walk: the error quoted the regex, "String should match pattern '^[A-Za-z0-9]...$'".
        ("nodes:\n  - {name: 'node a', ram: 1GiB}\n", f"nodes[0].name: 'node a' is not a valid node name: {RULE}"),
        ("nodes:\n  - {name: '-a', ram: 1GiB}\n", f"nodes[0].name: '-a' is not a valid node name: {RULE}"),
        (
            "nodes:\n  - {name: a, ram: 1GiB}\nexperts:\n  'x y': {ram: 1GiB}\n",
            f"experts.x y: 'x y' is not a valid expert name: {RULE}",
        ),
    ],
)
def test_a_bad_name_is_refused_with_the_rule_in_words(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    assert caught.value.message == f"{path}: {message}"


def test_missing_cluster_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cluster file not found"):
        load_cluster(tmp_path / "nope.yaml")


# -- hand-derived optima ------------------------------------------------------------------------


def test_two_nodes_three_experts_balance_without_cold_loads() -> None:
    """Nodes of 2 GiB, experts of 1 GiB with shares .5/.3/.2. Two experts fit a node resident; the
    total is 1 over 2 nodes, so the busiest node carries >= .5: {x} alone and {y, z} together reach
    it (x with y or z would carry .8 or .7) with three replicas and no cold load."""
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB), "z": Footprint(GiB)}
    placement = plan(cluster(("a", 2 * GiB), ("b", 2 * GiB)), footprints, {"x": 5, "y": 3, "z": 2})
    assert sorted(sorted(hosted) for hosted in hosting(placement).values()) == [
        [("x", True)],
        [("y", True), ("z", True)],
    ]
    assert placement.busiest_load == pytest.approx(0.5)
    assert placement.cold_share == 0
    assert placement.traffic == {"x": 0.5, "y": 0.3, "z": 0.2}


def test_a_hot_expert_is_replicated_on_every_node_that_holds_it() -> None:
    """One expert with all the traffic and three nodes it fits: one replica each cuts the busiest
    node's share from 1 to 1/3 (a fourth node too small for it gets none)."""
    footprints = {"x": Footprint(GiB)}
    nodes = cluster(("a", GiB), ("b", GiB), ("c", 2 * GiB), ("tiny", GiB // 2))
    placement = plan(nodes, footprints, {"x": 1.0})
    assert [(r.node, r.resident) for r in placement.replicas] == [("a", True), ("b", True), ("c", True)]
    assert [r.share for r in placement.replicas] == pytest.approx([1 / 3] * 3)
    assert placement.busiest_load == pytest.approx(1 / 3)


def test_everywhere_puts_every_expert_resident_on_every_node_split_by_speed() -> None:
    """planner.everywhere, nodes of speed 1 and 3, experts of 1 and 2 GiB with shares .25/.75: all
    resident on both (3 GiB each), each node serving its speed's part (1/4, 3/4) of every expert, so
    both carry the same compute load: a's .25 of the requests at twice the mean time = .5. A node
    without room for all of them is a ConfigError naming it."""
    footprints = {"x": Footprint(GiB), "y": Footprint(2 * GiB)}
    nodes = Cluster.model_validate(
        {"nodes": [{"name": "a", "ram": 3 * GiB}, {"name": "b", "ram": 4 * GiB, "speed": 3}],
         "planner": {"everywhere": True}}
    )  # fmt: skip
    placement = plan(nodes, footprints, {"x": 1, "y": 3})
    assert hosting(placement) == {"a": {("x", True), ("y", True)}, "b": {("x", True), ("y", True)}}
    shares = {(r.expert, r.node): r.share for r in placement.replicas}
    assert shares == pytest.approx({("x", "a"): 1 / 16, ("y", "a"): 3 / 16, ("x", "b"): 3 / 16, ("y", "b"): 9 / 16})
    assert placement.busiest_load == pytest.approx(0.5) and placement.cold_share == 0
    assert placement.used("a") == (3 * GiB, 0)
    short = nodes.model_copy(update={"nodes": (nodes.nodes[0].model_copy(update={"ram": 3 * GiB - 1}),)})
    with pytest.raises(ConfigError, match="node 'a' cannot hold every expert resident"):
        plan(short, footprints, {"x": 1, "y": 3})


def test_short_memory_swaps_the_colder_experts_through_one_node() -> None:
    """Nodes of 1 GiB hold one 1 GiB expert each (resident, or as swap room shared by several).
    Three experts on two nodes: one node swaps two of them. Swapping y, z (cold .5, busiest .5)
    beats swapping x with either (cold >= .7): objective 1.0."""
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB), "z": Footprint(GiB)}
    placement = plan(cluster(("a", GiB), ("b", GiB)), footprints, {"x": 0.5, "y": 0.3, "z": 0.2})
    assert sorted(sorted(hosted) for hosted in hosting(placement).values()) == [
        [("x", True)],
        [("y", False), ("z", False)],
    ]
    assert placement.cold_share == pytest.approx(0.5)
    assert placement.busiest_load == pytest.approx(0.5)
    for node in placement.nodes:
        assert placement.used(node.name) == (GiB, 0)


def test_accelerator_memory_decides_where_a_gpu_expert_goes() -> None:
    """``big`` needs 6 GiB of accelerator memory: only ``gpu`` has it. ``small`` goes to ``cpu``
    so each node carries half the traffic."""
    footprints = {"big": Footprint(GiB, 6 * GiB), "small": Footprint(2 * GiB)}
    nodes = cluster(("gpu", 4 * GiB, 8 * GiB), ("cpu", 16 * GiB))
    placement = plan(nodes, footprints, {"big": 1, "small": 1})
    assert hosting(placement) == {"gpu": {("big", True)}, "cpu": {("small", True)}}
    assert placement.used("gpu") == (GiB, 6 * GiB)


def test_required_experts_get_a_replica_even_without_traffic() -> None:
    """``fallback`` has no mapped traffic but is required; ``unused`` is neither and is not placed."""
    footprints = {"x": Footprint(GiB), "fallback": Footprint(GiB), "unused": Footprint(GiB)}
    placement = plan(cluster(("a", 3 * GiB)), footprints, {"x": 1.0, "fallback": 0.0}, required=["fallback"])
    assert hosting(placement) == {"a": {("x", True), ("fallback", True)}}
    assert placement.replicas_of("fallback")[0].share == 0


# -- random instances against brute force ------------------------------------------------------


def brute_force(nodes: Cluster, footprints: dict[str, Footprint], traffic: dict[str, float], weight: float) -> float:
    """min over every hosting/residency choice of busiest load + weight * cold share."""
    from scipy.optimize import linprog

    experts = sorted(footprints)
    total = sum(traffic.values())
    shares = {e: traffic[e] / total for e in experts}
    pairs = [(e, n) for e in experts for n in nodes.nodes]
    best = float("inf")
    for states in itertools.product((0, 1, 2), repeat=len(pairs)):  # 0 absent, 1 swapped, 2 resident
        hosted = [(e, n, s == 2) for (e, n), s in zip(pairs, states, strict=True) if s]
        if {e for e, _, _ in hosted} != set(experts):
            continue
        if any(
            memory_used([(e, r) for e, m, r in hosted if m.name == n.name], footprints) > (n.ram, n.accelerator)
            or memory_used([(e, r) for e, m, r in hosted if m.name == n.name], footprints)[1] > n.accelerator
            for n in nodes.nodes
        ):
            continue
        # variables: f per hosted replica, then L; minimise L + weight * sum of swapped f
        cost = [0.0 if r else weight for _, _, r in hosted] + [1.0]
        equal = [[1.0 if e == x else 0.0 for x, _, _ in hosted] + [0.0] for e in experts]
        upper = [[1.0 if m.name == n.name else 0.0 for _, m, _ in hosted] + [-1.0] for n in nodes.nodes]
        result = linprog(cost, A_ub=upper, b_ub=[0.0] * len(upper), A_eq=equal, b_eq=[shares[e] for e in experts])
        best = min(best, float(result.fun))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_random_small_instances_are_optimal_and_within_memory(seed: int) -> None:
    rng = random.Random(seed)
    nodes = cluster(*[(f"n{j}", rng.choice([1, 2, 3]) * GiB) for j in range(2)])
    footprints = {f"e{i}": Footprint(rng.choice([GiB // 2, GiB, 3 * GiB // 2])) for i in range(3)}
    traffic = {e: float(rng.randint(1, 9)) for e in footprints}
    placement = plan(nodes, footprints, traffic)
    for node in nodes.nodes:
        ram, accelerator = memory_used([(r.expert, r.resident) for r in placement.on(node.name)], footprints)
        assert ram <= node.ram and accelerator <= node.accelerator
    assert {r.expert for r in placement.replicas} == set(footprints)
    for expert, share in placement.traffic.items():
        assert sum(r.share for r in placement.replicas_of(expert)) == pytest.approx(share, abs=1e-7)
    weight = nodes.planner.cold_load_weight
    achieved = placement.busiest_load + weight * placement.cold_share
    best = brute_force(nodes, footprints, traffic, weight)
    assert best - 1e-7 <= achieved <= best * (1 + 2 * MIP_GAP) + 1e-7  # HiGHS stops within its gap


@pytest.mark.parametrize("seed", range(5))
def test_random_larger_instances_never_exceed_memory(seed: int) -> None:
    rng = random.Random(100 + seed)
    nodes = cluster(*[(f"n{j}", rng.randint(2, 8) * GiB, rng.choice([0, 4 * GiB])) for j in range(5)])
    footprints = {f"e{i}": Footprint(rng.randint(1, 4) * GiB // 2, rng.choice([0, 0, GiB, 3 * GiB])) for i in range(12)}
    traffic = {e: rng.random() for e in footprints}
    placement = plan(nodes, footprints, traffic)
    for node in nodes.nodes:
        ram, accelerator = placement.used(node.name)
        assert ram <= node.ram and accelerator <= node.accelerator
    assert {r.expert for r in placement.replicas} == set(footprints)


# -- bad input ------------------------------------------------------------------------------------


def test_an_expert_that_fits_no_node_is_named() -> None:
    with pytest.raises(ConfigError, match=r"expert 'huge' needs 3.00 GiB of host memory .*\(largest: 2.00 GiB host"):
        plan(cluster(("a", 2 * GiB)), {"huge": Footprint(3 * GiB)}, {"huge": 1.0})
    with pytest.raises(ConfigError, match="expert 'gpu-only' needs"):
        plan(cluster(("a", 2 * GiB)), {"gpu-only": Footprint(GiB, GiB)}, {}, required=["gpu-only"])


def test_bad_numbers_are_config_errors() -> None:
    nodes = cluster(("a", 2 * GiB))
    with pytest.raises(ConfigError, match="footprint cannot be negative"):
        plan(nodes, {"x": Footprint(-1)}, {"x": 1.0})
    with pytest.raises(ConfigError, match=r"traffic\.x: must be a finite number >= 0"):
        plan(nodes, {"x": Footprint(GiB)}, {"x": -0.5})
    with pytest.raises(ConfigError, match=r"traffic\.y: no footprint"):
        plan(nodes, {"x": Footprint(GiB)}, {"y": 1.0})
    with pytest.raises(ConfigError, match="expert 'z': no footprint"):
        plan(nodes, {"x": Footprint(GiB)}, {"x": 1.0}, required=["z"])
    with pytest.raises(ConfigError, match="no nodes"):
        plan(Cluster.model_construct(nodes=(), planner=nodes.planner, experts={}), {"x": Footprint(GiB)}, {"x": 1})


# -- re-planning --------------------------------------------------------------------------------


def test_drift_is_the_total_variation_distance() -> None:
    assert drift({"a": 0.5, "b": 0.5}, {"a": 0.6, "b": 0.4}) == pytest.approx(0.1)
    assert drift({"a": 5, "b": 5}, {"a": 6, "b": 4}) == pytest.approx(0.1)  # counts are normalised
    assert drift({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    assert drift({"a": 1.0}, {"a": 1.0, "b": 0.0}) == 0.0
    assert drift({}, {}) == 0.0


def test_no_replan_below_the_threshold() -> None:
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB), "z": Footprint(GiB)}
    nodes = cluster(("a", 2 * GiB), ("b", 2 * GiB))
    current = plan(nodes, footprints, {"x": 0.5, "y": 0.3, "z": 0.2})
    nearby = {"x": 0.45, "y": 0.35, "z": 0.2}  # drift 0.05
    assert why_replan(current, nodes, footprints, nearby, 0.1) is None
    assert replan(current, nodes, footprints, nearby, 0.1) is current
    far = {"x": 0.2, "y": 0.3, "z": 0.5}  # drift 0.3
    assert why_replan(current, nodes, footprints, far, 0.1) == "traffic drifted 0.300 >= 0.1"
    moved = replan(current, nodes, footprints, far, 0.1)
    assert moved.traffic == {"x": 0.2, "y": 0.3, "z": 0.5}
    assert moved.busiest_load == pytest.approx(0.5)


def test_losing_a_node_moves_only_its_experts() -> None:
    """Three 1 GiB experts of equal traffic on three 2 GiB nodes: one each (busiest 1/3). When one
    node leaves, its expert r must move. Hosting r on both survivors (busiest 1/2, two starts: 0.1)
    beats one of them (busiest 2/3, one start: 0.05); p and q stay where they were."""
    footprints = {"p": Footprint(GiB), "q": Footprint(GiB), "r": Footprint(GiB)}
    nodes = cluster(("a", 2 * GiB), ("b", 2 * GiB), ("c", 2 * GiB))
    traffic = {"p": 1.0, "q": 1.0, "r": 1.0}
    first = plan(nodes, footprints, traffic)
    home = {r.expert: r.node for r in first.replicas}
    assert sorted(home.values()) == ["a", "b", "c"] and len(first.replicas) == 3
    gone = home["r"]
    survivors = cluster(*[(n, 2 * GiB) for n in ("a", "b", "c") if n != gone])
    assert why_replan(first, survivors, footprints, traffic, 0.1) == f"nodes left: {gone}"
    second = replan(first, survivors, footprints, traffic, 0.1)
    assert [r.node for r in second.replicas_of("p")] == [home["p"]]
    assert [r.node for r in second.replicas_of("q")] == [home["q"]]
    assert sorted(r.node for r in second.replicas_of("r")) == sorted([home["p"], home["q"]])
    assert [r.share for r in second.replicas_of("r")] == pytest.approx([1 / 6, 1 / 6])
    assert second.moves == 2 and second.busiest_load == pytest.approx(0.5)


def test_a_joining_node_is_a_reason_and_a_shrunk_node_too() -> None:
    footprints = {"x": Footprint(GiB)}
    nodes = cluster(("a", 2 * GiB))
    current = plan(nodes, footprints, {"x": 1.0})
    assert why_replan(current, cluster(("a", 2 * GiB), ("b", GiB)), footprints, {"x": 1.0}, 0.1) == "nodes joined: b"
    assert why_replan(current, cluster(("a", GiB)), footprints, {"x": 1.0}, 0.1) == "node a changed memory"
    grown = {"x": Footprint(3 * GiB)}
    assert why_replan(current, nodes, grown, {"x": 1.0}, 0.1) == "node a no longer holds its experts"
    newcomer = {"x": Footprint(GiB), "y": Footprint(GiB)}
    assert why_replan(current, nodes, newcomer, {"x": 1.0, "y": 0.01}, 0.1) == "experts with traffic and no replica: y"


# -- two-phase transitions ----------------------------------------------------------------------


def placement(nodes: Cluster, footprints: dict[str, Footprint], *replicas: tuple[str, str, bool]) -> Placement:
    """A hand-made placement of (expert, node, resident) replicas."""
    return Placement(
        replicas=tuple(Replica(e, n, res, 0.0) for e, n, res in replicas),
        nodes=nodes.nodes,
        footprints=footprints,
        traffic={},
        required=frozenset(e for e, _, _ in replicas),
        busiest_load=0.0,
        cold_share=0.0,
    )


def check_steps(old: Placement, new: Placement, steps: list[Step]) -> None:
    """Replay ``steps``: memory within budget and a serving replica for every expert that had one
    and is still needed, at every step; the end state is ``new``."""
    budgets = {n.name: (n.ram, n.accelerator) for n in new.nodes}
    footprints = {**old.footprints, **new.footprints}
    present = {(r.expert, r.node): r.resident for r in old.replicas if r.node in budgets}
    serving = set(present)
    guarded = {e for e, _ in serving} & {r.expert for r in new.replicas}
    for step in steps:
        key = (step.expert, step.node)
        if step.action == "start":
            assert key not in present
            present[key] = next(r.resident for r in new.replicas if (r.expert, r.node) == key)
        elif step.action == "ready":
            serving.add(key)
        elif step.action == "drain":
            serving.discard(key)
        elif step.action == "stop":
            assert key not in serving
            del present[key]
        else:
            present[key] = step.action == "pin"
        for node, budget in budgets.items():
            used = memory_used([(e, res) for (e, n), res in present.items() if n == node], footprints)
            assert used[0] <= budget[0] and used[1] <= budget[1], f"{node} over budget after {step}"
        for expert in guarded:
            assert any(e == expert for e, _ in serving), f"{expert} not served after {step}"
    assert present == {(r.expert, r.node): r.resident for r in new.replicas}


def test_swapping_two_experts_between_nodes_goes_through_the_larger_one() -> None:
    """a (2 GiB) holds x, b (1 GiB) holds y; the new plan swaps them. y starts on a first (room for
    both), serves, then y leaves b; only then does b have room for x, and x leaves a last."""
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB)}
    nodes = cluster(("a", 2 * GiB), ("b", GiB))
    old = placement(nodes, footprints, ("x", "a", True), ("y", "b", True))
    new = placement(nodes, footprints, ("y", "a", True), ("x", "b", True))
    steps = transition(old, new)
    assert steps == [
        Step("start", "y", "a"),
        Step("ready", "y", "a"),
        Step("drain", "y", "b"),
        Step("stop", "y", "b"),
        Step("start", "x", "b"),
        Step("ready", "x", "b"),
        Step("drain", "x", "a"),
        Step("stop", "x", "a"),
    ]
    check_steps(old, new, steps)


def test_a_swap_with_no_spare_memory_is_refused() -> None:
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB)}
    nodes = cluster(("a", GiB), ("b", GiB))
    old = placement(nodes, footprints, ("x", "a", True), ("y", "b", True))
    new = placement(nodes, footprints, ("y", "a", True), ("x", "b", True))
    with pytest.raises(ConfigError, match=r"no safe two-phase order.*x@a, x@b, y@a, y@b"):
        transition(old, new)


def test_unpin_comes_first_and_pin_after_the_room_is_freed() -> None:
    """On a (2 GiB): x resident and y arrives; then y is pinned only once z has left."""
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB), "z": Footprint(GiB)}
    nodes = cluster(("a", 2 * GiB), ("b", 2 * GiB))
    old = placement(nodes, footprints, ("x", "a", True), ("z", "a", True), ("z", "b", True))
    new = placement(nodes, footprints, ("x", "a", False), ("y", "a", False), ("z", "b", True))
    steps = transition(old, new)
    assert steps[0] == Step("unpin", "x", "a")
    check_steps(old, new, steps)


@pytest.mark.parametrize("seed", range(6))
def test_transitions_between_planned_placements_keep_every_expert_served(seed: int) -> None:
    rng = random.Random(200 + seed)
    footprints = {f"e{i}": Footprint(rng.randint(1, 3) * GiB // 2) for i in range(5)}
    names = ["a", "b", "c", "d"]
    nodes = cluster(*[(n, rng.randint(2, 4) * GiB) for n in names])
    old = plan(nodes, footprints, {e: rng.random() for e in footprints})
    if seed % 2:  # a node leaves
        nodes = cluster(*[(n.name, n.ram) for n in nodes.nodes[1:]])
    new = plan(nodes, footprints, {e: rng.random() for e in footprints}, current=old)
    check_steps(old, new, transition(old, new))


# -- coserve plan ---------------------------------------------------------------------------------


def test_plan_command_on_the_fake_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """small 10, coder 20, big 30 MiB, each a third of the traffic (equal priors), big the fallback.
    Nodes of 30 MiB: big fills one; small + coder fill the other (nothing swapped). Work per request is
    estimated from the weights (10:20:30 MiB, so 1:2:3; mean 2): big's node spends (1/3)(3)/2 = 1/2 of
    the compute, the other (1/3)(1 + 2)/2 = 1/2, though it serves 2/3 of the requests."""
    library = write_library(tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"nodes": [{"name": "a", "ram": "30MiB"}, {"name": "b", "ram": "30MiB"}]}))
    out = tmp_path / "plan.json"
    assert main(["plan", "--cluster", str(path), "--library", str(library), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    nodes = {tuple(sorted(r["expert"] for r in n["experts"])): n for n in report["nodes"]}
    assert set(nodes) == {("big",), ("coder", "small")}
    assert nodes[("big",)]["ram_bytes"] == 30 * MiB and nodes[("coder", "small")]["ram_bytes"] == 30 * MiB
    assert nodes[("coder", "small")]["load"] == pytest.approx(2 / 3, abs=1e-6)
    assert nodes[("coder", "small")]["compute_load"] == pytest.approx(1 / 2, abs=1e-6)
    assert nodes[("big",)]["compute_load"] == pytest.approx(1 / 2, abs=1e-6)
    assert report["busiest_load"] == pytest.approx(1 / 2, abs=1e-6) and report["cold_share"] == 0
    assert report["busiest_share"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["traffic"] == pytest.approx({"big": 1 / 3, "coder": 1 / 3, "small": 1 / 3}, abs=1e-6)
    costs = report["seconds_per_request"]  # 128 tokens, each reading the weights at 20 GB/s
    assert costs == pytest.approx(
        {e: 128 * m * MiB / 20e9 for e, m in [("big", 30), ("coder", 20), ("small", 10)]}, abs=1e-6
    )
    printed = capsys.readouterr().out
    assert "0.03/0.03 GiB" in printed and "busiest node: 50.0% of the compute (66.7% of requests" in printed


def test_plan_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    library = write_library(tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text("nodes:\n  - {name: a, ram: 20MiB}\n")
    assert main(["plan", "--cluster", str(path), "--library", str(library)]) == 2
    # Session 12's walk: it read "needs 0.03 GiB ... (largest: 0.02 GiB host, 0.00 GiB accelerator)".
    assert capsys.readouterr().err == (
        "coserve: error: expert 'big' needs 30.0 MiB of host memory and 0.0 MiB of accelerator memory; "
        "no node has that much (largest: 20.0 MiB host, 0.0 MiB accelerator)\n"
    )


def test_plan_command_refuses_a_cluster_file_naming_an_expert_the_library_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Session 12's walk: ``experts: {bgi: ...}`` (a typo of big) was ignored and big's measure used."""
    library = write_library(tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text("nodes:\n  - {name: a, ram: 1GiB}\nexperts: {bgi: {ram: 900MiB}}\n")
    assert main(["plan", "--cluster", str(path), "--library", str(library)]) == 2
    assert capsys.readouterr().err == (
        "coserve: error: cluster file experts.bgi: the library has no expert of that name "
        "(its experts: small, coder, big)\n"
    )


def test_plan_command_takes_footprints_from_the_cluster_file(tmp_path: Path) -> None:
    library = write_library(tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text("nodes:\n  - {name: a, ram: 1GiB}\nexperts: {big: {ram: 900MiB}}\n")
    out = tmp_path / "plan.json"
    assert main(["plan", "--cluster", str(path), "--library", str(library), "--json", str(out)]) == 0
    (node,) = json.loads(out.read_text())["nodes"]
    # 900 MiB big and 20 MiB coder resident; small (10 MiB) also fits: 930 MiB of 1 GiB
    assert [(r["expert"], r["resident"]) for r in node["experts"]] == [("big", True), ("coder", True), ("small", True)]
    assert node["ram_bytes"] == 930 * MiB


def test_plan_command_with_the_default_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Footprints of the default experts (general 0.48, coder 0.75, large 1.61 GiB) from their files;
    traffic large .55 (code, knowledge, writing), general .35 (chat), coder .10 (math). On two
    2 GiB nodes large fills one; general + coder share the other: 55% of requests, nothing swapped."""
    from coserve.assets import is_assembled
    from coserve.backends.registry import get_backend
    from coserve.config import load_library

    monkeypatch.setenv("COSERVE_CACHE", str(Path.home() / ".cache" / "coserve"))  # only read
    library = load_library()
    base = library.path.parent if library.path else None
    if not all(is_assembled(spec, base) for spec in library.experts):
        pytest.skip("the default experts are not assembled here (scripts/setup)")
    sizes = {s.name: get_backend(s.backend).footprint(s, base) for s in library.experts}
    path = Path(__file__).parent.parent / "docs" / "cluster-example.yaml"  # two nodes of 2 GiB
    out = tmp_path / "plan.json"
    assert main(["plan", "--cluster", str(path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["provenance"]["command"] == f"coserve plan --cluster {path} --json {out}"
    nodes = {tuple(sorted(r["expert"] for r in n["experts"])): n for n in report["nodes"]}
    assert set(nodes) == {("large",), ("coder", "general")}
    assert nodes[("coder", "general")]["ram_bytes"] == sizes["coder"] + sizes["general"]
    assert report["traffic"] == pytest.approx({"large": 0.55, "general": 0.35, "coder": 0.10}, abs=1e-6)
    # Work per request estimated from the weights (Backend.nbytes): large's node spends its traffic
    # times its weights over the traffic-weighted mean, though it serves 55% of the requests.
    weights = {s.name: get_backend(s.backend).nbytes(s, base) for s in library.experts}
    mean = 0.55 * weights["large"] + 0.35 * weights["general"] + 0.10 * weights["coder"]
    assert report["busiest_load"] == pytest.approx(0.55 * weights["large"] / mean, abs=1e-6)
    assert report["busiest_share"] == pytest.approx(0.55, abs=1e-6) and report["cold_share"] == 0


# -- large programs: the greedy start and candidate nodes -------------------------------------------


def test_greedy_spreads_hot_experts_and_fills_the_least_loaded_node() -> None:
    """Two nodes: x (.5) wants ceil(.5 * 2) = 1 replica and takes a (tie on load, by name); y (.3)
    takes b (load 0); z (.2) takes b (.3 < .5). A hot expert of share .8 would get 2 replicas."""
    from coserve.distributed.candidates import candidate_pairs, greedy

    nodes = list(cluster(("a", 2 * GiB), ("b", 2 * GiB)).nodes)
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB), "z": Footprint(GiB)}
    start = greedy(nodes, footprints, {"x": 0.5, "y": 0.3, "z": 0.2}, ["x", "y", "z"])
    assert start == [("x", "a", True, 0.5), ("y", "b", True, 0.3), ("z", "b", True, 0.2)]
    hot = greedy(nodes, footprints, {"x": 0.8, "y": 0.2}, ["x", "y"])
    assert hot == [("x", "a", True, 0.4), ("x", "b", True, 0.4), ("y", "a", True, 0.2)]
    assert greedy(nodes, {"x": Footprint(3 * GiB)}, {"x": 1.0}, ["x"]) is None
    pairs = candidate_pairs(nodes, footprints, ["x", "y", "z"], start or [], set())
    assert pairs == {(e, n) for e in "xyz" for n in "ab"}  # 3 extra nodes: every node here


def test_a_program_above_the_exact_size_stays_within_memory_and_near_the_even_split() -> None:
    """60 experts on 20 nodes (1,200 pairs, above EXACT_PAIRS): candidate nodes only. The result
    must fit, place every expert and carry the busiest node no higher than greedy would."""
    from coserve.distributed.candidates import EXACT_PAIRS, greedy

    rng = random.Random(7)
    nodes = cluster(*[(f"n{j}", 8 * GiB) for j in range(20)], time_limit_s=5)
    footprints = {f"e{i}": Footprint(rng.randint(1, 6) * GiB // 2) for i in range(60)}
    traffic = {e: 1.0 / (k + 1) for k, e in enumerate(footprints)}
    assert len(footprints) * len(nodes.nodes) > EXACT_PAIRS
    placement = plan(nodes, footprints, traffic)
    for node in nodes.nodes:
        assert placement.used(node.name)[0] <= node.ram
    assert {r.expert for r in placement.replicas} == set(footprints)
    total = sum(traffic.values())
    start = greedy(list(nodes.nodes), footprints, {e: t / total for e, t in traffic.items()}, sorted(footprints))
    assert start is not None
    greedy_busiest = max(sum(s for _, n, _, s in start if n == node.name) for node in nodes.nodes)
    greedy_cold = sum(s for _, _, resident, s in start if not resident)
    assert 1 / 20 - 1e-9 <= placement.busiest_load + placement.cold_share <= greedy_busiest + greedy_cold + 1e-9


def test_two_new_replicas_on_one_node_start_only_as_far_as_memory_allows() -> None:
    """b (2 GiB) is to host x and y (1 GiB each) and already holds z; x fits next to z, y only once
    z (also on a) has left b."""
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB), "z": Footprint(GiB)}
    nodes = cluster(("a", 3 * GiB), ("b", 2 * GiB))
    old = placement(nodes, footprints, ("x", "a", True), ("y", "a", True), ("z", "a", True), ("z", "b", True))
    new = placement(nodes, footprints, ("x", "a", True), ("z", "a", True), ("x", "b", True), ("y", "b", True))
    steps = transition(old, new)
    assert steps == [
        Step("start", "x", "b"),
        Step("ready", "x", "b"),
        Step("drain", "z", "b"),
        Step("stop", "z", "b"),
        Step("start", "y", "b"),
        Step("ready", "y", "b"),
        Step("drain", "y", "a"),
        Step("stop", "y", "a"),
    ]
    check_steps(old, new, steps)
