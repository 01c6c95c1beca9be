"""The ingress's engine: routes here, executes on the expert hosts through Ray Serve deployment handles.

``ClusterEngine`` is coserve's Engine with one seam overridden (``Engine._run``: start a call on
``call.expert``). Routing, the fallback over the Decision's alternatives, timings and metrics stay the
Engine's; where the single process queues the call on its own pool, the ingress calls the one
``expert-host`` deployment handle with the nodes the expert may go to (placed there by the placement
controller, not failed, not tried yet for this call), and the deployment's request router
(coserve.distributed.ray_router) picks the replica: ACTIVE, else RAM, else least loaded, never one
the expert is not placed on. The host's ``stream`` generator says first which node answers, then
streams the chunks back. A host that fails (its replica or node died) counts as the expert failing:
before the first token the call goes to another node of the same expert and then to the next
expert; after it, the stream ends with a clean error event (coserve.server.routes), and a
non-streamed one starts again (``complete``).
The server's HTTP surface is unchanged: ``create_app`` takes this engine as it takes the local one.

Needs Ray (``coserve[ray]``); imported only by coserve.distributed.ray_app inside a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from coserve.distributed.admission_share import apply_share, drain_report, follow_drain
from coserve.distributed.ray_choice import DOWN_FOR_S, HostBook
from coserve.distributed.ray_host import NOT_PLACED, raise_record
from coserve.distributed.shared_online import ClusterOnline
from coserve.engine.call import Call
from coserve.engine.engine import Engine, prepended
from coserve.errors import CoserveError, ExpertFailed, ExpertLoadError
from coserve.server.admission import Admission
from coserve.types import Chunk, Completion, Decision, Tier

__all__ = ["ClusterEngine"]

log = logging.getLogger("coserve.distributed")

STATE_TIMEOUT_S = 5.0  # seconds a host may take to report its tiers before it counts as down
FOLLOW_S = 0.5  # how often the ingress reports its traffic to the placement controller and reads its placement
PROBE_AFTER_S = 2.0  # seconds without a chunk after which the ingress checks that the host is alive
_END = object()


class ClusterEngine(Engine):
    """An Engine whose calls run on remote expert hosts (one Ray Serve deployment, a replica per node)."""

    host: Any  # DeploymentHandle of the expert-host deployment (its router picks the replica)
    nodes: list[str]  # every node with a host
    book: HostBook

    def attach(self, host: Any, placed: Mapping[str, list[str]], controller: Any = None, replica: str = "?") -> None:
        """Serve through this host deployment handle; ``placed`` names every node and the experts its
        host serves until the placement ``controller`` (a handle; None: it never changes) says more.
        ``replica``: this ingress replica's id, by which the controller counts the ingress replicas."""
        self.host = host
        self.replica = replica
        self.admission: Admission | None = None  # the app's, once shared: its bounds follow the share
        self.nodes = sorted(placed)
        self.book = HostBook({node: placed.get(node, []) for node in self.nodes})
        self.controller = controller
        self.placement: dict[str, Any] = {}  # the controller's last view (/health)
        self.requested: Counter[str] = Counter()  # routed requests per expert, not yet reported
        self._refreshes: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None

    def follow(self) -> None:
        """Start following the placement controller (from inside the serving event loop)."""
        if self.controller is not None and self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(FOLLOW_S)

    async def sync(self) -> None:
        """Report the requests routed since the last report; take the controller's placement."""
        counts, self.requested = self.requested, Counter()
        admitted = drain_report(self.admission) if self.admission is not None else None
        try:
            call = self.controller.sync.remote(dict(counts), self.replica, admitted)
            view = await asyncio.wait_for(call, STATE_TIMEOUT_S)
        except Exception as exc:  # the controller is restarting: keep the placement known, count again
            log.warning("placement controller did not answer: %s", exc)
            self.requested.update(counts)
            return
        if view["version"] != self.book.version:
            before = dict(self.book.placed)
            self.book.place({n: e for n, e in view["placed"].items() if n in self.nodes}, view["version"])
            for node, experts in self.book.placed.items():
                if experts - before.get(node, frozenset()):
                    self._refresh_later(node)  # its new experts' tiers, before replica choice ranks it
        self.placement = view
        self._share_admission()
        if self.admission is not None:
            follow_drain(self.admission, view)  # a stop: new requests get 503 draining from now on

    def share_admission(self, admission: Admission) -> None:
        """Hold ``admission`` (the app's) to this replica's share of the library's bounds from now on."""
        self.admission = admission
        self._share_admission()

    def _share_admission(self) -> None:
        if self.admission is not None:
            bounds = (self.library.server.max_pending, self.library.server.max_pending_per_expert)
            apply_share(self.admission, bounds, self.placement.get("ingress"))

    async def route(self, call: Call) -> Decision:
        """As the Engine's; the decision also counts as traffic for the placement controller."""
        decision = await super().route(call)
        self.requested[decision.expert] += 1
        return decision

    async def refresh(self, node: str) -> None:
        """Ask one host for its tiers (a host that does not answer counts as down for a while)."""
        try:
            state = await asyncio.wait_for(self.host.state.remote(node), STATE_TIMEOUT_S)
        except Exception as exc:  # the replica or its node is gone: skip it until it answers again
            log.warning("expert host %s did not answer: %s", node, exc)
            self.book.fail(node)
            return
        self.book.report(node, state["tiers"])

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh(node) for node in self.nodes))

    def _refresh_later(self, node: str) -> None:
        task = asyncio.get_running_loop().create_task(self.refresh(node))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _run(self, call: Call) -> AsyncIterator[Chunk]:
        """Send the call to a host of ``call.expert`` (the router picks which); tries its other nodes
        when one fails before the first chunk."""
        expert = str(call.expert)
        tried: set[str] = set()
        for _ in range(len(self.nodes) + 1):  # each failure rules a node out (or Ray drops a dead replica)
            allowed = [v.name for v in self.book.views(expert) if v.tier is not None and v.name not in tried]
            if not allowed:
                break
            call.node = None
            chunks = self._relay(allowed, call)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return _empty()
            except ExpertFailed as exc:
                if exc.code != "host_failed":
                    raise
                tried.add(call.node or "")  # the host is gone before anything was sent: try another node
                continue
            except ExpertLoadError as exc:
                if exc.code != NOT_PLACED or call.node is None:
                    raise
                self.book.withdraw(call.node, expert)  # moved away by a placement this ingress has not seen yet
                continue
            return prepended(first, chunks)
        call.node = None
        where = ", ".join(self.book.hosting(expert)) or "no node"
        unserved = ExpertLoadError(f"expert {expert!r} has no host that can serve it now (placed on {where})")
        unserved.retry_after = int(DOWN_FOR_S)  # a failed host is tried again after this
        raise unserved

    async def _relay(self, allowed: list[str], call: Call) -> AsyncIterator[Chunk]:
        """The chunks of the call from the host the router picked among ``allowed`` (its node in
        ``call.node`` once it says); a host failure becomes ExpertFailed."""
        stream = self.host.options(stream=True).stream.remote(call.request, call.expert, allowed)
        node: str | None = None
        finished = False
        try:
            item = await self._first(allowed, stream)
            named = isinstance(item, dict) and set(item) == {"node"}
            # A host that does not say (the benchmark's peer): the only node it could be.
            node = str(item["node"]) if named else allowed[0]  # type: ignore[index]
            call.node = node
            self.book.in_flight[node] += 1  # counted from here: the finally below takes it off
            if named:
                item = await self._next(node, stream)
            while item is not _END:
                if isinstance(item, dict):
                    raise_record(item)
                assert isinstance(item, Chunk)
                if item.usage is not None:
                    call.usage = item.usage
                    self.metrics.tokens.labels(call.expert, "prompt").inc(item.usage.prompt_tokens)
                    self.metrics.tokens.labels(call.expert, "completion").inc(item.usage.completion_tokens)
                yield item
                item = await self._next(node, stream)
            finished = True
            self.book.served[node] += 1
        except (CoserveError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as exc:  # Ray's: the replica died, its node left, the actor is unreachable
            log.warning("expert host %s failed: %s", node or f"of {', '.join(allowed)}", exc)
            if node is not None:
                self.book.fail(node)
            raise ExpertFailed(
                f"expert host on node {node or ', '.join(allowed)!r} failed: {type(exc).__name__}", code="host_failed"
            ) from None
        finally:
            if node is not None:
                self.book.in_flight[node] -= 1
                self._refresh_later(node)
            if not finished:
                with contextlib.suppress(Exception):
                    stream.cancel()  # the client left or the call failed: stop the remote generation

    async def _first(self, allowed: list[str], stream: Any) -> object:
        """The stream's first item. While none comes for ``PROBE_AFTER_S``, every allowed node's host
        is asked for its state: one that does not answer in ``STATE_TIMEOUT_S`` is marked failed, and
        when none answers this raises (the router may be holding the call for a replica that is gone)."""

        async def probe() -> None:
            await asyncio.gather(*(self.refresh(node) for node in allowed))
            now = time.monotonic()
            if all(self.book.down_until[node] > now for node in allowed):
                raise TimeoutError(f"no host of {', '.join(allowed)} answers")

        return await _next_or_probe(stream, probe)

    async def complete(self, call: Call) -> Completion:
        """As the Engine's, and a call whose host died mid-answer starts again elsewhere: nothing of a
        non-streamed answer has left yet (at most once per host; the dead one is skipped)."""
        for _ in range(len(self.nodes)):
            try:
                return await super().complete(call)
            except ExpertFailed as exc:
                if exc.code != "host_failed":
                    raise
                call.usage = None  # the same expert may answer again, on another host
        return await super().complete(call)

    async def _next(self, node: str, stream: Any) -> object:
        """The stream's next item (``_END`` at its end). While none comes for ``PROBE_AFTER_S``, the
        host is asked for its state: a host that does not answer in ``STATE_TIMEOUT_S`` is gone (a
        dead node's generator may not fail for a long time), and this raises."""
        return await _next_or_probe(stream, lambda: asyncio.wait_for(self.host.state.remote(node), STATE_TIMEOUT_S))

    def health(self) -> dict[str, Any]:
        """The Engine's shape (the ingress's own pool, queues and memory, which hold no expert), with
        each expert's best tier over its hosts and per node its tiers, and each node's load."""
        health = super().health()
        for name, entry in health["experts"].items():
            tiers = {n: str(self.book.tiers[n].get(name, Tier.DISK)) for n in self.book.hosting(name)}
            best = min(tiers.values(), key=lambda t: ["active", "ram", "disk"].index(t)) if tiers else "none"
            entry.update(tier=best, nodes=tiers)
        now = time.monotonic()
        alive = self.placement.get("alive")
        health["nodes"] = {
            node: {
                "experts": sorted(self.book.placed.get(node, ())),
                "in_flight": self.book.in_flight[node],
                "served": self.book.served[node],
                "down": self.book.down_until[node] > now or (alive is not None and node not in alive),
            }
            for node in self.nodes
        }
        if isinstance(self.router.online, ClusterOnline):  # whose map this replica routes with
            health["online"] = self.router.online.health()
        health["placement"] = {
            "version": self.book.version,
            "unplaced": self.placement.get("unplaced", []),  # needed, but no node alive can hold them
            "reason": self.placement.get("reason"),  # why it last changed
            "changed_at": self.placement.get("changed_at"),  # when (Unix time), None before any change
            "live_counts": self.placement.get("counts", {}),  # requests per expert since the last plan
            "live_counts_from": self.placement.get("counts_from"),  # "decision log" or "ingress reports"
            "error": self.placement.get("error"),  # why a change could not be staged
        }
        health["engine"]["residency"] = "cluster"
        return health

    async def exposition(self) -> str:
        """The ingress's metrics and every host's, labelled with its node (one scrape, the cluster)."""
        from coserve.distributed.merged_metrics import merge_expositions

        async def host_text(node: str) -> str | None:
            try:
                return str(await asyncio.wait_for(self.host.metrics.remote(node), STATE_TIMEOUT_S))
            except Exception:  # a host gone: its numbers are left out this scrape
                return None

        if isinstance(self.router.online, ClusterOnline):  # the cluster's figures, as last published
            self.router.online.publish(self.metrics)
        texts = await asyncio.gather(*(host_text(node) for node in self.nodes))
        return merge_expositions(await super().exposition(), dict(zip(self.nodes, texts, strict=True)))

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        for task in list(self._refreshes):
            task.cancel()
        await super().close()


async def _empty() -> AsyncIterator[Chunk]:
    return
    yield  # an async generator that yields nothing


async def _next_or_probe(stream: Any, probe: Callable[[], Awaitable[object]]) -> object:
    """The stream's next item (``_END`` at its end), awaiting ``probe`` after every ``PROBE_AFTER_S``
    without one; what the probe raises ends the wait (and drops the pending read)."""
    pending = asyncio.ensure_future(anext(stream, _END))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=PROBE_AFTER_S)
            if done:
                return pending.result()
            await probe()
    except BaseException:
        pending.cancel()
        # Ray's stream may end the cancelled read with its own error (RequestCancelledError): taken
        # here, or asyncio logs it as "never retrieved", with a traceback, when the task is collected.
        pending.add_done_callback(lambda read: read.cancelled() or read.exception())
        raise
