"""The placement controller: the one place that holds the cluster's placement, re-plans it, and
stages each change on the expert hosts two-phase.

It keeps the placement in force, a version that grows with every change the ingresses must see,
and the experts each node's host is *advertised* for (what replica choice may send there). Each
``tick`` is given the nodes alive now; it

1. withdraws the experts of a node that left from the ingresses at once (their requests fall back
   or get 503 until the re-plan), and sets each host it has not set yet to exactly the placement's
   experts for it (a node that came back has a restarted host with its start-time experts; after
   the controller itself restarted, every host may carry a later placement's);
2. asks ``replan.why_replan`` whether the placement still stands, with the live traffic since the
   last plan (``window_start``) once at least ``min_requests`` arrived: the decision log's counts
   (``logged``, set by coserve.distributed.ray_placement while the log answers), else what the
   ingresses reported (``report``);
3. if not, solves again (``replan.replan``, paying ``move_weight`` per replica started) over the
   nodes alive, leaving out experts that fit on none of them (``unplaced``: their requests get 503
   with Retry-After, or fall back), and runs ``replan.transition``'s steps on the hosts: a new
   replica is started and ready on its host before it is advertised; an old one is withdrawn from
   the ingresses, given ``grace_s`` for them to see it, then drained (its calls finish) and stopped.

A failed host call stops the staging where it is (nothing further is withdrawn) and the next tick
starts again from the placement before it. This module knows nothing about Ray: the hosts are a
``HostOps`` (coserve.distributed.ray_placement wraps the deployment handles in one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from coserve.distributed.cluster import Cluster, Footprint
from coserve.distributed.placement import Placement
from coserve.distributed.replan import Step, replan, transition, why_replan
from coserve.errors import CoserveError

__all__ = ["GRACE_S", "MIN_REQUESTS", "HostOps", "PlacementController"]

log = logging.getLogger("coserve.distributed")

MIN_REQUESTS = 20  # live counts replace the planned traffic once this many requests arrived
GRACE_S = 2.0  # seconds the ingresses get to see a withdrawal before the replica is drained


class HostOps(Protocol):
    """What the controller asks of the expert hosts (each call returns when the host has done it)."""

    async def add(self, node: str, expert: str, resident: bool) -> None: ...  # placed there, loaded/pinned
    async def remove(self, node: str, expert: str) -> None: ...  # its calls finished, unplaced, unloaded
    async def pin(self, node: str, expert: str, pinned: bool) -> None: ...
    async def assign(self, node: str, experts: list[str], resident: list[str]) -> None: ...  # exactly these


class PlacementController:
    """Holds the placement in force and its version; re-plans and stages changes (see module doc)."""

    def __init__(
        self,
        cluster: Cluster,
        footprints: Mapping[str, Footprint],
        placement: Placement,
        hosts: HostOps,
        *,
        min_requests: int = MIN_REQUESTS,
        grace_s: float = GRACE_S,
    ):
        self.cluster = cluster  # every node of the cluster file, alive or not
        self.footprints = dict(footprints)  # of every placeable expert
        self.placement = placement  # in force: what the hosts carry
        self.hosts = hosts
        self.min_requests = min_requests
        self.grace_s = grace_s
        self.required = placement.required  # experts the map uses: kept whenever a node can hold them
        self.version = 1
        self.alive = {n.name for n in placement.nodes}
        self.advertised: dict[str, set[str]] = {n.name: set() for n in cluster.nodes}
        for replica in placement.replicas:
            self.advertised[replica.node].add(replica.expert)
        self._assigned: set[str] = set()  # nodes whose host this controller has set to the placement
        self.counts: Counter[str] = Counter()  # requests per expert the ingresses reported since the last plan
        self.logged: Counter[str] | None = None  # the same from the decision log; None when it does not answer
        self.window_start = time.time()  # wall-clock start of the live counts' window (the last plan)
        self.unplaced: list[str] = []  # needed experts that fit on no node alive
        self.reason: str | None = None  # why the last re-plan happened
        self.error: str | None = None  # why the last re-plan could not be staged, if it could not
        self.changed_at: float | None = None  # wall-clock time of the last change of placement
        self.pending: tuple[str, Placement] | None = None  # the move being staged: its reason and target
        # Called at every change the ingresses or a restarted controller must not lose (a version
        # step, a move started or ended); coserve.distributed.ray_placement saves the state there.
        self.checkpoint: Callable[[], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()

    # -- what the ingresses send and read ---------------------------------------------------------
    def report(self, counts: Mapping[str, int]) -> None:
        """An ingress's requests per expert since its last report."""
        self.counts.update({e: int(n) for e, n in counts.items() if e in self.footprints and n > 0})

    def view(self) -> dict[str, Any]:
        """What the ingresses follow: the version and, per node, the experts they may send there."""
        return {
            "version": self.version,
            "placed": {node: sorted(experts) for node, experts in sorted(self.advertised.items())},
            "alive": sorted(self.alive),
            "unplaced": list(self.unplaced),
            "reason": self.reason,
            "changed_at": self.changed_at,
            "error": self.error,
            "counts": dict(sorted(self.live_counts().items())),  # live requests per expert since the last plan
            "counts_from": "decision log" if self.logged is not None else "ingress reports",
        }

    def live_counts(self) -> Counter[str]:
        """Requests per expert since the last plan: the decision log's, else the ingresses' reports."""
        return self.logged if self.logged is not None else self.counts

    def traffic(self) -> dict[str, float]:
        """The traffic to plan for: the live counts once there are enough, else what was planned."""
        counts = self.live_counts()
        if sum(counts.values()) < self.min_requests:
            return dict(self.placement.traffic)
        return {e: float(counts.get(e, 0)) for e in self.footprints}

    # -- the control step ---------------------------------------------------------------------------
    async def tick(self, alive: Collection[str]) -> str | None:
        """One step given the nodes alive now; returns why it re-planned, or None."""
        async with self._lock:
            alive_now = {n.name for n in self.cluster.nodes if n.name in alive}
            for node in sorted(self.alive - alive_now):
                self._advertise(node, set())  # left: nothing more is sent there
                self._assigned.discard(node)
            for node in sorted(alive_now - self._assigned):
                # A host this controller has not set yet (a node that came back, whose restarted host
                # carries its start-time experts; or every host, when the controller itself restarted)
                # is set to exactly what the placement in force gives it.
                kept = self.placement.on(node) if node in self.alive else ()
                try:
                    await self.hosts.assign(node, [r.expert for r in kept], [r.expert for r in kept if r.resident])
                    self._assigned.add(node)
                except Exception as exc:  # its host is not up yet: the node joins on a later tick
                    log.info("host of node %s not ready yet: %s", node, exc)
                    alive_now.discard(node)
                    self._advertise(node, set())
            self.alive = alive_now
            if not alive_now:
                return None
            return await self._replan()

    async def _replan(self) -> str | None:
        cluster = self.cluster.model_copy(
            update={"nodes": tuple(n for n in self.cluster.nodes if n.name in self.alive)}
        )
        traffic = self.traffic()
        reason = why_replan(self.placement, cluster, self.footprints, traffic, cluster.planner.drift_threshold)
        if reason is None:
            return None
        fits = {e for e, f in self.footprints.items() if any(_fits(f, n.ram, n.accelerator) for n in cluster.nodes)}
        needed = set(self.required) | {e for e, t in traffic.items() if t > 0}
        self.unplaced = sorted(needed - fits)
        try:  # the solve runs off the event loop: reports and host claims are answered meanwhile
            new = await asyncio.to_thread(
                replan,
                self.placement,
                cluster,
                {e: f for e, f in self.footprints.items() if e in fits},
                {e: t for e, t in traffic.items() if e in fits},
                cluster.planner.drift_threshold,
                required=self.required & fits,
            )
            steps = transition(self.placement, new)
        except CoserveError as exc:
            self.error = f"{reason}: {exc.message}"
            log.warning("re-plan not possible: %s", self.error)
            return None
        log.info("re-planning (%s): %d steps", reason, len(steps))
        self.pending = (reason, new)
        await self._checkpoint()
        if await self.stage(steps, new):
            self.placement, self.reason, self.error = new, reason, None
            self.changed_at = self.window_start = time.time()
            self.counts.clear()
            self.logged = None  # until the log answers for the new window
            for node in self.advertised:  # exactly what the new placement serves (alive nodes)
                self._advertise(node, {r.expert for r in new.on(node)} if node in self.alive else set())
        self.pending = None
        await self._checkpoint()
        return reason

    async def _checkpoint(self) -> None:
        if self.checkpoint is not None:
            await self.checkpoint()

    async def stage(self, steps: Iterable[Step], new: Placement) -> bool:
        """Run the steps on the hosts; False (and stop) at the first host call that fails."""
        withdrawn = False  # a withdrawal is published; the ingresses get grace_s before the drain
        for step in steps:
            try:
                if step.action == "start":
                    resident = any(r.resident for r in new.on(step.node) if r.expert == step.expert)
                    await self.hosts.add(step.node, step.expert, resident)
                elif step.action == "ready":
                    self._advertise(step.node, self.advertised[step.node] | {step.expert})
                elif step.action == "drain":
                    self._advertise(step.node, self.advertised[step.node] - {step.expert})
                    withdrawn = True
                elif step.action == "stop":
                    if withdrawn:
                        await asyncio.sleep(self.grace_s)
                        withdrawn = False
                    await self.hosts.remove(step.node, step.expert)
                else:
                    await self.hosts.pin(step.node, step.expert, step.action == "pin")
                await self._checkpoint()  # the version the ingresses see may have stepped
            except Exception as exc:
                self.error = f"{step.action} {step.expert} on {step.node} failed: {exc}"
                log.warning("staging stopped: %s", self.error)
                return False
        return True

    def _advertise(self, node: str, experts: set[str]) -> None:
        if self.advertised.get(node) != experts:
            self.advertised[node] = set(experts)
            self.version += 1


def _fits(size: Footprint, ram: int, accelerator: int) -> bool:
    return size.ram_bytes <= ram and size.accelerator_bytes <= accelerator
