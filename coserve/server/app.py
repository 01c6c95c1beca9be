"""The OpenAI-compatible HTTP server: routes, SSE framing, error mapping, metrics.

``create_app(engine)`` builds the FastAPI application around a ready engine; nothing runs at
import time. Every error leaves as an OpenAI-style body ``{"error": {message, type, param, code}}``
with the status of its class in coserve.errors; never a traceback. The library's ``server``
section sets the limits, the API keys (enforced by coserve.server.gate) and the decision log
(coserve.store.log), which gets one row per routed chat request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coserve.assets import cache_dir
from coserve.config import ServerSettings
from coserve.engine.engine import Engine, Stream
from coserve.errors import CoserveError, InvalidRequest, NotFound
from coserve.server.admission import Admission, Ticket
from coserve.server.auth import KeyRing
from coserve.server.gate import CHAT_PATH, KEY_KEY, TICKET_KEY, Gate, error_response
from coserve.server.openapi import documented, error_responses
from coserve.server.protocol import ChatCompletionRequest, FeedbackRequest, error_body
from coserve.server.quota import Quota
from coserve.store.log import DecisionLog, DecisionRow
from coserve.types import Decision, Request, Usage

__all__ = ["create_app", "sse"]

log = logging.getLogger("coserve.server")

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _coserve_field(decision: Decision, stream: Stream) -> dict[str, Any]:
    field = decision.as_dict()
    field["expert"] = stream.expert
    if stream.fallback_from:
        field["fallback_from"] = list(stream.fallback_from)
    return field


def _headers(decision: Decision, stream: Stream) -> dict[str, str]:
    headers = {"x-coserve-expert": stream.expert, "x-coserve-category": decision.category or ""}
    if stream.fallback_from:
        headers["x-coserve-fallback-from"] = ",".join(stream.fallback_from)
    return headers


def _invalid(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    param = _loc(tuple(first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {message}" if param else message, param=param or None)


async def _json_body(http: HttpRequest, max_bytes: int) -> dict[str, Any]:
    raw = await http.body()
    if len(raw) > max_bytes:
        raise InvalidRequest(f"the body is larger than {max_bytes} bytes", code="body_too_large")
    try:
        data = json.loads(raw)
        # Valid JSON may still hold lone surrogates ("\ud800"), which no UTF-8 response can echo.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except UnicodeEncodeError:
        raise InvalidRequest("the body holds text that is not valid Unicode", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


async def _parse(http: HttpRequest, settings: ServerSettings) -> Request:
    data = await _json_body(http, settings.max_body_bytes)
    try:
        body = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if len(body.messages) > settings.max_messages:
        raise InvalidRequest(f"at most {settings.max_messages} messages", param="messages")
    return body.to_request()


def _log_path(engine: Engine) -> Path:
    path = engine.library.server.log.path
    if path is None:
        return cache_dir() / "decisions.sqlite"
    if not path.is_absolute() and engine.library.path is not None:
        return engine.library.path.parent / path
    return path


def create_app(engine: Engine, *, close_engine: bool = True) -> FastAPI:
    """The FastAPI application serving one engine (API keys are read from the environment here)."""
    settings = engine.library.server
    admission = Admission(settings.max_pending, settings.max_pending_per_expert)
    decisions = DecisionLog(_log_path(engine), store_text=settings.log.store_text)
    quota = Quota(settings.api_keys)
    metrics = engine.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        decisions.start()
        try:
            yield
        finally:
            admission.draining = True  # from here on, new requests get 503 with Retry-After
            if close_engine:
                await engine.close()
            await asyncio.to_thread(decisions.close)  # flushes what is queued

    app = FastAPI(title="coserve", version="0.1.0", lifespan=lifespan)
    app.state.admission = admission
    app.state.decision_log = decisions
    app.state.quota = quota
    app.add_middleware(
        Gate,
        keys=KeyRing.from_settings(settings.api_keys, settings.api_keys_env),
        quota=quota,
        admission=admission,
        protect_metrics=settings.protect_metrics,
        on_refusal=lambda exc: metrics.requests.labels(str(exc.status)).inc(),
    )

    def record(
        request: Request,
        decision: Decision,
        status: str,
        stream: Stream | None = None,
        usage: Usage | None = None,
        completion: str | None = None,
    ) -> None:
        prompt = None
        if decisions.store_text:
            prompt = json.dumps([{"role": m.role, "content": m.content} for m in request.messages])
        decisions.record(
            DecisionRow(
                id=request.id,
                time=time.time() - (time.monotonic() - request.arrival),
                model=request.model,
                expert=stream.expert if stream else decision.expert,
                category=decision.category,
                confidence=decision.confidence,
                reason=decision.reason,
                fallback_from=",".join(stream.fallback_from) if stream and stream.fallback_from else None,
                status=status,
                latency_s=time.monotonic() - request.arrival,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                prompt=prompt,
                completion=completion if decisions.store_text else None,
            )
        )

    @app.exception_handler(CoserveError)
    async def _coserve_error(_: HttpRequest, exc: CoserveError) -> JSONResponse:
        metrics.requests.labels(str(exc.status)).inc()
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None, code), status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _loc(tuple(first["loc"]))
        return JSONResponse(
            error_body(str(first["msg"]), "invalid_request_error", param or None, "invalid_request"), status_code=400
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: HttpRequest, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        metrics.requests.labels("500").inc()
        return JSONResponse(
            error_body("internal server error", "server_error", None, "internal_error"), status_code=500
        )

    @app.post(
        CHAT_PATH,
        openapi_extra=documented(ChatCompletionRequest),
        responses=error_responses(400, 401, 404, 413, 422, 429, 502, 503),
    )
    async def chat_completions(http: HttpRequest) -> Response:
        request = await _parse(http, settings)
        decision = await engine.route(request)
        try:
            ticket: Ticket | None = http.scope.get(TICKET_KEY)
            if ticket is not None:
                ticket.claim(decision.expert)
            key: str | None = http.scope.get(KEY_KEY)  # whose tokens these are, when keys are required
            if request.stream:
                return await _stream_response(request, decision, key)
            return await _complete_response(http, request, decision, key)
        except Exception as exc:
            record(request, decision, str(exc.status) if isinstance(exc, CoserveError) else "500")
            raise

    def spend(key: str | None, usage: Usage | None) -> None:
        if key is not None and usage is not None:
            quota.spend(key, usage.total_tokens)

    async def _complete_response(http: HttpRequest, request: Request, decision: Decision, key: str | None) -> Response:
        work = asyncio.ensure_future(engine.complete(request, decision))
        while not work.done():
            # A client that goes away cancels its request (queued or generating) and frees its slot.
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if not work.done() and await http.is_disconnected():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, CoserveError):
                    await work
                metrics.requests.labels("499").inc()
                record(request, decision, "499")
                return Response(status_code=499)
        stream, completion = work.result()
        metrics.latency_seconds.labels(stream.expert).observe(time.monotonic() - request.arrival)
        metrics.requests.labels("200").inc()
        spend(key, completion.usage)
        record(request, decision, "200", stream, completion.usage, completion.text)
        body = {
            "id": request.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": stream.expert,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": completion.usage.prompt_tokens,
                "completion_tokens": completion.usage.completion_tokens,
                "total_tokens": completion.usage.total_tokens,
            },
            "coserve": _coserve_field(decision, stream),
        }
        return JSONResponse(body, headers=_headers(decision, stream))

    async def _stream_response(request: Request, decision: Decision, key: str | None) -> StreamingResponse:
        stream = await engine.stream(request, decision)  # errors before the first token are HTTP errors
        metrics.ttft_seconds.labels(stream.expert).observe(time.monotonic() - request.arrival)
        created = int(time.time())

        def frame(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
            return sse(
                {
                    "id": request.id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": stream.expert,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            status = "200"
            usage: Usage | None = None
            parts: list[str] = []  # kept only when the log stores texts
            try:
                yield frame({"role": "assistant", "content": ""}, None, coserve=_coserve_field(decision, stream))
                async for chunk in stream.chunks:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if chunk.text:
                        if decisions.store_text:
                            parts.append(chunk.text)
                        yield frame({"content": chunk.text}, None)
                    if chunk.finish_reason:
                        yield frame({}, chunk.finish_reason)
                        if request.stream_usage and chunk.usage is not None:
                            yield sse(
                                {
                                    "id": request.id,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": stream.expert,
                                    "choices": [],
                                    "usage": {
                                        "prompt_tokens": chunk.usage.prompt_tokens,
                                        "completion_tokens": chunk.usage.completion_tokens,
                                        "total_tokens": chunk.usage.total_tokens,
                                    },
                                }
                            )
            except CoserveError as exc:  # after the first token: end the stream with an error event
                status = "stream_error"
                yield sse(exc.body())
            except Exception:
                log.exception("stream failed")
                status = "stream_error"
                yield sse(error_body("internal server error", "server_error", None, "internal_error"))
            finally:
                await stream.chunks.aclose()  # type: ignore[attr-defined]
                spend(key, usage)
                metrics.requests.labels(status).inc()
                metrics.latency_seconds.labels(stream.expert).observe(time.monotonic() - request.arrival)
                record(request, decision, status, stream, usage, "".join(parts))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={
                **_headers(decision, stream),
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
            },
        )

    @app.get("/v1/models", responses=error_responses(401, 429, 503))
    async def models() -> dict[str, Any]:
        created = int(time.time())
        residency = engine.pool.residency()
        data: list[dict[str, Any]] = [
            {
                "id": "coserve",
                "object": "model",
                "created": created,
                "owned_by": "coserve",
                "coserve": {"routed": True, "experts": list(engine.library.expert_names)},
            }
        ]
        for spec in engine.library.experts:
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
                        "context": spec.context,
                        "tags": list(spec.tags),
                        "tier": residency[spec.name].value,
                    },
                }
            )
        return {"object": "list", "data": data}

    @app.post(
        "/v1/feedback",
        openapi_extra=documented(FeedbackRequest),
        responses=error_responses(400, 401, 404, 422, 429, 503),
    )
    async def feedback(http: HttpRequest) -> dict[str, Any]:
        data = await _json_body(http, settings.max_body_bytes)
        try:
            body = FeedbackRequest.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc) from None
        body.check()
        if not await asyncio.wrap_future(decisions.feedback(body.id, body.score)):
            raise NotFound(f"no logged request has the id {body.id!r}", param="id", code="request_not_found")
        return {"object": "feedback", "id": body.id, "score": body.score}

    @app.get("/health", responses=error_responses(401, 503))
    async def health() -> JSONResponse:
        pool = engine.pool
        payload = {
            "status": "draining" if admission.draining else "ok",
            "experts": {name: pool.state(name) for name in engine.library.expert_names},
            "memory": {
                "active_bytes": pool.used_bytes(),
                "active_budget_bytes": pool.budget_bytes,
                "ram_bytes": pool.ram_bytes(),
                "ram_budget_bytes": pool.ram_budget_bytes,
            },
            "engine": {"residency": engine.residency, "switches": engine.switches, "queued": engine.scheduler.depth()},
            "admission": {"pending": admission.pending, "per_expert": dict(admission.per_expert)},
        }
        return JSONResponse(payload, status_code=503 if admission.draining else 200)

    @app.get("/metrics", responses=error_responses(401))
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
