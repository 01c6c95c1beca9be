"""server.cors_origins: browser pages on the named origins may call the API; by default none may."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.server.app import create_app

PAGE = "https://app.example.com"
CHAT = {"model": "coserve", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}


def test_named_origins_may_call_and_read_who_answered(make_engine: Callable[..., Engine]) -> None:
    app = create_app(make_engine(server={"cors_origins": [PAGE]}))
    with TestClient(app) as client:
        allowed = client.options("/v1/chat/completions", headers={"origin": PAGE, **PREFLIGHT})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == PAGE
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options("/v1/chat/completions", headers={"origin": "https://evil.example", **PREFLIGHT})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers

        answer = client.post("/v1/chat/completions", json=CHAT, headers={"origin": PAGE})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == PAGE
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "x-coserve-expert" in exposed and answer.headers["x-coserve-expert"]
        refused = client.post("/v1/chat/completions", json={**CHAT, "messages": []}, headers={"origin": PAGE})
        assert refused.status_code == 400 and refused.headers["access-control-allow-origin"] == PAGE
        assert refused.json()["error"]["param"] == "messages"  # the page can read why


def test_no_origin_by_default(make_engine: Callable[..., Engine]) -> None:
    with TestClient(create_app(make_engine())) as client:
        preflight = client.options("/v1/chat/completions", headers={"origin": PAGE, **PREFLIGHT})
        assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
        answer = client.post("/v1/chat/completions", json=CHAT, headers={"origin": PAGE})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "https://a.example/path", ""])
def test_what_is_not_an_origin_is_refused_at_load(make_engine: Callable[..., Engine], origin: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.cors_origins.*is not an origin: scheme://host\[:port\]"):
        make_engine(server={"cors_origins": ["*", origin]})
