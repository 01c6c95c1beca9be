"""The placement controller's state as bytes, so that a restarted controller resumes where it was.

What is kept (``snapshot``): the placement in force (replicas, the nodes and footprints it was planned
over, its traffic and figures), the version the ingresses follow, the nodes alive, the live requests
per expert since the last plan, the experts left unplaced, the reason, error and time of the last
change, and the move being staged when there is one (its reason and target, for the record). The
bytes are JSON with a format number and a fingerprint of the start-time inputs (cluster file,
footprints, start-time plan): state saved by an application deployed from other inputs is not
resumed (only its version is continued, so the ingresses never see a step back).

``restore`` puts saved state into a fresh controller. A move that was being staged when the
controller stopped is not resumed step by step: the controller's first tick sets every host to the
placement in force (as it does after any restart) and the next re-plan decides again from the kept
live counts. Unreadable or inconsistent state raises ``StateError``; the caller starts from the
start-time plan and warns (``ray_placement.PlacementService``).

This module knows nothing about Ray or where the bytes are kept.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from coserve.distributed.cluster import Cluster, Footprint, NodeSpec
from coserve.distributed.controller import PlacementController
from coserve.distributed.placement import Placement, Replica

__all__ = ["FORMAT", "SavedState", "StateError", "fingerprint", "read_state", "restore", "snapshot"]

FORMAT = 1  # bump when the layout changes: older state is then not resumed (its version is continued)


class StateError(ValueError):
    """Saved controller state that cannot be read or does not fit this application."""


@dataclass(frozen=True)
class SavedState:
    """What ``read_state`` gives back: the raw fields, checked for shape."""

    fingerprint: str
    version: int
    data: dict[str, Any]


def fingerprint(cluster: Cluster, footprints: Mapping[str, Footprint], placement: Placement) -> str:
    """A digest of the start-time inputs: equal for a restarted replica of the same application."""
    inputs = {
        "cluster": cluster.model_dump(mode="json"),
        "footprints": {e: asdict(f) for e, f in sorted(footprints.items())},
        "placement": _placement_data(placement),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def snapshot(controller: PlacementController, inputs: str) -> bytes:
    """The controller's state as bytes (``inputs``: its application's ``fingerprint``)."""
    pending = controller.pending
    state = {
        "format": FORMAT,
        "fingerprint": inputs,
        "version": controller.version,
        "placement": _placement_data(controller.placement),
        "alive": sorted(controller.alive),
        "counts": dict(sorted(controller.counts.items())),
        "unplaced": list(controller.unplaced),
        "reason": controller.reason,
        "error": controller.error,
        "changed_at": controller.changed_at,
        "window_start": controller.window_start,
        "pending": None if pending is None else {"reason": pending[0], "target": _placement_data(pending[1])},
    }
    return json.dumps(state, sort_keys=True).encode()


def read_state(raw: bytes) -> SavedState:
    """Parse saved bytes; StateError when they are not this format's JSON object."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateError("not a JSON object")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError(f"bad version {version!r}")
    if data.get("format") != FORMAT:
        raise StateError(f"format {data.get('format')!r}, expected {FORMAT}")
    return SavedState(fingerprint=str(data.get("fingerprint")), version=version, data=data)


def restore(controller: PlacementController, saved: SavedState) -> None:
    """Put ``saved`` into a controller built from the same inputs; StateError when it does not fit
    (the controller is left as it was)."""
    data = saved.data
    try:
        placement = _placement(data["placement"])
        alive = {str(n) for n in data["alive"]}
        counts = Counter({str(e): int(n) for e, n in data["counts"].items()})
        unplaced = [str(e) for e in data["unplaced"]]
        reason = None if data["reason"] is None else str(data["reason"])
        error = None if data["error"] is None else str(data["error"])
        changed_at = None if data["changed_at"] is None else float(data["changed_at"])
        window_start = float(data.get("window_start") or changed_at or controller.window_start)
        pending = data["pending"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"malformed state: {exc!r}") from None
    nodes = {n.name for n in controller.cluster.nodes}
    strays = {r.node for r in placement.replicas} - nodes | alive - nodes
    strays |= {r.expert for r in placement.replicas} - set(controller.footprints)
    if strays:
        raise StateError(f"names this application does not have: {sorted(strays)}")
    controller.placement = placement
    controller.alive = alive
    controller.counts = Counter({e: n for e, n in counts.items() if e in controller.footprints and n > 0})
    controller.unplaced = unplaced
    controller.error, controller.changed_at, controller.reason = error, changed_at, reason
    controller.window_start = window_start
    if isinstance(pending, dict):  # interrupted: the hosts are set back to the placement in force
        interrupted = pending.get("reason")
        controller.reason = f"controller restarted during a move ({interrupted}); hosts set back to the placement"
    for node in controller.advertised:  # what the placement in force serves on the nodes alive
        controller.advertised[node] = {r.expert for r in placement.on(node)} if node in alive else set()
    controller.version = saved.version + 1  # a fresh version: the ingresses take this view whatever they had


def _placement_data(placement: Placement) -> dict[str, Any]:
    return {
        "replicas": [[r.expert, r.node, r.resident, r.share] for r in placement.replicas],
        "nodes": [n.model_dump(mode="json") for n in placement.nodes],
        "footprints": {e: asdict(f) for e, f in sorted(placement.footprints.items())},
        "traffic": dict(sorted(placement.traffic.items())),
        "required": sorted(placement.required),
        "busiest_load": placement.busiest_load,
        "cold_share": placement.cold_share,
        "moves": placement.moves,
        "gap": placement.gap,
        "optimal": placement.optimal,
    }


def _placement(data: Mapping[str, Any]) -> Placement:
    return Placement(
        replicas=tuple(Replica(str(e), str(n), bool(res), float(s)) for e, n, res, s in data["replicas"]),
        nodes=tuple(NodeSpec.model_validate(n) for n in data["nodes"]),
        footprints={str(e): Footprint(**f) for e, f in data["footprints"].items()},
        traffic={str(e): float(t) for e, t in data["traffic"].items()},
        required=frozenset(str(e) for e in data["required"]),
        busiest_load=float(data["busiest_load"]),
        cold_share=float(data["cold_share"]),
        moves=int(data["moves"]),
        gap=float(data["gap"]),
        optimal=bool(data["optimal"]),
    )
