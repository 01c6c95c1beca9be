"""The server's front door: API keys, then admission, before any route runs (an ASGI middleware).

Every ``/v1/*`` request (and ``/health``, ``/metrics`` when ``protect_metrics``) must carry a known
key if any is configured; a ``/v1/*`` request of a key with limits then takes its share of the
key's Quota (429 past its rate, or for a chat request past its day's tokens), and the key's digest
rides in the scope under ``CALLER_DIGEST_KEY`` so that the route can count the tokens it used. A chat request
is then admitted (429 past the bounds, 503 while draining)
and its Ticket rides in the ASGI scope under ``TICKET_KEY`` so that the route can claim its expert;
the ticket is released when the ASGI call ends, which covers success, errors, client disconnects
and the end of a stream alike. Refusals leave as OpenAI-style bodies with their headers.

This module knows nothing about engines, routing or the chat protocol.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from coserve.errors import CoserveError
from coserve.server.admission import Admission
from coserve.server.auth import KeyRing
from coserve.server.quota import Quota

__all__ = ["CALLER_DIGEST_KEY", "CHAT_PATH", "TICKET_KEY", "Gate", "error_response"]

CHAT_PATH = "/v1/chat/completions"
TICKET_KEY = "coserve.ticket"  # the scope key of a chat request's admission Ticket
CALLER_DIGEST_KEY = "coserve.key"  # the scope key of the caller's API key digest (hex), when keys are required
_OPS_PATHS = ("/health", "/metrics")


def error_response(exc: CoserveError) -> JSONResponse:
    """The HTTP response of a CoserveError: its body, status and headers (Retry-After)."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


class Gate:
    """ASGI middleware: authenticate, admit, and release the admission ticket when the call ends."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        quota: Quota,
        admission: Admission,
        protect_metrics: bool,
        on_refusal: Callable[[CoserveError], None] = lambda _: None,
    ):
        self.app = app
        self.keys = keys
        self.quota = quota
        self.admission = admission
        self.protect_metrics = protect_metrics
        self.on_refusal = on_refusal  # e.g. counts the refusal in metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith("/v1/")
        chat = path == CHAT_PATH and scope["method"] == "POST"
        ticket = None
        try:
            if self.keys.required and (api or (self.protect_metrics and path in _OPS_PATHS)):
                key = self.keys.check(_header(scope, b"authorization"))
                if api:
                    self.quota.check(key, chat=chat)
                    scope[CALLER_DIGEST_KEY] = key
            if api:
                self.admission.check_open()
            if chat:
                ticket = self.admission.admit()
        except CoserveError as exc:
            self.on_refusal(exc)
            await error_response(exc)(scope, receive, send)
            return
        if ticket is None:
            await self.app(scope, receive, send)
            return
        scope[TICKET_KEY] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.release()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
