"""Replica choice: which expert host answers a request for an expert, and what is known of each host
to decide it.

A request for expert E goes to a host that has E ACTIVE, else one that has it in RAM, else the least
loaded host that can serve it at all; never to a host E is not placed on, nor to one marked down.
Among equals, the one with fewer requests in flight wins, then the name (so the choice is
reproducible). ``choose_host`` and ``rank_hosts`` are pure and take plain numbers.

``replica_ranks`` is what Ray Serve's request router for the expert hosts (coserve.distributed.
ray_router) asks for each host call: a ``stream(request, expert, nodes)`` call may go to the replica
of any of ``nodes`` (the nodes the ingress may send ``expert`` to: placed there, not failed), ranked
by the tiers and load each replica last reported; any other call names its node first
(``state(node)``, ``add(node, expert, resident)``...) and goes to that node's replica only.

``HostBook`` is the ingress's view: what each node may be sent (the placement controller's), nodes
that failed, calls in flight and answered (for ``/health``). It keeps an index from each expert to
the nodes it is placed on, rebuilt with each placement and updated when a host withdraws an expert,
so a choice looks only at the hosts of its expert (their down time and load are read at choice
time), not at every node. This module knows nothing about Ray.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from coserve.types import Tier

__all__ = [
    "DOWN_FOR_S",
    "STREAM_METHOD",
    "HostBook",
    "HostView",
    "ReplicaReport",
    "choose_host",
    "rank_hosts",
    "replica_ranks",
]

DOWN_FOR_S = 5.0  # seconds a host that failed is skipped before it may be tried again

_RANK = {Tier.ACTIVE: 0, Tier.RAM: 1, Tier.DISK: 2}


@dataclass(frozen=True)
class HostView:
    """What the ingress knows of one host, for one expert."""

    name: str  # the node the host runs on
    tier: Tier | None  # where the expert is on that host; None: the host cannot serve it
    in_flight: int = 0  # requests this ingress has running there (all experts)


def choose_host(hosts: Sequence[HostView]) -> str | None:
    """The host to send the request to (ACTIVE, else RAM, else least loaded), or None when no host can."""
    able = [h for h in hosts if h.tier is not None]
    if not able:
        return None
    best = min(able, key=lambda h: (_RANK[h.tier], h.in_flight, h.name) if h.tier is not None else ())
    return best.name


def rank_hosts(hosts: Sequence[HostView]) -> list[list[str]]:
    """Every host that can serve, grouped by tier (ACTIVE, RAM, DISK), each group by load then name:
    the order to try them in (``choose_host`` is the first of the first group). Within a group Ray
    Serve's router takes the replica with the fewest requests queued when it asks them (so ties in
    what the hosts last reported are broken by their live load)."""
    return _grouped([(host, host.name) for host in hosts])


Item = TypeVar("Item")


def _grouped(items: Sequence[tuple[HostView, Item]]) -> list[list[Item]]:
    able = sorted(
        ((view, item) for view, item in items if view.tier is not None),
        key=lambda pair: (_RANK[pair[0].tier], pair[0].in_flight, pair[0].name) if pair[0].tier is not None else (),
    )
    groups: list[list[Item]] = []
    last: Tier | None = None
    for view, item in able:
        if not groups or view.tier != last:
            groups.append([])
            last = view.tier
        groups[-1].append(item)
    return groups


STREAM_METHOD = "stream"  # the host call that runs a request: stream(request, expert, nodes)
Replica = TypeVar("Replica", bound=Hashable)


@dataclass(frozen=True)
class ReplicaReport:
    """What one expert-host replica reported of itself (Ray Serve's routing stats and replica metadata)."""

    node: str | None  # the cluster-file node it serves; None: not reported yet
    tiers: Mapping[str, str] = field(default_factory=dict)  # expert -> tier, for the experts placed there
    in_flight: int = 0  # calls running there (all experts)


def replica_ranks(method: str, args: Sequence[Any], reports: Mapping[Replica, ReplicaReport]) -> list[list[Replica]]:
    """The replicas to try for one host call, best group first; [] when none may take it (the
    router then waits for the replicas to change). ``stream(request, expert, nodes)``: the replicas
    of ``nodes``, ranked by ``rank_hosts`` (an expert a replica does not list yet counts as DISK:
    it was placed there after its last report). Any other call ``method(node, ...)``: that node's."""
    by_node: dict[str, list[Replica]] = {}
    for replica, report in reports.items():
        if report.node is not None:
            by_node.setdefault(report.node, []).append(replica)
    if method != STREAM_METHOD:
        return [by_node[str(args[0])]] if args and str(args[0]) in by_node else []
    expert, allowed = str(args[1]), {str(n) for n in args[2]}
    views = []
    for node, replicas in by_node.items():
        if node not in allowed:  # could not serve it: left out, as rank_hosts leaves out tier None
            continue
        for replica in replicas:
            report = reports[replica]
            views.append((HostView(node, Tier(report.tiers.get(expert, Tier.DISK)), report.in_flight), replica))
    return _grouped(views)


class HostBook:
    """The ingress's view of the expert hosts: what each may serve, what it last reported, its load."""

    def __init__(self, placed: Mapping[str, Iterable[str]]):
        self.placed: dict[str, frozenset[str]] = {}  # node -> experts it may be sent (change: place, withdraw)
        self.hosts_of: dict[str, tuple[str, ...]] = {}  # expert -> the nodes it is placed on, by name
        self.tiers: dict[str, dict[str, Tier]] = {}  # last reported
        self.in_flight: dict[str, int] = {}
        self.down_until: dict[str, float] = {}  # monotonic seconds
        self.served: dict[str, int] = {}  # calls each host answered to the end (for /health)
        self.version = 0  # of the placement the book follows (the placement controller's)
        self.place(placed)

    def place(self, placed: Mapping[str, Iterable[str]], version: int | None = None) -> None:
        """Follow a new placement: what each node may be sent (a node not named gets nothing); what
        is known of each host (tiers, load, failures) is kept."""
        self.placed = {node: frozenset(experts) for node, experts in placed.items()}
        for node in self.placed:
            self.tiers.setdefault(node, {})
            self.in_flight.setdefault(node, 0)
            self.down_until.setdefault(node, 0.0)
            self.served.setdefault(node, 0)
        if version is not None:
            self.version = version
        hosts: dict[str, list[str]] = {}
        for node in sorted(self.placed):
            for expert in self.placed[node]:
                hosts.setdefault(expert, []).append(node)
        self.hosts_of = {expert: tuple(nodes) for expert, nodes in hosts.items()}

    def withdraw(self, node: str, expert: str) -> None:
        """The host said it no longer serves ``expert`` (a placement newer than this book's)."""
        self.placed[node] = self.placed.get(node, frozenset()) - {expert}
        remaining = tuple(n for n in self.hosts_of.get(expert, ()) if n != node)
        if remaining:
            self.hosts_of[expert] = remaining
        else:
            self.hosts_of.pop(expert, None)

    def views(self, expert: str, now: float | None = None) -> list[HostView]:
        """The view of each host ``expert`` is placed on, by name (tier None while the host is down)."""
        now = time.monotonic() if now is None else now
        out = []
        for node in self.hosts_of.get(expert, ()):
            tier = self.tiers[node].get(expert, Tier.DISK) if self.down_until[node] <= now else None
            out.append(HostView(node, tier, self.in_flight[node]))
        return out

    def choose(self, expert: str, now: float | None = None) -> str | None:
        """The host for a request of ``expert`` now, or None."""
        return choose_host(self.views(expert, now))

    def report(self, node: str, tiers: Mapping[str, str]) -> None:
        """A host answered with its experts' tiers: remember them; it is up."""
        self.tiers[node] = {expert: Tier(tier) for expert, tier in tiers.items()}
        self.down_until[node] = 0.0

    def fail(self, node: str, now: float | None = None) -> None:
        """The host failed (its process or node is gone): skip it for ``DOWN_FOR_S``."""
        self.down_until[node] = (time.monotonic() if now is None else now) + DOWN_FOR_S

    def hosting(self, expert: str) -> list[str]:
        """The nodes ``expert`` is placed on."""
        return list(self.hosts_of.get(expert, ()))
