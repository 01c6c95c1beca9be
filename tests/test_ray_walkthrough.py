"""What the session-9 walk-through of docs/cluster.md found (no cluster is started here).

- ``coserve serve --ray ADDRESS`` against a cluster it cannot join ended in Ray's traceback; with
  Ray 2.60 the common cause is token authentication, which ``ray start --head`` turns on by itself
  when a token file exists: the error now says so and exits 2 like every other bad start.
- An expert-host replica on a Ray node whose ``coserve-node-*`` resources the application's cluster
  file does not list (a Serve config written without ``--cluster``) failed with an unpacking
  ``ValueError``: it now names the node resources and the file's nodes.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

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


def test_serve_on_ray_turns_a_failed_join_into_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from coserve.distributed.ray_app import AppArgs
    from coserve.distributed.ray_run import serve_on_ray

    def refuse(**kwargs: Any) -> None:
        raise REFUSED

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr("coserve.distributed.ray_run.unanswered", lambda address: None)  # a GCS answers there
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ConfigError, match=r"^cannot join the Ray cluster at 10\.0\.0\.5:6379: Failed to connect"):
        serve_on_ray(AppArgs(), "10.0.0.5:6379", "127.0.0.1", 8000)


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


def test_an_address_where_nothing_answers_is_refused_before_ray_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session 12's walk saw it and session 13's measured it: ``coserve serve --ray HOST:PORT`` with
    nothing listening there sat in Ray's GCS retries for minutes (killed after 150 s, no exit)."""
    ray = pytest.importorskip("ray")
    from coserve.distributed.ray_app import AppArgs
    from coserve.distributed.ray_run import serve_on_ray

    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def waits(**kwargs: Any) -> None:
        raise AssertionError("ray.init was called: it retries for minutes")

    monkeypatch.setattr(ray, "init", waits)
    with pytest.raises(ConfigError) as caught:
        serve_on_ray(AppArgs(), f"127.0.0.1:{port}", "127.0.0.1", 8000)
    assert str(caught.value).startswith(f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers there (")
    assert "is `ray start --head` running there" in str(caught.value)
