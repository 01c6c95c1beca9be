"""Running the Ray Serve application: on a cluster now (``coserve serve --ray``), or as the config
``serve deploy`` and a KubeRay RayService take (``coserve deploy --ray-config``).

A local cluster (no address) is started with every node's ``coserve-node-<node>`` resource on this
one machine; a cluster at an address must already have a Ray node carrying each such resource, and
a missing one is a clear error with the ``ray start`` line that adds it. The address's port is tried
for a few seconds before ``ray.init``, whose own retries on a port where nothing listens have no end.
A stop (SIGINT/SIGTERM) drains first through the ``placement`` deployment (``drain``: the ingresses
refuse new requests and their admitted ones end, within the deadline). This module knows nothing else
about the deployments themselves (coserve.distributed.ray_app).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from coserve.distributed.ray_app import APP_BUILDER, AppArgs, node_resource, node_resources, require_ray
from coserve.distributed.ray_host import served_library
from coserve.distributed.ray_node_host import HOST_RESOURCE
from coserve.errors import ConfigError

__all__ = [
    "APP_NAME",
    "connect_error",
    "drain",
    "head_endpoint",
    "host_units_short",
    "missing_nodes",
    "ray_config",
    "serve_on_ray",
    "wanted_nodes",
]

log = logging.getLogger("coserve.distributed")

APP_NAME = "coserve"
DRAIN_POLL_S = 0.5  # how often a stop asks the placement controller whether the ingresses drained
LAST_ROWS_S = 1.0  # after the drain: the ingresses' last decision-log rows (sent every 0.2 s) arrive
RAY_AUTH_MODE = "RAY_AUTH_MODE"  # Ray's switch for token authentication ("token" or "disabled")
RAY_CLIENT_PORT = 10001  # Ray Client's port when a ray:// address names none
CONNECT_TIMEOUT_S = 5.0  # how long the address's port may take to accept a connection before ray.init
_ADDRESS_HINT = " (is `ray start --head` running there, and is ADDRESS its GCS address, HOST:PORT?)"


def wanted_nodes(args: AppArgs) -> list[str]:
    """The node names of the cluster file (``local`` when there is none)."""
    from coserve.distributed.cluster import load_cluster

    return [n.name for n in load_cluster(args.cluster).nodes] if args.cluster else ["local"]


def missing_nodes(nodes: list[str], resources: Mapping[str, float]) -> list[str]:
    """The nodes whose ``coserve-node-<node>`` resource no Ray node offers."""
    return [n for n in nodes if resources.get(node_resource(n), 0) <= 0]


def host_units_short(nodes: list[str], resources: Mapping[str, float]) -> int:
    """How many ``coserve-host`` units the Ray nodes lack for one expert-host replica per node."""
    return max(0, len(nodes) - int(resources.get(HOST_RESOURCE, 0)))


def connect_error(address: str, reason: BaseException, env: Mapping[str, str], token_file: bool) -> ConfigError:
    """The error for a Ray cluster at ``address`` that ``ray.init`` could not join. Ray 2.60's
    ``ray start --head`` turns token authentication on by itself when a token file
    (``~/.ray/auth_token``, which a local ``ray.init`` writes) exists, but a client given an explicit
    address only uses it with ``RAY_AUTH_MODE=token``: without it the join fails as a connection error.
    """
    message = f"cannot join the Ray cluster at {address}: {reason}"
    if env.get(RAY_AUTH_MODE) is None and token_file:
        message += (
            f" (a Ray token file exists here, so `ray start --head` may have turned token authentication on:"
            f" set {RAY_AUTH_MODE}=token, as for every `ray start --address`, or start the cluster with"
            f" {RAY_AUTH_MODE}=disabled)"
        )
    else:
        message += _ADDRESS_HINT
    return ConfigError(message)


def head_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port ``ray.init(address)`` connects to: the head's GCS for ``HOST:PORT``, Ray
    Client for ``ray://HOST[:PORT]``; None for ``auto`` (Ray finds the address on this machine)."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, _, port_text = rest.rpartition(":")
    if address.startswith("ray://") and not port_text.isdigit():
        host, port_text = rest, str(RAY_CLIENT_PORT)
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address: [::1]:6379
    if not host or "/" in host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(
            f"the Ray address {address!r} is not HOST:PORT (the head's GCS address; port 6379 by default), "
            "ray://HOST[:PORT] or auto"
        )
    return host, int(port_text)


def _unreachable(address: str) -> ConfigError | None:
    """The error for an address whose port accepts no connection within CONNECT_TIMEOUT_S."""
    endpoint = head_endpoint(address)
    if endpoint is None:
        return None
    host, port = endpoint
    try:
        socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
    except TimeoutError:
        reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except OSError as exc:  # refused, no route, a name that does not resolve
        reason = exc.strerror or str(exc)
    else:
        return None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ConfigError(
        f"cannot join the Ray cluster at {address}: nothing answers at {where} ({reason})" + _ADDRESS_HINT
    )


def ray_config(args: AppArgs, host: str, port: int) -> dict[str, Any]:
    """The Ray Serve config (``serve deploy`` / a RayService's ``serveConfigV2``) for these arguments."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {"name": APP_NAME, "route_prefix": "/", "import_path": APP_BUILDER, "args": args.to_dict()},
        ],
    }


def _ray_token_file() -> bool:
    """Whether Ray's token file is here (``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def drain(controller: Any, deadline_s: float, cut: threading.Event | None = None) -> bool:
    """A stop's drain through the ``placement`` deployment's ``controller`` handle: every ingress
    replica refuses new requests (503 ``draining``) from its next sync, then this waits until none
    holds an admitted request, at most ``deadline_s``, and stops waiting once ``cut`` is set (a
    second Ctrl-C). Whether they drained in time."""
    end = time.monotonic() + deadline_s
    cut = cut or threading.Event()
    try:
        controller.begin_drain.remote().result(timeout_s=max(deadline_s, 1.0))
        while time.monotonic() < end and not cut.is_set():
            if controller.drained.remote().result(timeout_s=max(end - time.monotonic(), 1.0)):
                cut.wait(LAST_ROWS_S)
                return True
            cut.wait(DRAIN_POLL_S)
    except Exception as exc:  # the controller is gone or slow: stop without waiting more
        log.warning("drain: %s", exc)
    return False


def serve_on_ray(args: AppArgs, address: str | None, host: str, port: int, drain_s: float = 30.0) -> bool:
    """Start the application on a Ray cluster (a local one when ``address`` is None) and serve until
    SIGINT/SIGTERM; then drain (answers in flight end, for at most ``drain_s`` seconds, while new
    requests get 503; a second SIGINT stops waiting) and shut Serve down (a local cluster goes with
    it). Whether a SIGINT stopped it (the command then exits 130, as the single process does)."""
    require_ray()
    # Ray reports usage to its makers unless told not to; coserve sends nothing off the machine
    # on its own initiative (an operator may still set RAY_USAGE_STATS_ENABLED=1).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from coserve.distributed.ray_app import build_app
    from coserve.router.router import check_trained

    nodes = wanted_nodes(args)
    # A bad library file, trained router or router.online (a budget it cannot hold) fails here, before any
    # cluster starts, in the one-host server's words: in the cluster each would fail a replica's start,
    # which Ray Serve retries and then reports as a failed deployment, a traceback.
    check_trained(served_library(args.library))
    if address is None:
        ray.init(
            address="local",
            resources=node_resources(*nodes),
            include_dashboard=False,
        )
    else:
        unreachable = _unreachable(address)
        if unreachable is not None:  # ray.init would retry with no end of its own
            raise unreachable
        try:
            ray.init(address=address)
        except ConnectionError as exc:  # Ray's own, for a cluster it cannot reach or is refused by
            raise connect_error(address, exc, os.environ, _ray_token_file()) from None
    # After ray.init (whose own handler would end the process at once): a signal during the start
    # still shuts Serve down cleanly once the application is up.
    stop, cut, interrupts = threading.Event(), threading.Event(), []

    def on_signal(sig: int, frame: Any) -> None:
        if sig == signal.SIGINT:
            interrupts.append(sig)
            if len(interrupts) == 2:  # the single process's words (coserve.cli.serving)
                print("coserve: second interrupt: cutting the running requests", file=sys.stderr, flush=True)
                cut.set()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        missing = missing_nodes(nodes, ray.cluster_resources())
        if missing:
            flags = ", ".join(f'"{r}": {v:g}' for r, v in node_resources(missing[0]).items())
            raise ConfigError(
                f"no Ray node offers the resource of node(s) {', '.join(missing)}: start each on its machine "
                f"with ray start --address {address or 'HEAD:6379'} --resources='{{{flags}}}' (for {missing[0]})"
            )
        short = host_units_short(nodes, ray.cluster_resources())
        if short:
            flags = ", ".join(f'"{r}": {v:g}' for r, v in node_resources("NAME").items())
            raise ConfigError(
                f"the Ray nodes lack {short} unit(s) of the {HOST_RESOURCE} resource (one per cluster-file node "
                f"they stand for): start each with --resources='{{{flags}}}'"
            )
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args.to_dict()), name=APP_NAME, route_prefix="/")
        print(f"coserve: ready on http://{host}:{port}/v1", flush=True)
        stop.wait()
        print(f"coserve: draining (at most {drain_s:g} s)", flush=True)
        from coserve.distributed.ray_placement import PLACEMENT

        if not drain(serve.get_deployment_handle(PLACEMENT, app_name=APP_NAME), drain_s, cut):
            print("coserve: requests still in flight are cut", flush=True)
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()
    return bool(interrupts)
