"""The operator's dashboard at ``/ui``: a static page (package data, coserve/server/ui/) and the
JSON and SSE endpoints it reads.

    GET  /ui                 the page (HTML; it holds no data, so it loads without a key)
    GET  /ui/static/{name}   its script and style sheet
    GET  /ui/api/state       each expert's tier, memory, in flight, queued, loads, last error
    GET  /ui/api/events      the live decision feed (SSE; coserve.server.feed), recent events first
    GET  /ui/api/map         the category -> expert map, and the measured table and quality/cost front
    POST /ui/api/route       {"prompt": ...} -> the routing decision and its probabilities (no generation)

When API keys are configured every ``/ui/api/*`` endpoint needs ``Authorization: Bearer <key>``
(whatever ``protect_metrics`` says: the feed shows what the users asked for); they take no share of
the key's quota. The key never travels in a URL and is never logged or echoed. The page is sent
with a Content-Security-Policy that allows only its own script and style.

This module knows nothing about the pool or the runtimes: it reads ``Engine.health()``, the
router and the library.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi import Request as HttpRequest
from fastapi.responses import Response, StreamingResponse

from coserve.errors import ConfigError, InvalidRequest, NotFound, TooManyRequests
from coserve.server.openapi import error_responses
from coserve.server.routes import ServerState, read_body
from coserve.types import ROUTED_MODEL, Message, Request

__all__ = ["ui_router"]

ui_router = APIRouter(include_in_schema=False)

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
PAGE_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet feed
DRAIN_POLL_S = 1.0  # how often an open feed checks whether the server is draining
MAX_PROMPT_CHARS = 20_000
COUNTERS = ("loads", "evictions", "load_failures", "hits", "misses")


def _state(http: HttpRequest) -> ServerState:
    state: ServerState = http.app.state.server
    return state


def _viewer(http: HttpRequest) -> ServerState:
    """The server's state, once the caller showed a known key (when keys are configured)."""
    state = _state(http)
    if state.gate.keys.required:
        state.gate.keys.check(http.headers.get("authorization"))
    return state


ViewerState = Annotated[ServerState, Depends(_viewer)]


def _asset(name: str) -> bytes:
    return resources.files("coserve.server").joinpath("ui", name).read_bytes()


@ui_router.get("/ui")
@ui_router.get("/ui/")
async def page() -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@ui_router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no dashboard file {name!r}", code="not_found")
    return Response(_asset(name), media_type=f"{STATIC[name]}; charset=utf-8", headers=PAGE_HEADERS)


def _counter(state: ServerState, metric: str, expert: str) -> int:
    value = state.engine.metrics.registry.get_sample_value(f"coserve_expert_{metric}_total", {"expert": expert})
    return int(value or 0)


@ui_router.get("/ui/api/state", responses=error_responses(401))
async def ui_state(state: ViewerState) -> dict[str, Any]:
    engine, admission = state.engine, state.admission
    health = engine.health()
    queued = health["engine"]["queued"]
    experts = []
    for spec in engine.library.experts:
        entry = health["experts"][spec.name]
        counts = {what: _counter(state, what, spec.name) for what in COUNTERS}
        experts.append(
            {
                "name": spec.name,
                "backend": spec.backend,
                "params_b": spec.params_b,
                "context": spec.context,
                **entry,
                "queued": queued.get(spec.name, 0),
                "unavailable": engine.unavailable.get(spec.name),
                **counts,
            }
        )
    return {
        "status": "draining" if admission.draining else "ok",
        "experts": experts,
        "memory": health["memory"],
        "residency": health["engine"]["residency"],
        "switches": health["engine"]["switches"],
        "pending": admission.pending,
        "feed_subscribers": state.outcomes.feed.subscribers,
    }


def _measured(http: HttpRequest, state: ServerState) -> dict[str, Any] | None:
    """``coserve map``'s table, maps and front for a library whose map comes from outcomes (cached)."""
    cached: dict[str, Any] | None = getattr(http.app.state, "ui_measured", None)
    if cached is not None:
        return cached
    library = state.engine.library
    if library.router.outcomes is None:
        return None
    from coserve.router.measured import measure_maps

    try:
        measured = measure_maps(library)
    except ConfigError as exc:
        return {"error": exc.message}
    result = {**measured.as_dict(), "unit": measured.unit, "weights": measured.weights.round(4).tolist()}
    http.app.state.ui_measured = result
    return result


def _budget(state: ServerState) -> dict[str, Any] | None:
    """The live budget controller (``router.online``): target, realised window average, weight, map version."""
    online = getattr(state.engine.router, "online", None)
    if online is None:
        return None
    figures = online.figures()
    realised = figures["realised"]
    return {
        "axis": online.axis,
        "target": figures["target"],
        "realised": None if math.isnan(realised) else realised,  # none before the first request
        "weight": figures["weight"],
        "map_version": int(figures["version"]),
        "map": online.current_map(),
    }


@ui_router.get("/ui/api/map", responses=error_responses(401))
async def ui_map(http: HttpRequest, state: ViewerState) -> dict[str, Any]:
    router = state.engine.library.router
    measured = await asyncio.to_thread(_measured, http, state)
    categories, mapping = list(state.engine.library.categories), dict(router.map)
    trained = getattr(state.engine.router, "trained", None)  # router.trained brings its own categories and map
    if trained is not None:
        categories = list(trained.classes)
        mapping = {c: trained.experts[e] for c, e in zip(trained.classes, trained.assignment or [], strict=False)}
    source = "trained" if trained is not None else "outcomes" if router.outcomes else "hand"
    return {
        "categories": categories,
        "map": mapping,
        "source": source,  # where the map comes from: a trained router, measured outcomes, or the file
        "fallback": {"expert": router.fallback.expert, "min_confidence": router.fallback.min_confidence},
        "measured": measured,
        "budget": _budget(state),
    }


def _prompt(body: bytes, max_bytes: int) -> str:
    if len(body) > max_bytes:
        raise InvalidRequest(f"the body is larger than {max_bytes} bytes", code="body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest('the body must be JSON: {"prompt": "..."}', code="invalid_json") from None
    prompt = data.get("prompt") if isinstance(data, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' must be a non-empty string", param="prompt", code="invalid_prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
    return prompt


@ui_router.post("/ui/api/route", responses=error_responses(400, 401))
async def ui_route(http: HttpRequest, state: ViewerState) -> dict[str, Any]:
    max_bytes = state.settings.max_body_bytes  # read no further than past it, as the chat route
    prompt = _prompt(await read_body(http, max_bytes), max_bytes)
    request = Request((Message("user", prompt),), ROUTED_MODEL)
    decision = await asyncio.get_running_loop().run_in_executor(None, state.engine.router.route, request)
    ranked = sorted(decision.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
    return {**decision.as_dict(), "probabilities": {k: round(v, 4) for k, v in ranked}}


@ui_router.get("/ui/api/events", responses=error_responses(401, 429))
async def ui_events(state: ViewerState) -> StreamingResponse:
    feed = state.outcomes.feed
    if feed.full():
        raise TooManyRequests("too many open dashboard feeds", retry_after=5, code="too_many_feeds")

    async def events() -> AsyncIterator[bytes]:
        with feed.subscribe() as subscription:
            yield b": coserve decision feed\n\n"
            quiet = 0.0
            getter: asyncio.Future[dict[str, Any]] | None = None  # one get, kept across polls: none is lost
            try:
                while not state.admission.draining:  # a draining server ends its feeds, so it can stop
                    getter = getter or asyncio.ensure_future(subscription.queue.get())
                    done, _ = await asyncio.wait({getter}, timeout=DRAIN_POLL_S)
                    if not done:
                        quiet += DRAIN_POLL_S
                        if quiet >= HEARTBEAT_S:
                            quiet = 0.0
                            yield b": heartbeat\n\n"
                        continue
                    event, getter, quiet = getter.result(), None, 0.0
                    data = json.dumps({**event, "dropped": subscription.dropped})
                    yield f"event: decision\ndata: {data}\n\n".encode()
            finally:
                if getter is not None:
                    getter.cancel()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
