"""The OpenAI-compatible HTTP server: the application, its state and its error mapping.

``create_app(engine)`` builds the FastAPI application around a ready engine; nothing runs at
import time. The handlers are module-level (coserve.server.routes) and read the ``ServerState``
made here; the lifespan starts the decision log and, at shutdown, sets draining, closes the engine
and flushes the log. Every error leaves as an OpenAI-style body ``{"error": {message, type, param,
code}}`` (coserve.server.frames) with the status of its class in coserve.errors; never a
traceback. The library's ``server`` section sets the limits, the API keys (coserve.server.gate)
and the decision log (coserve.store.log), which gets one row per routed chat request. The
operator's dashboard is served at ``/ui`` (coserve.server.ui).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from coserve.config import LibraryConfig
from coserve.engine.engine import Engine
from coserve.errors import ConfigError, CoserveError
from coserve.paths import decision_log_path
from coserve.server.admission import Admission
from coserve.server.auth import KeyRing
from coserve.server.feed import DecisionFeed
from coserve.server.frames import EXPOSED_HEADERS, INTERNAL_ERROR, error_body, error_response
from coserve.server.gate import Gate
from coserve.server.outcome import Outcomes
from coserve.server.quota import KeyQuota, Quota
from coserve.server.routes import ServerState, router
from coserve.server.ui import ui_router
from coserve.store.log import DecisionLog, DecisionStore, connect
from coserve.store.retention import Retention

__all__ = ["check_decision_log", "create_app", "decision_log_file", "open_decision_log"]

log = logging.getLogger("coserve.server")

SETTLE_S = 5.0  # seconds the shutdown waits for cancelled requests to end (and be logged) before closing


def decision_log_file(library: LibraryConfig) -> Path:
    """The decision log's SQLite file: ``server.log.path`` (relative to the library file), or the default."""
    path = library.server.log.path
    if path is None:
        return decision_log_path()
    if not path.is_absolute() and library.path is not None:
        return library.path.parent / path
    return path


def check_decision_log(library: LibraryConfig) -> None:
    """ConfigError naming ``server.log.path`` when the decision log cannot be opened there: said in one
    line before the server starts, rather than as a traceback from the app's startup."""
    path = decision_log_file(library)
    try:
        connect(path).close()
    except (OSError, sqlite3.Error) as exc:
        where = f"{library.path}: " if library.path is not None else ""
        raise ConfigError(f"{where}server.log.path: cannot open the decision log at {path} ({exc})") from None


def open_decision_log(library: LibraryConfig) -> DecisionLog:
    """The library's decision log writer (``server.log``: file, texts, retention), not started yet:
    the single process's, and the one a cluster's ``decision-log`` deployment runs."""
    settings = library.server.log
    retention = Retention.from_settings(settings.retention)
    return DecisionLog(decision_log_file(library), store_text=settings.store_text, retention=retention)


def _state(
    engine: Engine, decisions: DecisionStore | None, quota: KeyQuota | None, feed: DecisionFeed | None
) -> ServerState:
    settings = engine.library.server
    admission = Admission(settings.max_pending, settings.max_pending_per_expert)
    if decisions is None:
        decisions = open_decision_log(engine.library)
    if quota is None:
        quota = Quota(settings.api_keys)
    keys = KeyRing.from_settings(settings.api_keys, settings.api_keys_env)
    gate = Gate(keys=keys, quota=quota, admission=admission, protect_metrics=settings.protect_metrics)
    outcomes = Outcomes(admission, quota, engine.metrics, decisions, feed)
    if engine.router.online is not None:  # resume learned scores; a missing or bad state warns, never fails
        engine.router.online.resume(decisions.online_state())
        engine.router.online.publish(engine.metrics)  # /metrics shows the resumed map before any request
    return ServerState(engine, settings, gate, admission, decisions, outcomes)


def create_app(
    engine: Engine,
    *,
    close_engine: bool = True,
    decisions: DecisionStore | None = None,
    quota: KeyQuota | None = None,
    feed: DecisionFeed | None = None,
) -> FastAPI:
    """The FastAPI application serving one engine (API keys are read from the environment here).
    ``decisions``, ``quota`` and ``feed`` replace this process's own decision log, key counters and
    dashboard feed (a Ray cluster's ingress replicas share one of each)."""
    state = _state(engine, decisions, quota, feed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.decisions.start()
        try:
            yield
        finally:
            state.admission.draining = True  # from here on, new requests get 503 with Retry-After
            if left := await state.admission.settled(SETTLE_S):  # what the drain deadline cut logs its row
                log.warning("%d requests did not end within %g s of shutdown: no row for them", left, SETTLE_S)
            if close_engine:
                await engine.close()
            if (online := engine.router.online) is not None:
                state.decisions.save_online_state(online.export_state())  # before the log closes
            await asyncio.to_thread(state.decisions.close)  # flushes what is queued
            await state.gate.quota.aclose()  # a shared quota: the tokens not sent yet
            await state.outcomes.feed.aclose()  # a cluster's feed: the events not sent yet

    app = FastAPI(title="coserve", version="0.1.0", lifespan=lifespan, redirect_slashes=False)  # _http_error
    app.state.server = state
    app.state.admission = state.admission
    app.state.decision_log = state.decisions
    app.state.quota = state.gate.quota
    if origins := engine.library.server.cors_origins:  # browser pages elsewhere may call the API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["authorization", "content-type"],
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )
    app.include_router(router)
    app.include_router(ui_router)  # the dashboard at /ui (coserve.server.ui)
    app.add_exception_handler(CoserveError, _coserve_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    return app


async def _coserve_error(_: HttpRequest, exc: CoserveError) -> JSONResponse:
    return error_response(exc)


async def _http_error(request: HttpRequest, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404 and (bare := _without_slash(request)) is not None:
        if request.method in ("GET", "HEAD"):  # a browser's /ui/: where it meant to go
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(bare + query, status_code=307)
        # a POST is not redirected: many clients drop or refuse a redirected body
        message = f"no route {request.method} {request.url.path}; the route is {bare} (no trailing slash)"
    body = error_body(message, "invalid_request_error", None, code)
    return JSONResponse(body, status_code=exc.status_code)


def _without_slash(request: HttpRequest) -> str | None:
    """The path without its trailing slash when some route of the app serves that path, else None."""
    path = request.url.path
    if not path.endswith("/") or path == "/":
        return None
    bare = path.rstrip("/")
    scope = {**request.scope, "path": bare}
    routes = request.app.router.routes
    return bare if any(route.matches(scope)[0] != Match.NONE for route in routes) else None


async def _validation_error(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(part) for part in first["loc"] if part != "body")
    body = error_body(str(first["msg"]), "invalid_request_error", param or None, "invalid_request")
    return JSONResponse(body, status_code=400)


async def _unexpected(_: HttpRequest, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return JSONResponse(INTERNAL_ERROR, status_code=500)
