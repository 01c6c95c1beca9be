"""The front door of every route: API keys, the key's quota check, and the draining flag.

``Gate.check`` runs first in every route (as a FastAPI dependency, or first thing in the chat
route): every ``/v1/*`` request (and ``/health``, ``/metrics`` when ``protect_metrics``) must carry
a known key if any is configured; a ``/v1/*`` request of a key with limits then takes its share of
the key's Quota (429 past its rate, or for a chat request past its day's tokens); while the server
drains, every ``/v1/*`` request is refused with 503. It returns the key's digest, which the chat
route puts on the request's Call, so that its tokens are spent against that key when it ends.

This module knows nothing about engines, routing or the chat protocol.
"""

from __future__ import annotations

from coserve.server.admission import Admission
from coserve.server.auth import KeyRing
from coserve.server.quota import KeyQuota

__all__ = ["CHAT_PATH", "Gate"]

CHAT_PATH = "/v1/chat/completions"


class Gate:
    """Authenticate, check the key's quota and the draining flag; refusals are CoserveErrors."""

    def __init__(self, *, keys: KeyRing, quota: KeyQuota, admission: Admission, protect_metrics: bool):
        self.keys = keys
        self.quota = quota
        self.admission = admission  # only its draining flag is read here
        self.protect_metrics = protect_metrics

    async def check_api(self, authorization: str | None, *, chat: bool) -> str | None:
        """For a ``/v1/*`` request: the caller's key digest (None without keys), or 401/429/503."""
        key = None
        if self.keys.required:
            key = self.keys.check(authorization)
            await self.quota.take(key, chat=chat)
        self.admission.check_open()
        return key

    def check_ops(self, authorization: str | None) -> None:
        """For ``/health`` and ``/metrics``: a known key when ``protect_metrics``, else anyone."""
        if self.keys.required and self.protect_metrics:
            self.keys.check(authorization)
