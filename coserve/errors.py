"""The one exception tree of coserve; each leaf maps to one HTTP status and an OpenAI-style body.

    CoserveError
    ├── ConfigError                 library file, asset or router directory is invalid (startup)
    │   └── AssetError              a model file is missing or its sha256 differs
    ├── RequestError                the caller's fault: 4xx
    │   ├── InvalidRequest          400  malformed body, bad field
    │   ├── Unauthorized            401  missing or unknown API key
    │   ├── NotFound                404  unknown model / expert
    │   ├── ContextTooLong          413  prompt longer than the expert's context
    │   └── UnprocessableRequest    422  well-formed but semantically invalid (sampling ranges,
    │       └── InfeasibleConstraints      constraints no expert satisfies)
    ├── TooManyRequests             429  admission bound reached; retry after ``retry_after`` s
    └── ServiceError                the server's fault: 5xx
        ├── ExpertLoadError         503  an expert failed to load (or is in backoff)
        ├── Draining                503  the server is shutting down; retry after ``retry_after`` s
        ├── ServiceUnavailable      503  a shared service (a cluster's quota, its decision log) does
        │                                not answer; retry after ``retry_after`` s
        └── ExpertFailed            502  an expert raised while generating

An error's ``param`` names the offending field, ``code`` is a stable machine-readable string;
``retry_after`` (whole seconds), when set, leaves as the ``Retry-After`` header; the classes that
ask the client to come back later give it a default, which a raise may override.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AssetError",
    "ConfigError",
    "ContextTooLong",
    "CoserveError",
    "Draining",
    "ExpertFailed",
    "ExpertLoadError",
    "InfeasibleConstraints",
    "InvalidRequest",
    "NotFound",
    "RequestError",
    "ServiceError",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UnprocessableRequest",
]


class CoserveError(Exception):
    """Base of every error coserve raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    retry_after: int | None = None  # seconds; sent as the Retry-After header when set

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error body."""
        return {"retry-after": str(self.retry_after)} if self.retry_after is not None else {}

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ConfigError(CoserveError):
    """The library file or another configuration input is invalid."""

    code = "config_error"


class AssetError(ConfigError):
    """A model file is missing, incomplete, or its hash differs from the pinned one."""

    code = "asset_error"


class RequestError(CoserveError):
    """The request is wrong; retrying it unchanged will fail again."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(RequestError):
    """Malformed JSON, missing or mistyped fields."""


class Unauthorized(RequestError):
    """No API key, or one the server does not know (``missing_api_key`` / ``invalid_api_key``)."""

    status = 401
    code = "invalid_api_key"


class NotFound(RequestError):
    """The named model or expert does not exist."""

    status = 404
    code = "model_not_found"


class ContextTooLong(RequestError):
    """The prompt does not fit the chosen expert's context window."""

    status = 413
    code = "context_length_exceeded"


class UnprocessableRequest(RequestError):
    """Well-formed but not acceptable: out-of-range sampling values, empty content."""

    status = 422
    code = "unprocessable"


class InfeasibleConstraints(UnprocessableRequest):
    """No expert satisfies the request's constraint flags; ``param`` names the constraint."""

    code = "infeasible_constraints"


class TooManyRequests(CoserveError):
    """More requests are admitted than the server's bound allows; the client should retry later."""

    status = 429
    type = "rate_limit_exceeded"
    code = "too_many_requests"
    retry_after = 1


class ServiceError(CoserveError):
    """The server could not serve a valid request."""

    status = 500
    type = "server_error"
    code = "internal_error"


class ExpertLoadError(ServiceError):
    """An expert's runtime could not be loaded."""

    status = 503
    code = "expert_unavailable"


class ServiceUnavailable(ServiceError):
    """A service the request needs (a cluster's shared quota or decision log) did not answer."""

    status = 503
    code = "service_unavailable"
    retry_after = 5


class ExpertFailed(ServiceError):
    """An expert's runtime raised or returned an error while generating."""

    status = 502
    code = "expert_failed"


class Draining(ServiceError):
    """The server is shutting down and admits no new request."""

    status = 503
    code = "draining"
    retry_after = 5
