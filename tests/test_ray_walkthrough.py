"""What the session-9 walk-through of docs/cluster.md found (no cluster is started here).

- ``coserve serve --ray ADDRESS`` against a cluster it cannot join ended in Ray's traceback; with
  Ray 2.60 the common cause is token authentication, which ``ray start --head`` turns on by itself
  when a token file exists: the error now says so and exits 2 like every other bad start.
- An expert-host replica on a Ray node whose ``coserve-node-*`` resources the application's cluster
  file does not list (a Serve config written without ``--cluster``) failed with an unpacking
  ``ValueError``: it now names the node resources and the file's nodes.
- Session 12's walk: ``coserve serve --ray HOST:PORT`` with nothing listening there waited on Ray's
  own connection retries with no end of its own (killed after 90 s); the port is now tried first,
  for a few seconds, and nothing answering there is the same one-line error.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_library

from coserve.distributed.cluster import Cluster, NodeSpec
from coserve.distributed.ray_node_host import nodes_in_file
from coserve.distributed.ray_run import connect_error
from coserve.errors import ConfigError

REFUSED = ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")


def test_a_token_file_and_no_auth_mode_point_at_ray_auth_mode() -> None:
    error = connect_error("10.0.0.5:6379", REFUSED, {}, token_file=True)
    assert str(error).startswith("cannot join the Ray cluster at 10.0.0.5:6379: Failed to connect")
    assert "set RAY_AUTH_MODE=token" in str(error)


@pytest.mark.parametrize(("env", "token_file"), [({}, False), ({"RAY_AUTH_MODE": "token"}, True)])
def test_otherwise_the_error_asks_for_the_address(env: dict[str, str], token_file: bool) -> None:
    error = connect_error("10.0.0.5:6379", REFUSED, env, token_file=token_file)
    assert "RAY_AUTH_MODE" not in str(error)
    assert "is `ray start --head` running there" in str(error)


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A loopback port something listens on (a Ray head for the check before ``ray.init``)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then closed: free, and refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_serve_on_ray_turns_a_failed_join_into_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, listening_port: int
) -> None:
    ray = pytest.importorskip("ray")
    from coserve.distributed.ray_app import AppArgs
    from coserve.distributed.ray_run import serve_on_ray

    def refuse(**kwargs: Any) -> None:
        raise REFUSED

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    address = f"127.0.0.1:{listening_port}"
    with pytest.raises(ConfigError, match=rf"^cannot join the Ray cluster at {address}: Failed to connect"):
        serve_on_ray(AppArgs(), address, "127.0.0.1", 8000)


def test_serve_ray_at_an_address_where_nothing_listens_stops_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    ray = pytest.importorskip("ray")
    from coserve.cli import main

    def joined(**kwargs: Any) -> None:  # Ray's retries on a closed port ran on with no end of their own
        raise AssertionError("ray.init was called for an address where nothing listens")

    monkeypatch.setattr(ray, "init", joined)
    address = f"127.0.0.1:{closed_port}"
    assert main(["serve", "--ray", address, "--library", str(write_library(tmp_path))]) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: cannot join the Ray cluster at {address}: nothing answers at {address} "
        "(Connection refused) (is `ray start --head` running there, and is ADDRESS its GCS address, HOST:PORT?)\n"
    )


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("[::1]:6379", ("::1", 6379)),
        ("ray://head.example:10002", ("head.example", 10002)),
        ("ray://head.example", ("head.example", 10001)),  # Ray Client's default port
        ("auto", None),  # Ray finds the address on this machine
    ],
)
def test_the_address_tried_before_joining(address: str, endpoint: tuple[str, int] | None) -> None:
    from coserve.distributed.ray_run import head_endpoint

    assert head_endpoint(address) == endpoint


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:http", "10.0.0.5:70000", "http://10.0.0.5:6379"])
def test_an_address_that_is_not_host_and_port_is_refused(address: str) -> None:
    from coserve.distributed.ray_run import head_endpoint

    with pytest.raises(ConfigError) as caught:
        head_endpoint(address)
    assert str(caught.value) == (
        f"the Ray address {address!r} is not HOST:PORT (the head's GCS address; port 6379 by default), "
        "ray://HOST[:PORT] or auto"
    )


def test_a_ray_node_carries_only_nodes_of_the_cluster_file() -> None:
    cluster = Cluster(nodes=(NodeSpec(name="node-a", ram=2**30), NodeSpec(name="node-b", ram=2**30)))
    assert nodes_in_file(["node-a", "node-z"], cluster) == ["node-a"]
    local = Cluster(nodes=(NodeSpec(name="local", ram=2**30),))
    with pytest.raises(ConfigError) as caught:
        nodes_in_file(["node-a"], local)
    assert str(caught.value).startswith(
        "this Ray node carries the resource of node(s) node-a, which the application's cluster file lacks "
        "(its nodes: local)"
    )
