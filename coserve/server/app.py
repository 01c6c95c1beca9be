"""The OpenAI-compatible HTTP server: routes, SSE framing, error mapping, metrics.

``create_app(engine)`` builds the FastAPI application around a ready engine; nothing runs at
import time. Every error leaves as an OpenAI-style body ``{"error": {message, type, param, code}}``
with the status of its class in coserve.errors; never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coserve.engine.engine import Engine, Stream
from coserve.errors import CoserveError, InvalidRequest
from coserve.server.protocol import ChatCompletionRequest, error_body
from coserve.types import Decision, Request

__all__ = ["create_app", "sse"]

log = logging.getLogger("coserve.server")

MAX_BODY_BYTES = 4 * 2**20  # a chat body larger than this is refused (400, body_too_large)
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


async def _parse(http: HttpRequest) -> Request:
    raw = await http.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"the body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
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
    try:
        body = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _loc(tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param or None) from None
    return body.to_request()


def create_app(engine: Engine, *, close_engine: bool = True) -> FastAPI:
    """The FastAPI application serving one engine."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_engine:
            await engine.close()

    app = FastAPI(title="coserve", version="0.1.0", lifespan=lifespan)
    metrics = engine.metrics

    @app.exception_handler(CoserveError)
    async def _coserve_error(_: HttpRequest, exc: CoserveError) -> JSONResponse:
        metrics.requests.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

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

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest) -> Response:
        request = await _parse(http)
        decision = await engine.route(request)
        if request.stream:
            return await _stream_response(request, decision)
        work = asyncio.ensure_future(engine.complete(request, decision))
        while not work.done():
            # A client that goes away cancels its request (queued or generating) and frees its slot.
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if not work.done() and await http.is_disconnected():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, CoserveError):
                    await work
                metrics.requests.labels("499").inc()
                return Response(status_code=499)
        stream, completion = work.result()
        metrics.latency_seconds.labels(stream.expert).observe(time.monotonic() - request.arrival)
        metrics.requests.labels("200").inc()
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

    async def _stream_response(request: Request, decision: Decision) -> StreamingResponse:
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
            try:
                yield frame({"role": "assistant", "content": ""}, None, coserve=_coserve_field(decision, stream))
                async for chunk in stream.chunks:
                    if chunk.text:
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
                metrics.requests.labels(status).inc()
                metrics.latency_seconds.labels(stream.expert).observe(time.monotonic() - request.arrival)
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

    @app.get("/v1/models")
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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        pool = engine.pool
        return {
            "status": "ok",
            "experts": {name: pool.state(name) for name in engine.library.expert_names},
            "memory": {
                "active_bytes": pool.used_bytes(),
                "active_budget_bytes": pool.budget_bytes,
                "ram_bytes": pool.ram_bytes(),
                "ram_budget_bytes": pool.ram_budget_bytes,
            },
            "engine": {"policy": engine.policy, "switches": engine.switches, "queued": engine.scheduler.depth()},
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
