"""Replica choice: which expert host answers a request for an expert, and what the ingress knows of
each host to decide it.

A request for expert E goes to a host that has E ACTIVE, else one that has it in RAM, else the least
loaded host that can serve it at all; never to a host E is not placed on, nor to one marked down.
Among equals, the one with fewer requests in flight from this ingress wins, then the name (so the
choice is reproducible). ``choose_host`` is pure and takes plain numbers; ``HostBook`` keeps the
numbers (tiers each host last reported, requests in flight, hosts that failed).

This module knows nothing about Ray: the ingress (coserve.distributed.ray_engine) fills the book
from the hosts' answers and asks it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from coserve.types import Tier

__all__ = ["DOWN_FOR_S", "HostBook", "HostView", "choose_host"]

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


class HostBook:
    """The ingress's view of the expert hosts: what each may serve, what it last reported, its load."""

    def __init__(self, placed: Mapping[str, Iterable[str]]):
        self.placed: dict[str, frozenset[str]] = {}  # node -> experts it may be sent
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

    def withdraw(self, node: str, expert: str) -> None:
        """The host said it no longer serves ``expert`` (a placement newer than this book's)."""
        self.placed[node] = self.placed.get(node, frozenset()) - {expert}

    def views(self, expert: str, now: float | None = None) -> list[HostView]:
        """Every host's view for ``expert`` (tier None where it is not placed, or the host is down)."""
        now = time.monotonic() if now is None else now
        out = []
        for node, experts in sorted(self.placed.items()):
            able = expert in experts and self.down_until[node] <= now
            tier = self.tiers[node].get(expert, Tier.DISK) if able else None
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
        return sorted(node for node, experts in self.placed.items() if expert in experts)
