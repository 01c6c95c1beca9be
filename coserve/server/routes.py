"""The HTTP routes: module-level handlers over the server's state (set by the app's lifespan).

A chat request goes: Gate (key, quota check, draining) -> parse (strict types) -> Call ->
admission -> route -> claim its expert -> engine (stream or complete) -> frames; every way out
goes through ``Outcomes.settle`` exactly once (for a stream, when its response ends, however).
The other routes list the models (or give one), take feedback, and answer ``/health`` (from ``Engine.health``)
and ``/metrics``.

This module knows nothing about the pool, the scheduler or the runtimes: it talks to the Engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from coserve.backends.registry import capabilities
from coserve.config import ServerSettings
from coserve.engine.call import Call, Timings
from coserve.engine.engine import Engine
from coserve.errors import CoserveError, Draining, InvalidRequest, NotFound
from coserve.metrics import retention_text
from coserve.server.admission import Admission
from coserve.server.frames import DONE, Frames, completion_body, error_response, headers
from coserve.server.gate import CHAT_PATH, Gate
from coserve.server.openapi import documented, error_responses
from coserve.server.outcome import Outcomes
from coserve.server.protocol import ChatCompletionRequest, FeedbackRequest, parse_chat, parse_feedback
from coserve.store.log import DecisionStore
from coserve.types import ROUTED_MODEL

__all__ = ["ServerState", "read_body", "router"]

log = logging.getLogger("coserve.server")

DISCONNECT_POLL_S = 0.25  # how often a request not yet answering checks that its client is still there
CLIENT_GONE = "499"  # the status logged for a request whose client went away before its answer ended
CUT = "503"  # the status logged for a request still running when the drain deadline cut it

router = APIRouter()


@dataclass
class ServerState:
    """What the handlers share, made once per app (``app.state.server``)."""

    engine: Engine
    settings: ServerSettings
    gate: Gate
    admission: Admission
    decisions: DecisionStore
    outcomes: Outcomes


def _state(http: HttpRequest) -> ServerState:
    state: ServerState = http.app.state.server
    return state


async def _api(http: HttpRequest) -> ServerState:
    state = _state(http)
    await state.gate.check_api(http.headers.get("authorization"), chat=False)
    return state


def _ops(http: HttpRequest) -> ServerState:
    state = _state(http)
    state.gate.check_ops(http.headers.get("authorization"))
    return state


ApiState = Annotated[ServerState, Depends(_api)]  # a /v1 route's state, once its caller passed the Gate
OpsState = Annotated[ServerState, Depends(_ops)]  # /health and /metrics


def _status(exc: BaseException) -> str:
    return str(exc.status) if isinstance(exc, CoserveError) else "500"


@router.post(
    CHAT_PATH,
    openapi_extra=documented(ChatCompletionRequest),
    responses=error_responses(400, 401, 404, 413, 422, 429, 502, 503),
)
async def chat_completions(http: HttpRequest) -> Response:
    timings = Timings()
    state = _state(http)
    call: Call | None = None
    try:
        key = await state.gate.check_api(http.headers.get("authorization"), chat=True)
        settings = state.settings
        request = parse_chat(
            await read_body(http, settings.max_body_bytes),
            settings.max_body_bytes,
            settings.max_messages,
            settings.unknown_parameters,
        )
        call = Call(request, key=key, timings=timings)
        state.admission.admit(call)
        await state.engine.route(call)
        state.admission.claim(call)
        if request.stream:
            return await _streamed(http, state, call)
        return await _completed(http, state, call)
    except asyncio.CancelledError:
        if not state.admission.draining:
            state.outcomes.settle(CLIENT_GONE, call)
            raise
        # The drain deadline cancelled it before its answer began: say so as to a new request (503,
        # Retry-After), not with the ASGI server's bare 500; the shutdown waits for this response.
        state.outcomes.settle(CUT, call)
        return error_response(Draining("the server shut down before answering; retry on another instance"))
    except BaseException as exc:
        state.outcomes.settle(_status(exc), call)
        raise


async def read_body(http: HttpRequest, max_bytes: int) -> bytes:
    """The body, read no further than past ``max_bytes`` (the parser then refuses it as
    ``body_too_large``): however long a body is sent, the server holds at most the limit and a chunk."""
    received = bytearray()
    async for chunk in http.stream():
        received += chunk
        if len(received) > max_bytes:
            break
    return bytes(received)


async def _while_connected(http: HttpRequest, work: asyncio.Future[Any]) -> bool:
    """Wait for ``work``; False, with ``work`` cancelled and awaited, when the client went away first:
    a client that goes away cancels its request, queued or generating, and frees its slot."""
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if not work.done() and await http.is_disconnected():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, CoserveError):
                    await work
                return False
    except asyncio.CancelledError:  # the handler itself was cancelled (the drain deadline)
        work.cancel()
        raise
    return True


async def _completed(http: HttpRequest, state: ServerState, call: Call) -> Response:
    work = asyncio.ensure_future(state.engine.complete(call))
    if not await _while_connected(http, work):
        state.outcomes.settle(CLIENT_GONE, call)
        return Response(status_code=499)
    completion = work.result()
    state.outcomes.settle("200", call, completion.text)
    return JSONResponse(completion_body(call, completion), headers=headers(call))


class _SettledStream(StreamingResponse):
    """A streamed response that settles its call when it ends, however it ends (client gone too);
    ``end(cancelled)``: whether the response was cancelled (by the drain deadline; on Ray Serve, also
    when the client leaves) rather than ended or left."""

    def __init__(self, content: AsyncIterator[bytes], end: Callable[[bool], Coroutine[Any, Any, None]], **kw: Any):
        super().__init__(content, **kw)
        self._end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cancelled = False
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._end(cancelled)


async def _streamed(http: HttpRequest, state: ServerState, call: Call) -> Response:
    work = asyncio.ensure_future(state.engine.stream(call))  # errors before the first token are HTTP errors
    if not await _while_connected(http, work):  # the client left while its request was queued or loading
        if not work.cancelled() and work.exception() is None:  # its first token came as it was cancelled
            await work.result().aclose()  # type: ignore[attr-defined]  # stops the runtime
        state.outcomes.settle(CLIENT_GONE, call)
        return Response(status_code=499)
    chunks = work.result()
    frames = Frames(call)
    parts: list[str] = []  # kept only when the log stores texts
    status = "200"
    ended = False  # the whole stream, [DONE] included, was handed to the server to send

    async def events() -> AsyncIterator[bytes]:
        nonlocal status, ended
        try:
            yield frames.role()
            async for chunk in chunks:
                if chunk.text or chunk.logprobs:
                    if state.decisions.store_text:
                        parts.append(chunk.text)
                    yield frames.content(chunk.text, chunk.logprobs)
                if chunk.tool_calls:
                    yield frames.tool_calls(chunk.tool_calls)
                if chunk.finish_reason:
                    yield frames.finish(chunk.finish_reason)
                    if call.request.stream_usage and chunk.usage is not None:
                        yield frames.usage(chunk.usage)
        except Exception as exc:  # after the first token: end the stream with an error event
            if not isinstance(exc, CoserveError):
                log.exception("stream failed")
            status = "stream_error"
            yield frames.error(exc)
        yield DONE
        ended = True

    async def end(cancelled: bool) -> None:
        await chunks.aclose()  # type: ignore[attr-defined]  # stops the runtime if the client left
        settled = status if ended else CUT if cancelled and state.admission.draining else CLIENT_GONE
        state.outcomes.settle(settled, call, "".join(parts))

    return _SettledStream(
        events(),
        end,
        media_type="text/event-stream",
        headers={**headers(call), "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.get("/v1/models", responses=error_responses(401, 429, 503))
async def models(state: ApiState) -> dict[str, Any]:
    return {"object": "list", "data": _model_objects(state)}


@router.get("/v1/models/{model}", responses=error_responses(401, 404, 429, 503))
async def model(model: str, state: ApiState) -> dict[str, Any]:
    """One model of the list (OpenAI's "retrieve model", ``client.models.retrieve``)."""
    for entry in _model_objects(state):
        if entry["id"] == model:
            return entry
    raise NotFound(f"The model '{model}' does not exist", param="model")


def _model_objects(state: ServerState) -> list[dict[str, Any]]:
    """``coserve`` (routed), then every expert with what a client routes or pins by."""
    created = int(time.time())
    library = state.engine.library
    experts = state.engine.health()["experts"]
    data: list[dict[str, Any]] = [
        {
            "id": ROUTED_MODEL,
            "object": "model",
            "created": created,
            "owned_by": "coserve",
            "coserve": {"routed": True, "experts": list(library.expert_names)},
        }
    ]
    for spec in library.experts:
        data.append(
            {
                "id": spec.name,
                "object": "model",
                "created": created,
                "owned_by": "coserve",
                "coserve": {
                    "routed": False,
                    "backend": spec.backend,
                    "params_b": spec.params_b,
                    "price": {"input": spec.price.input, "output": spec.price.output},  # USD per million tokens
                    "context": spec.context,
                    "tags": list(spec.tags),
                    "capabilities": sorted(capabilities(spec)),
                    "tier": experts[spec.name]["tier"],
                },
            }
        )
    return data


@router.post(
    "/v1/feedback",
    openapi_extra=documented(FeedbackRequest),
    responses=error_responses(400, 401, 404, 422, 429, 503),
)
async def feedback(http: HttpRequest, state: ApiState) -> dict[str, Any]:
    body = parse_feedback(await read_body(http, state.settings.max_body_bytes), state.settings.max_body_bytes)
    online = state.engine.router.online  # router.online: a request's score moves its expert's (docs/adapt.md)
    if online is None:
        stored = await asyncio.wrap_future(state.decisions.feedback(body.id, body.score))
        outcome, category, expert, logged = ("stored" if stored else "unknown"), None, "", None
    else:  # logged: the prediction the request was routed with, should the router no longer remember it
        scored = await asyncio.wrap_future(state.decisions.feedback_once(body.id, body.score))
        outcome, category, expert, logged = scored
    if outcome == "unknown":
        pruned = " (or its row is older than the log's retention)" if state.settings.log.retention else ""
        raise NotFound(f"no logged request has the id {body.id!r}{pruned}", param="id", code="request_not_found")
    if outcome == "duplicate":
        raise InvalidRequest(f"request {body.id!r} already has a score", param="id", code="feedback_exists")
    if online is not None and category is not None and online.apply(category, expert, body.score, body.id, logged):
        state.decisions.save_online_state(online.export_state())  # saved beside the log
        online.publish(state.engine.metrics)  # the score's map is in force now
    return {"object": "feedback", "id": body.id, "score": body.score}


@router.api_route("/health", methods=["GET", "HEAD"], responses=error_responses(401, 503))  # HEAD: probes
async def health(state: OpsState) -> JSONResponse:
    admission = state.admission
    payload = {
        "status": "draining" if admission.draining else "ok",
        **state.engine.health(),
        "admission": {
            "pending": admission.pending,
            "per_expert": dict(admission.per_expert),
            "max_pending": admission.max_pending,  # on a Ray ingress replica: its share of the cluster's
            "max_pending_per_expert": admission.max_pending_per_expert,
        },
    }
    return JSONResponse(payload, status_code=503 if admission.draining else 200)


@router.get("/metrics", responses=error_responses(401))
async def prometheus(state: OpsState) -> Response:
    text = await state.engine.exposition()
    if (stats := await state.decisions.prune_stats()) is not None:  # server.log.retention
        text += retention_text(stats.pruned, stats.kept)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
