"""The planner's compute model: each expert's seconds of work per request and each node's speed.

Every expectation below is worked out by hand in its docstring (load factor of a share f of expert e
on node n: k = (w_e / sum_e t_e w_e) (mean speed / s_n); a node's compute load sums k f)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from coserve.cli import main
from coserve.distributed.cluster import Cluster, Footprint, load_cluster
from coserve.distributed.placement import Placement, expert_costs, load_factors
from coserve.distributed.planner import plan
from coserve.errors import ConfigError
from tests.conftest import write_library

GiB = 2**30
MiB = 2**20


def nodes(*specs: tuple[str, int, float], **planner: float) -> Cluster:
    """(name, ram bytes, speed) nodes."""
    return Cluster.model_validate(
        {"nodes": [{"name": n, "ram": r, "speed": s} for n, r, s in specs], "planner": planner}
    )


def layout(placement: Placement) -> set[tuple[str, str, bool, float]]:
    return {(r.expert, r.node, r.resident, round(r.share, 6)) for r in placement.replicas}


def slow_alone(placement: Placement) -> tuple[str, str]:
    """Of nodes a and b, the one that holds ``slow`` alone, and the other."""
    alone = next(n for n in ("a", "b") if [r.expert for r in placement.on(n)] == ["slow"])
    return alone, "b" if alone == "a" else "a"


def test_a_slow_expert_is_split_where_request_shares_would_leave_it_alone() -> None:
    """slow (half the requests, 3 s each) and fast (half, 1 s); two nodes holding both resident.
    By request share, {slow} | {fast} is already even (0.5 / 0.5, two replicas). By compute the mean
    request costs 0.5*3 + 0.5*1 = 2 s, so slow alone is 0.5*3/2 = 0.75 of the compute: slow gets a
    second replica beside fast, with f of the requests alone such that 3f/2 = (3(0.5 - f) + 0.5)/2,
    f = 1/3: compute 0.5 on each node, request shares 1/3 and 2/3."""
    cluster = nodes(("a", 4 * GiB, 1.0), ("b", 4 * GiB, 1.0))
    traffic = {"slow": 0.5, "fast": 0.5}
    by_share = plan(cluster, {"slow": Footprint(GiB), "fast": Footprint(GiB)}, traffic)
    assert len(by_share.replicas) == 2 and by_share.busiest_load == pytest.approx(0.5, abs=1e-6)
    assert {tuple(r.expert for r in by_share.on(n)) for n in ("a", "b")} == {("slow",), ("fast",)}

    timed = {"slow": Footprint(GiB, 0, 3.0), "fast": Footprint(GiB, 0, 1.0)}
    placement = plan(cluster, timed, traffic)
    alone, other = slow_alone(placement)
    assert layout(placement) == {
        ("slow", alone, True, round(1 / 3, 6)),
        ("slow", other, True, round(1 / 6, 6)),
        ("fast", other, True, 0.5),
    }
    assert placement.compute_load(alone) == pytest.approx(0.5, abs=1e-6)
    assert placement.compute_load(other) == pytest.approx(0.5, abs=1e-6)
    assert (placement.load(alone), placement.load(other)) == pytest.approx((1 / 3, 2 / 3), abs=1e-6)
    assert placement.busiest_load == pytest.approx(0.5, abs=1e-6) and placement.cold_share == 0


def test_the_cold_load_weight_decides_whether_a_slow_expert_gets_swap_room() -> None:
    """The benchmark's shape: nodes of 2.5 GiB, slow (2 GiB, half the requests, 3 s) and fast1/fast2
    (1 GiB, a quarter each, 1 s). All resident only as {slow} | {fast1, fast2}: compute 0.75 / 0.25.
    The only way to 0.5: slow resident on one node and, on the other, slow, fast1 and fast2 swapped
    through 2 GiB of room, with f of the requests to slow there: (3f + 0.5)/2 = 3(0.5 - f)/2, f = 1/6;
    swapped share 1/6 + 1/2 = 2/3. Objective 0.75 against 0.5 + w * 2/3: the split wins below
    w = 0.375. At the default w = 1 it stays; at w = 0.3 it splits (0.7 < 0.75)."""
    footprints = {"slow": Footprint(2 * GiB, 0, 3.0), "fast1": Footprint(GiB, 0, 1.0), "fast2": Footprint(GiB, 0, 1.0)}
    traffic = {"slow": 0.5, "fast1": 0.25, "fast2": 0.25}
    room = int(2.5 * GiB)
    kept = plan(nodes(("a", room, 1.0), ("b", room, 1.0)), footprints, traffic)
    assert {tuple(sorted(r.expert for r in kept.on(n))) for n in ("a", "b")} == {("slow",), ("fast1", "fast2")}
    assert kept.busiest_load == pytest.approx(0.75, abs=1e-6) and kept.cold_share == 0

    split = plan(nodes(("a", room, 1.0), ("b", room, 1.0), cold_load_weight=0.3), footprints, traffic)
    alone, other = slow_alone(split)
    assert layout(split) == {
        ("slow", alone, True, round(1 / 3, 6)),
        ("slow", other, False, round(1 / 6, 6)),
        ("fast1", other, False, 0.25),
        ("fast2", other, False, 0.25),
    }
    assert split.busiest_load == pytest.approx(0.5, abs=1e-6) and split.cold_share == pytest.approx(2 / 3, abs=1e-6)


def test_a_faster_node_takes_the_busier_expert() -> None:
    """Equal costs; x has 2/3 of the requests, y 1/3; node a twice as fast as b (mean speed 1.5).
    x on a: (2/3)(1.5/2) = 0.5; y on b: (1/3)(1.5/1) = 0.5: balanced with one replica each. With equal
    speeds the same traffic needs x on both nodes (2/3 > 1/2)."""
    footprints = {"x": Footprint(GiB), "y": Footprint(GiB)}
    traffic = {"x": 2 / 3, "y": 1 / 3}
    fast = plan(nodes(("a", 4 * GiB, 2.0), ("b", 4 * GiB, 1.0)), footprints, traffic)
    assert layout(fast) == {("x", "a", True, round(2 / 3, 6)), ("y", "b", True, round(1 / 3, 6))}
    assert fast.busiest_load == pytest.approx(0.5, abs=1e-6)
    assert fast.compute_load("a") == pytest.approx(0.5, abs=1e-6)
    even = plan(nodes(("a", 4 * GiB, 1.0), ("b", 4 * GiB, 1.0)), footprints, traffic)
    assert len(even.replicas_of("x")) == 2 and even.busiest_load == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_equal_costs_and_speeds_plan_as_request_shares(seed: int) -> None:
    """Any common cost per request and any common speed give factors of exactly 1, so the program,
    and the placement, are those of the request-share planner (no costs, speed 1)."""
    rng = random.Random(seed)
    experts = [f"e{i}" for i in range(6)]
    sizes = {e: rng.randint(1, 3) * GiB // 2 for e in experts}
    traffic = {e: rng.random() for e in experts}
    memory = [rng.randint(2, 4) * GiB for _ in range(3)]
    plain = plan(
        nodes(*[(f"n{j}", m, 1.0) for j, m in enumerate(memory)]), {e: Footprint(s) for e, s in sizes.items()}, traffic
    )
    timed_cluster = nodes(*[(f"n{j}", m, 3.0) for j, m in enumerate(memory)])
    timed_footprints = {e: Footprint(s, 0, 2.5) for e, s in sizes.items()}
    assert set(load_factors(timed_cluster.nodes, timed_footprints, traffic).values()) == {1.0}
    timed = plan(timed_cluster, timed_footprints, traffic)
    assert layout(timed) == layout(plain)
    assert (timed.busiest_load, timed.cold_share) == (plain.busiest_load, plain.cold_share)
    for node in timed.nodes:
        assert timed.compute_load(node.name) == pytest.approx(timed.load(node.name), abs=1e-12)


def test_unknown_costs_count_as_the_mean_of_the_known_ones() -> None:
    """a 2 s (share .5), b 4 s (share .25), c unknown: the traffic-weighted mean (0.5*2 + 0.25*4)/0.75 = 8/3."""
    footprints = {"a": Footprint(1, 0, 2.0), "b": Footprint(1, 0, 4.0), "c": Footprint(1)}
    assert expert_costs(footprints, {"a": 0.5, "b": 0.25, "c": 0.25}) == pytest.approx({"a": 2, "b": 4, "c": 8 / 3})
    assert expert_costs({"a": Footprint(1), "b": Footprint(2)}, {"a": 1.0}) == {"a": 1.0, "b": 1.0}


def test_cluster_file_reads_speeds_and_seconds_per_request(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nodes": [{"name": "a", "ram": "2GiB", "speed": 2.5}, {"name": "b", "ram": "2GiB"}],
                "experts": {"large": {"seconds_per_request": 2.5}, "big": {"ram": "1GiB", "seconds_per_request": 4}},
            }
        )
    )
    loaded = load_cluster(path)
    assert [n.speed for n in loaded.nodes] == [2.5, 1.0]
    assert loaded.experts["large"].ram is None and loaded.experts["large"].seconds_per_request == 2.5
    assert loaded.experts["big"].footprint() == Footprint(GiB, 0, 4.0)
    for bad, where in [
        ({"nodes": [{"name": "a", "ram": 1, "speed": 0}]}, "nodes[0].speed"),
        ({"nodes": [{"name": "a", "ram": 1}], "experts": {"x": {"seconds_per_request": -1}}}, "experts.x"),
        ({"nodes": [{"name": "a", "ram": 1}], "experts": {"x": {}}}, "experts.x"),
    ]:
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=f"{path}.*{where}".replace("[", r"\[").replace("]", r"\]")):
            load_cluster(path)


def test_plan_command_takes_measured_seconds_from_the_cluster_file(tmp_path: Path) -> None:
    """The fake library (small 10, coder 20, big 30 MiB, a third each) on nodes of 30 MiB: big alone,
    coder + small together. With big measured at 0.5 s and the others estimated (128 tokens at 20
    GB/s: small 0.0671 s, coder 0.134 s), big's node spends (1/3)0.5 / ((0.5 + 0.134 + 0.0671)/3) of the compute."""
    library = write_library(tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nodes": [{"name": "a", "ram": "30MiB"}, {"name": "b", "ram": "30MiB", "speed": 1.0}],
                "experts": {"big": {"seconds_per_request": 0.5}},
            }
        )
    )
    out = tmp_path / "plan.json"
    assert main(["plan", "--cluster", str(path), "--library", str(library), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    small, coder = 128 * 10 * MiB / 20e9, 128 * 20 * MiB / 20e9
    assert report["seconds_per_request"] == pytest.approx({"big": 0.5, "coder": coder, "small": small}, abs=1e-6)
    big_node = next(n for n in report["nodes"] if [r["expert"] for r in n["experts"]] == ["big"])
    assert big_node["compute_load"] == pytest.approx(0.5 / (0.5 + coder + small), abs=1e-6)
    assert report["busiest_load"] == pytest.approx(0.5 / (0.5 + coder + small), abs=1e-6)


def test_the_cluster_benchmark_passes_its_cold_load_weight_to_the_planner(tmp_path: Path) -> None:
    """Fakes of 10, 20 and 30 MiB with equal work (same nbytes), a third of the requests each, on the
    benchmark's two nodes of 32 MiB (30 x 1.05, rounded up to a MiB). All resident only as
    {big} | {coder, small}: 2/3 of the work on one node. Balanced: big and coder swapped on one node
    (30 MiB of room), coder and small resident on the other, coder's third split 1/6 + 1/6: 1/2 on
    each node, 1/3 + 1/6 = 1/2 of the requests swapped (or the same with small in coder's place):
    0.5 + w/2 < 2/3 when w < 1/3. The default (1) keeps big alone; 0.3 does not."""
    from coserve.bench.cluster import plan_nodes
    from coserve.config import load_library

    sizes = {"small": 10, "coder": 20, "big": 30}
    library = load_library(
        write_library(tmp_path, options={e: {"footprint": m * MiB, "nbytes": MiB} for e, m in sizes.items()})
    )
    kept = plan_nodes(library, ["node-1", "node-2"], tmp_path)
    assert "planner" not in yaml.safe_load(kept["path"].read_text())
    assert sorted(sorted(row["experts"]) for row in kept["placement"].values()) == [["big"], ["coder", "small"]]
    split = plan_nodes(library, ["node-1", "node-2"], tmp_path, cold_load_weight=0.3)
    assert yaml.safe_load(split["path"].read_text())["planner"] == {"cold_load_weight": 0.3}
    assert split["budget"] == 32 * MiB
    assert all(row["experts"] != ["big"] for row in split["placement"].values())


def test_a_node_that_changes_speed_is_re_planned() -> None:
    """x (2/3) and y (1/3) planned on equal nodes: x on both. Node a becoming twice as fast is a reason
    to re-plan, and the new plan puts x alone on a and y on b (see the faster-node test)."""
    from coserve.distributed.replan import replan, why_replan

    footprints = {"x": Footprint(GiB), "y": Footprint(GiB)}
    traffic = {"x": 2 / 3, "y": 1 / 3}
    old = plan(nodes(("a", 4 * GiB, 1.0), ("b", 4 * GiB, 1.0)), footprints, traffic)
    faster = nodes(("a", 4 * GiB, 2.0), ("b", 4 * GiB, 1.0), move_weight=0.0)
    assert why_replan(old, faster, footprints, traffic, 0.1) == "node a changed speed"
    assert why_replan(old, nodes(("a", 4 * GiB, 1.0), ("b", 4 * GiB, 1.0)), footprints, traffic, 0.1) is None
    new = replan(old, faster, footprints, traffic, 0.1)
    assert layout(new) == {("x", "a", True, round(2 / 3, 6)), ("y", "b", True, round(1 / 3, 6))}
