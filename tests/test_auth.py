"""API keys: missing / wrong / right keys, keys from the environment, protected metrics, `keys hash`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient

from coserve.cli import main
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.server.app import create_app
from coserve.server.auth import KeyRing, hash_key

URL = "/v1/chat/completions"
KEY = "sk-coserve-test-key"
BODY = {"model": "coserve", "messages": [{"role": "user", "content": HELD_OUT["chat"]}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextmanager
def serve(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        yield client


def assert_unauthorized(response: Any, code: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert KEY not in response.text and hash_key(KEY) not in response.text


def test_keys_from_config(make_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    engine = make_engine(server={"api_keys": [hash_key(KEY).upper(), hash_key("other")]})
    with serve(engine) as client:
        assert_unauthorized(client.post(URL, json=BODY), "missing_api_key")
        assert_unauthorized(client.get("/v1/models"), "missing_api_key")
        assert_unauthorized(client.get("/v1/models/small"), "missing_api_key")
        assert_unauthorized(client.post(URL, json=BODY, headers={"authorization": KEY}), "missing_api_key")
        assert_unauthorized(client.post(URL, json=BODY, headers=bearer("sk-wrong")), "invalid_api_key")
        assert_unauthorized(client.post(URL, json=BODY, headers=bearer(KEY + "x")), "invalid_api_key")
        assert client.post(URL, json=BODY, headers=bearer(KEY)).status_code == 200
        assert client.post(URL, json=BODY, headers=bearer("other")).status_code == 200
        assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200
        assert client.get("/health").status_code == 200  # public unless protect_metrics
        assert client.get("/metrics").status_code == 200
        assert 'coserve_requests_total{status="401"}' in client.get("/metrics").text
        assert client.app.state.admission.pending == 0  # type: ignore[attr-defined]
    assert KEY not in caplog.text


def test_key_from_environment(make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSERVE_TEST_KEYS", f" {KEY} ,second-key,")
    engine = make_engine(server={"api_keys_env": "COSERVE_TEST_KEYS"})
    with serve(engine) as client:
        assert_unauthorized(client.post(URL, json=BODY), "missing_api_key")
        assert_unauthorized(client.post(URL, json=BODY, headers=bearer("sk-wrong")), "invalid_api_key")
        assert client.post(URL, json=BODY, headers=bearer(KEY)).status_code == 200
        assert client.post(URL, json=BODY, headers=bearer("second-key")).status_code == 200


def test_no_keys_means_open(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(server={})  # neither api_keys nor api_keys_env
    with serve(engine) as client:
        assert client.post(URL, json=BODY).status_code == 200


@pytest.mark.parametrize("value", [None, "", " , ,"])
def test_a_key_variable_named_but_empty_stops_the_start(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    # It served without keys: the library asked for keys and got an open server, silently.
    if value is None:
        monkeypatch.delenv("COSERVE_TEST_KEYS", raising=False)
    else:
        monkeypatch.setenv("COSERVE_TEST_KEYS", value)
    engine = make_engine(server={"api_keys_env": "COSERVE_TEST_KEYS"})
    with pytest.raises(ConfigError) as info:
        create_app(engine)
    assert info.value.message == (
        "server.api_keys_env: COSERVE_TEST_KEYS is not set or holds no key, and server.api_keys lists none: "
        "the server would be open to anyone; set COSERVE_TEST_KEYS, or leave api_keys_env out to serve without keys"
    )
    # with a digest listed, an empty variable adds no key and the server still needs one
    engine = make_engine(server={"api_keys_env": "COSERVE_TEST_KEYS", "api_keys": [hash_key(KEY)]})
    with serve(engine) as client:
        assert_unauthorized(client.post(URL, json=BODY), "missing_api_key")


def test_protected_metrics(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(server={"api_keys": [hash_key(KEY)], "protect_metrics": True})
    with serve(engine) as client:
        assert_unauthorized(client.get("/metrics"), "missing_api_key")
        assert_unauthorized(client.get("/health", headers=bearer("nope")), "invalid_api_key")
        assert client.get("/metrics", headers=bearer(KEY)).status_code == 200
        assert client.get("/health", headers=bearer(KEY)).status_code == 200


def test_keyring() -> None:
    ring = KeyRing.from_settings([hash_key("a")], "KEYS", environ={"KEYS": "b, c"})
    assert ring.required
    for key in ("a", "b", "c"):
        ring.check(f"Bearer {key}")
        ring.check(f"bearer  {key} ")
    assert not KeyRing.from_settings([], None, environ={}).required


def test_keys_hash_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "hash", KEY]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(KEY.encode()).hexdigest()
