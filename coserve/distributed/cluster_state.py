"""What the ingress replicas of a Ray cluster share: the API-key quota and the decision log.

``bind_shared_state`` binds the two one-replica deployments, ``quota``
(coserve.distributed.shared_quota) and ``decision-log`` (coserve.distributed.shared_log), held on
the ingress's node when the application pins one (``ingress_node``), else on Ray's head node: the
log's file is then on a machine the operator knows. ``ingress_state`` makes, inside an ingress
replica, the ``KeyQuota`` and ``DecisionStore`` that ``create_app`` takes in place of its own.
``mark_replica`` adds the ``x-coserve-ingress`` header (which ingress replica answered) to every
response.

Imports Ray only inside calls (coserve.distributed.ray_app binds these); this module knows nothing
about routing, hosts or placement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from coserve.config import LibraryConfig
    from coserve.distributed.shared_log import SharedDecisionLog
    from coserve.distributed.shared_quota import SharedQuota

__all__ = [
    "HEAD_NODE_RESOURCE",
    "QUIET",
    "IngressMarker",
    "bind_shared_state",
    "ingress_state",
    "mark_replica",
    "replica_name",
]

HEAD_NODE_RESOURCE = "node:__internal_head__"  # the resource Ray gives its head node alone
INGRESS_HEADER = "x-coserve-ingress"
# Ray Serve's logging for the internal deployments: their calls (several a second, idle or not) would
# each write an access-log line, which `coserve serve --ray` prints; their own warnings still show.
QUIET: dict[str, Any] = {"enable_access_log": False}


def bind_shared_state(library: str | None, resource: str | None) -> tuple[Any, Any]:
    """The bound ``quota`` and ``decision-log`` deployments, held by ``resource`` (None: Ray's head node)."""
    from ray import serve

    from coserve.distributed.shared_log import DecisionLogService
    from coserve.distributed.shared_quota import QUOTA_STATE, QuotaService

    actor = {"num_cpus": 0, "resources": {resource or HEAD_NODE_RESOURCE: 0.001}}
    # Every ingress request of a limited key, and every batch of rows, is one call: no small bound.
    options: dict[str, Any] = {
        "num_replicas": 1,
        "ray_actor_options": actor,
        "max_ongoing_requests": 1000,
        "logging_config": QUIET,
    }
    quota: Any = serve.deployment(QuotaService)
    decision_log: Any = serve.deployment(DecisionLogService)
    return (
        quota.options(name="quota", **options).bind(library, QUOTA_STATE),  # counters kept in the GCS
        decision_log.options(name="decision-log", **options).bind(library),
    )


async def ingress_state(
    library: LibraryConfig, quota_handle: Any, log_handle: Any
) -> tuple[SharedQuota, SharedDecisionLog]:
    """The ingress's quota and decision log over the shared deployments (asks the log where it is)."""
    from coserve.distributed.shared_log import SharedDecisionLog
    from coserve.distributed.shared_quota import SharedQuota

    quota = SharedQuota(quota_handle, library.server.api_keys)
    settings = library.server.log
    decisions = await SharedDecisionLog(
        log_handle, store_text=settings.store_text, retention=settings.retention is not None
    ).open()
    return quota, decisions


def replica_name() -> str:
    """This Ray Serve replica's id (``?`` outside a replica)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return "?"


class IngressMarker:
    """ASGI middleware: every HTTP response says which ingress replica answered."""

    def __init__(self, app: ASGIApp, name: str):
        self.app = app
        self.header = (INGRESS_HEADER.encode(), name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_marked)


def mark_replica(app: FastAPI, name: str) -> FastAPI:
    """``app`` with the ``x-coserve-ingress: <name>`` header on every response."""
    app.add_middleware(IngressMarker, name=name)
    return app
