"""Per-key limits: revoked keys (401), request rate (429 rate_limited), daily token budget (429)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import HELD_OUT, write_library
from fastapi.testclient import TestClient

from coserve.config import ApiKey, load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError, TooManyRequests
from coserve.server.app import create_app
from coserve.server.auth import hash_key
from coserve.server.quota import DAY_S, Quota

URL = "/v1/chat/completions"
KEY, OTHER = "sk-limited", "sk-other"
BODY = {"model": "coserve", "messages": [{"role": "user", "content": HELD_OUT["chat"]}], "max_tokens": 5}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_refused(response: Any, status: int, code: str) -> int:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert KEY not in response.text and hash_key(KEY) not in response.text
    return int(response.headers.get("retry-after", 0))


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_config_accepts_digests_and_entries(tmp_path: Any) -> None:
    keys = [hash_key("a").upper(), {"sha256": hash_key("b"), "requests_per_minute": 5, "revoked": True}]
    server = load_library(write_library(tmp_path, server={"api_keys": keys})).server
    assert server.api_keys == (
        ApiKey(sha256=hash_key("a")),
        ApiKey(sha256=hash_key("b"), requests_per_minute=5, revoked=True),
    )
    bad = [
        ({"api_keys": [{"sha256": "sk-plain"}]}, r"server\.api_keys\[0\]\.sha256"),
        ({"api_keys": [{"sha256": hash_key("a"), "tokens_per_dai": 3}]}, "tokens_per_dai: unknown key"),
        ({"api_keys": [{"sha256": hash_key("a"), "requests_per_minute": 0}]}, "requests_per_minute"),
        ({"api_keys": [hash_key("a"), {"sha256": hash_key("a").upper()}]}, r"api_keys\[1\] repeats"),
    ]
    for server_section, message in bad:
        with pytest.raises(ConfigError, match=message) as error:
            load_library(write_library(tmp_path, server=server_section))
        assert "sk-plain" not in str(error.value)


def test_revoked_key(make_engine: Callable[..., Engine]) -> None:
    keys = [{"sha256": hash_key(KEY), "revoked": True}, hash_key(OTHER)]
    with TestClient(create_app(make_engine(server={"api_keys": keys}))) as client:
        assert_refused(client.post(URL, json=BODY, headers=bearer(KEY)), 401, "revoked_api_key")
        assert_refused(client.get("/v1/models", headers=bearer(KEY)), 401, "revoked_api_key")
        assert_refused(client.post(URL, json=BODY, headers=bearer("sk-wrong")), 401, "invalid_api_key")
        assert client.post(URL, json=BODY, headers=bearer(OTHER)).status_code == 200


def test_request_rate(make_engine: Callable[..., Engine]) -> None:
    keys = [{"sha256": hash_key(KEY), "requests_per_minute": 3}, hash_key(OTHER)]
    app = create_app(make_engine(server={"api_keys": keys}))
    with TestClient(app) as client:
        assert client.post(URL, json=BODY, headers=bearer(KEY)).status_code == 200
        assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200  # every /v1 request counts
        assert client.post(URL, json=BODY, headers=bearer(KEY)).status_code == 200
        retry = assert_refused(client.post(URL, json=BODY, headers=bearer(KEY)), 429, "rate_limited")
        assert 1 <= retry <= 20  # a third of a minute refills one request
        assert client.post(URL, json=BODY, headers=bearer(OTHER)).status_code == 200  # other keys unaffected
        assert client.get("/health").status_code == 200  # not a /v1 request: not counted
        assert 'coserve_requests_total{status="429"}' in client.get("/metrics").text
        assert app.state.admission.pending == 0


def test_token_budget(make_engine: Callable[..., Engine]) -> None:
    keys = [{"sha256": hash_key(KEY), "tokens_per_day": 12}, hash_key(OTHER)]
    app = create_app(make_engine(server={"api_keys": keys}))
    quota: Quota = app.state.quota
    with TestClient(app) as client:
        first = client.post(URL, json=BODY, headers=bearer(KEY))
        assert first.status_code == 200
        spent = first.json()["usage"]["total_tokens"]
        assert quota.used(hash_key(KEY)) == spent
        if spent < 12:  # a streamed request counts too (its usage comes with the last chunk)
            streamed = client.post(URL, json={**BODY, "stream": True}, headers=bearer(KEY))
            assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
            assert quota.used(hash_key(KEY)) > spent
        assert quota.used(hash_key(KEY)) >= 12
        retry = assert_refused(client.post(URL, json=BODY, headers=bearer(KEY)), 429, "token_budget_exceeded")
        assert 1 <= retry <= DAY_S
        assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200  # the budget bounds chat only
        assert client.post(URL, json=BODY, headers=bearer(OTHER)).status_code == 200
        assert quota.used(hash_key(OTHER)) == 0  # keys without a budget are not counted


def test_bucket_refills() -> None:
    clock = Clock(100.0)
    quota = Quota([ApiKey(sha256=hash_key(KEY), requests_per_minute=2)], clock=clock)
    digest = hash_key(KEY)
    quota.check(digest, chat=True)
    quota.check(digest, chat=False)
    with pytest.raises(TooManyRequests) as refused:
        quota.check(digest, chat=True)
    assert (refused.value.code, refused.value.retry_after) == ("rate_limited", 30)
    clock.now += 15.0  # half a request refilled
    with pytest.raises(TooManyRequests) as refused:
        quota.check(digest, chat=True)
    assert refused.value.retry_after == 15
    clock.now += 15.0
    quota.check(digest, chat=True)
    clock.now += 3600.0  # a long pause refills only up to the burst (the per-minute figure)
    quota.check(digest, chat=True)
    quota.check(digest, chat=True)
    with pytest.raises(TooManyRequests):
        quota.check(digest, chat=True)
    quota.check(hash_key("unlimited"), chat=True)  # unknown to the quota: never limited


def test_budget_resets_at_utc_midnight() -> None:
    wall = Clock(20000 * DAY_S + DAY_S - 90.5)  # 90.5 s before a UTC midnight
    quota = Quota([ApiKey(sha256=hash_key(KEY), tokens_per_day=100)], wall=wall)
    digest = hash_key(KEY)
    quota.check(digest, chat=True)
    quota.spend(digest, 60)
    quota.check(digest, chat=True)  # 60 < 100: still allowed, even if this one goes over
    quota.spend(digest, 60)
    quota.check(digest, chat=False)  # not a chat request: the budget does not apply
    with pytest.raises(TooManyRequests) as refused:
        quota.check(digest, chat=True)
    assert (refused.value.code, refused.value.retry_after) == ("token_budget_exceeded", 91)
    wall.now += 91.0  # the next UTC day
    assert quota.used(digest) == 0
    quota.check(digest, chat=True)
    quota.spend(digest, 5)
    assert quota.used(digest) == 5
