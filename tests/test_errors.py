"""The error tree's one constructor: ``retry_after`` defaults per class, a raise may override it."""

from __future__ import annotations

import pytest

from coserve.errors import (
    CoserveError,
    Draining,
    ExpertFailed,
    InvalidRequest,
    ServiceUnavailable,
    TooManyRequests,
)


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [(TooManyRequests("busy"), 1), (ServiceUnavailable("down"), 5), (Draining("bye"), 5), (ExpertFailed("x"), None)],
)
def test_retry_after_defaults_per_class(error: CoserveError, retry_after: int | None) -> None:
    assert error.retry_after == retry_after
    assert error.headers() == ({} if retry_after is None else {"retry-after": str(retry_after)})


def test_a_raise_overrides_retry_after_code_and_param() -> None:
    error = Draining("bye", retry_after=30, code="drain_now", param="model")
    assert (error.status, error.retry_after, error.code, error.param) == (503, 30, "drain_now", "model")
    assert error.headers() == {"retry-after": "30"}
    assert Draining("again").retry_after == 5  # the class default is not changed by an override


def test_body_is_openai_shaped() -> None:
    error = InvalidRequest("temperature: not a number", param="temperature")
    assert error.headers() == {}
    assert error.body() == {
        "error": {
            "message": "temperature: not a number",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_request",
        }
    }
