"""The placement controller as a Ray Serve deployment (``placement``, one replica): it watches which
cluster-file nodes Ray has alive, takes the ingresses' traffic reports, and runs the controller's
ticks (coserve.distributed.controller) against the expert hosts through their deployment handles.

``sync`` is what every ingress replica calls about twice a second: it hands in the requests per
expert it routed since its last call and gets the placement to follow (version, experts per node)
and its place among the ingress replicas heard from lately, from which it takes its share of the
admission bounds (coserve.distributed.admission_share). On a stop (``begin_drain``) the view says
``draining`` and each replica, once it refuses new requests, reports how many it still holds;
``drained`` says when none does (coserve.distributed.ray_run waits on it).
The watch loop starts with the first ``sync`` (inside the replica's event loop) and ticks every
``WATCH_S``. A node is alive when a Ray node that Ray reports alive carries its
``coserve-node-<name>`` resource; Ray notices a dead node after its health checks fail
(``health_check_period_ms`` x ``health_check_failure_threshold`` of the cluster's system config).

The controller's state (coserve.distributed.controller_state) is kept in Ray's GCS key-value store
(``GcsStore``: namespace ``coserve``, one key per application), which outlives every worker node,
as Ray Serve keeps its own controller's checkpoint there: it is written at every change the
controller makes and after a tick whose live counts changed, and read back when the replica starts
(a restarted replica resumes the placement, its version and its live counts). State that cannot be
read starts the controller from the start-time plan with a warning, never a failed start.

The live traffic for drift comes from the ``decision-log`` deployment when it answers: before each
tick the watch asks it for the decisions per expert written since its last question and made since
the controller's window start (the last plan), and the controller plans with those counts
(``logged``); while the log does not answer within ``LOG_TIMEOUT_S``, with what the ingresses
reported in their syncs.

Each expert-host replica claims its cluster-file node here when it starts (``claim_host``,
coserve.distributed.host_claims): a node whose holder's actor Ray no longer knows is free again, so
a replacement replica takes the dead one's node. The claims are kept in the same store under their
own key (``host-claims/<application>``), so a restarted controller keeps them.

Imports Ray only inside calls (coserve.distributed.ray_app makes this class a deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from coserve.distributed.admission_share import Drain, IngressRoll
from coserve.distributed.cluster import Cluster, Footprint
from coserve.distributed.controller import PlacementController
from coserve.distributed.controller_state import fingerprint, read_state, restore, snapshot
from coserve.distributed.host_claims import HostClaims
from coserve.distributed.placement import Placement

__all__ = [
    "NODE_PREFIX",
    "PLACEMENT",
    "GcsStore",
    "HandleHosts",
    "PlacementService",
    "StateStore",
    "actor_alive",
    "alive_nodes",
    "resume",
]

log = logging.getLogger("coserve.distributed")

PLACEMENT = "placement"  # the controller's deployment name
NODE_PREFIX = "coserve-node-"  # the custom resource a Ray node carries for the cluster-file node it is
LOG_TIMEOUT_S = 2.0  # the decision log's counts come within this, else the ingresses' reports count
WATCH_S = 1.0  # seconds between two ticks of the controller
HOST_CALL_TIMEOUT_S = 180.0  # the longest a host may take to load, pin or drain an expert
HOST_UP_TIMEOUT_S = 10.0  # a host that does not answer its state within this is not up yet
SERVE_NAMESPACE = "serve"  # Ray Serve's replicas are named actors of this namespace
STATE_NAMESPACE = "coserve"  # the GCS key-value namespace of the controller's saved state


def state_key(kind: str = "placement-state") -> str:
    """The GCS key of this application's controller state (one per Serve application)."""
    from ray import serve

    return f"{kind}/{serve.get_replica_context().app_name}"


def actor_alive(name: str) -> bool:
    """Whether Ray still knows the (Serve replica) actor of this name; True when Ray cannot say."""
    import ray

    try:
        ray.get_actor(name, namespace=SERVE_NAMESPACE)
    except ValueError:  # no such actor alive: it died or was stopped
        return False
    except Exception as exc:  # the GCS not answering: never free a node on a guess
        log.warning("could not ask Ray about replica %s: %s", name, exc)
    return True


def alive_nodes(ray_nodes: list[Mapping[str, Any]]) -> set[str]:
    """The cluster-file nodes that an alive Ray node carries (from ``ray.nodes()``)."""
    out = set()
    for node in ray_nodes:
        if node.get("Alive"):
            out |= {r[len(NODE_PREFIX) :] for r in node.get("Resources", {}) if r.startswith(NODE_PREFIX)}
    return out


class HandleHosts:
    """The controller's ``HostOps`` over the expert-host deployment's handle: each call names its node
    first, and the deployment's request router (coserve.distributed.ray_router) sends it to that
    node's replica."""

    def __init__(self, hosts: Any):
        self.hosts = hosts

    async def _call(self, node: str, method: str, *args: Any) -> None:
        await asyncio.wait_for(getattr(self.hosts, method).remote(node, *args), HOST_CALL_TIMEOUT_S)

    async def add(self, node: str, expert: str, resident: bool) -> None:
        await self._call(node, "add", expert, resident)

    async def remove(self, node: str, expert: str) -> None:
        await self._call(node, "remove", expert)

    async def pin(self, node: str, expert: str, pinned: bool) -> None:
        await self._call(node, "pin", expert, pinned)

    async def assign(self, node: str, experts: list[str], resident: list[str]) -> None:
        # A host whose replica is not up yet (its node just joined) would hold the call until it
        # is: ask for its state first, briefly, so the tick goes on and tries again next time.
        await asyncio.wait_for(self.hosts.state.remote(node), HOST_UP_TIMEOUT_S)
        await self._call(node, "assign", experts, resident)


class StateStore(Protocol):
    """Where the controller's state bytes are kept (``GcsStore`` on Ray; a dict in unit tests)."""

    def get(self) -> bytes | None: ...
    def put(self, value: bytes) -> None: ...


class GcsStore:
    """One key of Ray's GCS key-value store (``ray.experimental.internal_kv``), namespace ``coserve``."""

    def __init__(self, key: str):
        self.key = key

    def get(self) -> bytes | None:
        from ray.experimental import internal_kv

        value: bytes | None = internal_kv._internal_kv_get(self.key, namespace=STATE_NAMESPACE)
        return value

    def put(self, value: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(self.key, value, overwrite=True, namespace=STATE_NAMESPACE)


def resume(controller: PlacementController, store: StateStore, inputs: str) -> str:
    """Put the saved state of this application (``inputs``: its fingerprint) into a fresh controller;
    says what was done. Never raises: unreadable state leaves the start-time plan, with a warning."""
    try:
        raw = store.get()
        if raw is None:
            return "no saved state: the start-time plan"
        saved = read_state(raw)
        if saved.fingerprint != inputs:  # another deployment's inputs: its placement does not apply
            controller.version = saved.version + 1
            return f"saved state is of other inputs: the start-time plan, version {controller.version}"
        restore(controller, saved)
    except Exception as exc:  # StateError or a store that does not answer: never a failed start
        log.warning("placement state not resumed (%s): starting from the start-time plan", exc)
        return f"saved state unreadable: the start-time plan ({exc})"
    return f"resumed version {controller.version}"


class PlacementService:
    """The ``placement`` deployment: one controller for the whole application."""

    def __init__(
        self,
        cluster: Cluster,
        footprints: Mapping[str, Footprint],
        placement: Placement,
        hosts: Any,
        store: StateStore | None = None,
        claims_store: StateStore | None = None,
        is_alive: Callable[[str], bool] = actor_alive,
        decision_log: Any = None,
    ):
        self.controller = PlacementController(cluster, footprints, placement, HandleHosts(hosts))
        self._watch: asyncio.Task[None] | None = None
        self.ingresses = IngressRoll()  # the ingress replicas heard from lately (admission shares)
        self.drain = Drain()  # a stop (`coserve serve --ray`): the ingresses refuse new requests
        self.inputs = fingerprint(cluster, footprints, placement)
        self.store = store if store is not None else GcsStore(state_key())
        self.resumed = resume(self.controller, self.store, self.inputs)
        log.info("placement controller: %s", self.resumed)
        self._saved: bytes | None = None
        self.controller.checkpoint = self.save
        if claims_store is None and store is None:
            claims_store = GcsStore(state_key("host-claims"))
        self.claims_store = claims_store
        self.is_alive = is_alive
        self.claims = HostClaims()
        with contextlib.suppress(Exception):  # none saved, or unreadable: every holder asks again
            raw = claims_store.get() if claims_store is not None else None
            self.claims = HostClaims.from_bytes(raw) if raw is not None else self.claims
        self._claiming = asyncio.Lock()
        self.decision_log = decision_log  # the decision-log deployment's handle (None: ingress reports only)
        self._log_after = 0  # the last decision-log row counted
        self._log_since: float | None = None  # the window the tally counts
        self._log_tally: Counter[str] = Counter()

    async def read_log(self) -> None:
        """Take the live counts of the controller's window from the decision log (see the module doc)."""
        if self.decision_log is None:
            return
        since = self.controller.window_start
        if since != self._log_since:  # a new window (a re-plan): count from its start
            self._log_since, self._log_tally = since, Counter()
        try:
            last, counts = await asyncio.wait_for(
                self.decision_log.expert_counts.remote(self._log_after, since), LOG_TIMEOUT_S
            )
        except Exception as exc:
            if self.controller.logged is not None:
                log.warning("decision log did not answer (%s): drift from the ingresses' reports", exc)
            self.controller.logged = None
            return
        self._log_after = int(last)
        self._log_tally.update({e: int(n) for e, n in counts.items() if e in self.controller.footprints})
        self.controller.logged = self._log_tally

    async def claim_host(self, replica: str, candidates: list[str], first_guess: str | None) -> dict[str, Any] | None:
        """An expert-host replica's claim (coserve.distributed.host_claims): its node and, when the
        controller has set that node's host already, the experts (and resident ones) of the placement
        in force there, which a replacement replica starts with; None while a live replica holds
        every one of ``candidates`` (it asks again)."""
        async with self._claiming:
            holders = {self.claims.holders[n] for n in candidates if n in self.claims.holders} - {replica}
            alive = {h: await asyncio.to_thread(self.is_alive, h) for h in sorted(holders)}
            before = dict(self.claims.holders)
            node = self.claims.claim(replica, candidates, first_guess, alive.__getitem__)
            if node is None:
                return None
            if self.claims.holders != before:
                log.info("expert host %s claims node %s (was %s)", replica, node, before.get(node) or "free")
                await self._save_claims()
        if node not in self.controller.alive:  # not set yet: the start-time plan, then the tick's assign
            return {"node": node}
        kept = self.controller.placement.on(node)
        return {"node": node, "experts": [r.expert for r in kept], "resident": [r.expert for r in kept if r.resident]}

    async def _save_claims(self) -> None:
        if self.claims_store is None:
            return
        try:
            await asyncio.to_thread(self.claims_store.put, self.claims.to_bytes())
        except Exception as exc:  # kept in memory; written again at the next claim
            log.warning("host claims not saved: %s", exc)

    def host_claims(self) -> dict[str, str]:
        """The replica holding each cluster-file node."""
        return dict(sorted(self.claims.holders.items()))

    async def save(self) -> None:
        """Write the controller's state when it changed since the last write (a failure only warns:
        the next change or tick writes again)."""
        state = snapshot(self.controller, self.inputs)
        if state == self._saved:
            return
        try:
            await asyncio.to_thread(self.store.put, state)
            self._saved = state
        except Exception as exc:
            log.warning("placement state not saved: %s", exc)

    async def sync(
        self, counts: Mapping[str, int], replica: str | None = None, admitted: int | None = None
    ) -> dict[str, Any]:
        """An ingress's traffic since its last call in (and, once it drains, its ``admitted`` count);
        the placement to follow out, with the calling ``replica``'s place among the ingress replicas
        (``ingress``: its admission share) and whether to drain."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_nodes())
        self.controller.report(counts)
        view = self.controller.view()
        if replica is not None:
            view["ingress"] = self.ingresses.heard(replica)
            self.drain.report(replica, admitted)
        view["draining"] = self.drain.begun
        return view

    def begin_drain(self) -> None:
        """From now on every ingress refuses new requests (503 ``draining``) as it next syncs."""
        self.drain.begin()

    def drained(self) -> bool:
        """Whether every ingress replica heard from lately drains and holds no admitted request."""
        return self.drain.over(self.ingresses.last_seen)

    def view(self) -> dict[str, Any]:
        return self.controller.view()

    async def _watch_nodes(self) -> None:
        import ray

        while True:
            try:
                alive = alive_nodes(await asyncio.to_thread(ray.nodes))
                await self.read_log()
                await self.controller.tick(alive & set(self.controller.advertised))
                await self.save()  # the live counts, when they changed
            except Exception:  # one bad tick must not end the watch
                log.exception("placement tick failed")
            await asyncio.sleep(WATCH_S)

    def __del__(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                self._watch.cancel()
