"""Re-planning and staging: when a placement must change, and the order that changes it safely.

* ``drift`` measures how far traffic has moved: the total variation distance between two share maps
  (half the sum of absolute differences; 0 = same mix, 1 = disjoint).
* ``why_replan`` says why the current placement no longer stands (a node joined or left or changed
  memory or speed, a footprint grew past a node's memory, an expert with traffic has no replica, or traffic
  drifted at least ``threshold``), or None; ``replan`` then solves again with every replica the
  current placement lacks costing ``move_weight`` (one cold load), so experts stay where they are
  unless moving them pays.
* ``transition`` turns an old and a new placement into two-phase steps — start the new replicas,
  wait until they are ready, then drain and stop the old ones — in an order that never exceeds a
  node's memory and never leaves an expert the new placement needs without a serving replica.

Pure functions of placements and numbers; this module knows nothing about Ray or the engine.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from coserve.distributed.cluster import Cluster, Footprint
from coserve.distributed.placement import Placement, memory_used
from coserve.distributed.planner import plan
from coserve.errors import ConfigError

__all__ = ["Step", "drift", "replan", "transition", "why_replan"]

Action = Literal["start", "ready", "drain", "stop", "pin", "unpin"]


@dataclass(frozen=True)
class Step:
    """One operation of a transition, applied in order."""

    action: Action  # start: load a replica; ready: it serves; drain: it takes no new requests and
    # finishes its own; stop: it is gone; pin / unpin: a kept replica becomes resident / swapped
    expert: str
    node: str


def drift(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Total variation distance between two traffic maps, each normalised to shares (0..1)."""
    total_before, total_after = sum(before.values()), sum(after.values())
    if total_before <= 0 or total_after <= 0:
        return 0.0 if total_before <= 0 and total_after <= 0 else 1.0
    experts = set(before) | set(after)
    return 0.5 * sum(abs(before.get(e, 0.0) / total_before - after.get(e, 0.0) / total_after) for e in experts)


def why_replan(
    current: Placement,
    cluster: Cluster,
    footprints: Mapping[str, Footprint],
    traffic: Mapping[str, float],
    threshold: float,
) -> str | None:
    """Why ``current`` must be re-planned, or None when it still stands."""
    before = {n.name: n for n in current.nodes}
    now = {n.name: n for n in cluster.nodes}
    left, joined = sorted(set(before) - set(now)), sorted(set(now) - set(before))
    if left or joined:
        changes = ([f"left: {', '.join(left)}"] if left else []) + ([f"joined: {', '.join(joined)}"] if joined else [])
        return "nodes " + "; ".join(changes)
    for name, node in now.items():
        if (node.ram, node.accelerator) != (before[name].ram, before[name].accelerator):
            return f"node {name} changed memory"
        if node.speed != before[name].speed:
            return f"node {name} changed speed"
        hosted = [(r.expert, r.resident) for r in current.on(name)]
        if any(expert not in footprints for expert, _ in hosted):
            return f"node {name} hosts an expert with no footprint now"
        ram, accelerator = memory_used(hosted, footprints)
        if ram > node.ram or accelerator > node.accelerator:
            return f"node {name} no longer holds its experts"
    placed = {r.expert for r in current.replicas}
    unplaced = sorted(e for e, t in traffic.items() if t > 0 and e not in placed)
    if unplaced:
        return f"experts with traffic and no replica: {', '.join(unplaced)}"
    moved = drift(current.traffic, traffic)
    if moved >= threshold:
        return f"traffic drifted {moved:.3f} >= {threshold:g}"
    return None


def replan(
    current: Placement,
    cluster: Cluster,
    footprints: Mapping[str, Footprint],
    traffic: Mapping[str, float],
    threshold: float,
    required: Collection[str] | None = None,
) -> Placement:
    """``current`` when it still stands, else a new plan that pays ``move_weight`` per replica started."""
    if why_replan(current, cluster, footprints, traffic, threshold) is None:
        return current
    return plan(cluster, footprints, traffic, current.required if required is None else required, current=current)


def transition(old: Placement, new: Placement) -> list[Step]:
    """Two-phase steps from ``old`` to ``new``; raises ConfigError when no safe order exists."""
    budgets = {n.name: (n.ram, n.accelerator) for n in new.nodes}
    footprints = {**old.footprints, **new.footprints}
    present = {(r.expert, r.node): r.resident for r in old.replicas if r.node in budgets}
    wanted = {(r.expert, r.node): r.resident for r in new.replicas}
    serving = set(present)
    unpinned = sorted(key for key, resident in present.items() if resident and wanted.get(key) is False)
    steps = [Step("unpin", e, n) for e, n in unpinned]
    for e, n in ((s.expert, s.node) for s in steps):
        present[(e, n)] = False  # unpinning frees memory: the expert moves into the swap room

    def fits(node: str, extra: tuple[str, bool] | None = None, drop: tuple[str, str] | None = None) -> bool:
        hosted = [(e, res) for (e, n), res in present.items() if n == node and (e, n) != drop]
        ram, accelerator = memory_used(hosted + ([extra] if extra else []), footprints)
        return ram <= budgets[node][0] and accelerator <= budgets[node][1]

    needed = {r.expert for r in new.replicas}  # every expert the new placement serves
    while present != wanted:
        before = len(steps)
        started = []
        for e, n in sorted(key for key in wanted if key not in present):
            if fits(n, (e, wanted[(e, n)])):  # counts the replicas started before it in this round
                present[(e, n)] = wanted[(e, n)]
                started.append((e, n))
                steps.append(Step("start", e, n))
        for e, n in started:  # phase 1 ends when every new replica serves
            serving.add((e, n))
            steps.append(Step("ready", e, n))
        waiting = {key for key in wanted if key not in present}
        for e, n in sorted(key for key in present if key not in wanted):
            covered = e not in needed or any(k[0] == e and k != (e, n) for k in serving)
            blocks = any(k[1] == n for k in waiting) or any(
                k[1] == n and wanted[k] and not present[k] for k in present if k in wanted
            )
            if covered and (blocks or not any(k[0] == e for k in waiting)):
                serving.discard((e, n))
                del present[(e, n)]
                steps += [Step("drain", e, n), Step("stop", e, n)]
        for (e, n), resident in sorted(present.items()):
            if wanted.get((e, n)) and not resident and fits(n, drop=(e, n), extra=(e, True)):
                present[(e, n)] = True
                steps.append(Step("pin", e, n))
        if len(steps) == before:
            changing = [key for key in set(wanted) | set(present) if wanted.get(key) != present.get(key)]
            stuck = sorted(f"{e}@{n}" for e, n in changing)
            raise ConfigError(
                "no safe two-phase order: every remaining change needs memory that only a last replica "
                f"holds ({', '.join(stuck)}); add a node or plan with a larger move_weight"
            )
    return steps
