"""``coserve serve --ray [ADDRESS]`` and ``coserve deploy --ray-config OUT.yaml`` /
``--rayservice OUT.yaml``: the library on a Ray Serve cluster, now or as the files Ray's and
KubeRay's tools take. The work is coserve.distributed's (ray_app, ray_run, rayservice); this module
parses, writes and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coserve.cli.common import DEFAULT_SHUTDOWN_S, Subcommands, add_library_arg, tcp_port
from coserve.errors import ConfigError

if TYPE_CHECKING:
    from coserve.distributed.ray_app import AppArgs

__all__ = ["RAY_TESTED", "add_deploy_parser", "add_ray_arguments", "cmd_deploy", "cmd_serve_ray", "write_whole"]

RAY_TESTED = "2.60.0"  # the Ray version coserve's Ray tests run with (a RayService's rayVersion without Ray here)


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """The Ray options of ``serve`` and ``deploy``: the cluster file and the ingress's autoscaling."""
    p.add_argument("--cluster", help="cluster file (YAML, as for `coserve plan`); default: one node, 'local'")
    # None (not given) lets ``serve`` tell a flag meant for Ray from the default; AppArgs has the defaults.
    p.add_argument("--min-replicas", type=int, help="ingress replicas at least (default 1)")
    p.add_argument("--max-replicas", type=int, help="ingress replicas at most (default 4)")


def _check_replicas(given_low: int | None, given_high: int | None) -> None:
    """ConfigError naming the flags (a default named as such) when the ingress's bounds are out of order."""
    from coserve.distributed.ray_app import AppArgs

    low = AppArgs.min_replicas if given_low is None else given_low
    high = AppArgs.max_replicas if given_high is None else given_high
    if low < 1:
        raise ConfigError(f"--min-replicas ({low}) must be at least 1")
    if low > high and given_low is None:
        raise ConfigError(f"--max-replicas ({high}) is below --min-replicas ({low}, its default)")
    if low > high:
        default = ", its default" if given_high is None else ""
        raise ConfigError(f"--min-replicas ({low}) is above --max-replicas ({high}{default})")


def _app_args(args: argparse.Namespace) -> AppArgs:
    from coserve.distributed.ray_app import AppArgs

    _check_replicas(args.min_replicas, args.max_replicas)
    return AppArgs.from_dict(
        {
            "library": args.library,
            "cluster": args.cluster,
            **{
                k: v
                for k, v in [("min_replicas", args.min_replicas), ("max_replicas", args.max_replicas)]
                if v is not None
            },
        }
    )


def cmd_serve_ray(args: argparse.Namespace) -> int:
    """Run ``coserve serve --ray``."""
    from coserve.distributed.ray_run import serve_on_ray

    app_args = _app_args(args)
    address = None if args.ray == "local" else args.ray
    where = "a local Ray cluster" if address is None else f"the Ray cluster at {address}"
    print(f"coserve: starting on {where}", flush=True)
    drain_s = DEFAULT_SHUTDOWN_S if args.shutdown_timeout is None else args.shutdown_timeout
    interrupted = serve_on_ray(app_args, address, args.host, args.port, drain_s)
    return 130 if interrupted else 0  # Ctrl-C: 130, as the single process (coserve.cli.serving)


def cmd_deploy(args: argparse.Namespace) -> int:
    """Run ``coserve deploy --ray-config OUT.yaml`` and/or ``--rayservice OUT.yaml``: every check runs
    before anything is written, and each file is written whole or not at all."""
    import yaml

    from coserve.distributed.ray_app import placed_experts
    from coserve.distributed.ray_run import ray_config

    if args.ray_config is None and args.rayservice is None:
        raise ConfigError("deploy: give --ray-config OUT.yaml (Ray Serve config) and/or --rayservice OUT.yaml")
    if args.rayservice is not None and not args.image:
        raise ConfigError("--rayservice needs --image IMAGE: the container image with coserve[ray] and the experts")
    app_args = _app_args(args)
    cluster, placed = placed_experts(app_args)  # a library or cluster file that cannot be planned fails here
    config = ray_config(app_args, args.host, args.port)
    texts: dict[str, str] = {}
    if args.ray_config is not None:
        texts[args.ray_config] = yaml.safe_dump(config, sort_keys=False)
    if args.rayservice is not None:
        from coserve.distributed.rayservice import manifest_yaml

        texts[args.rayservice] = manifest_yaml(_rayservice(app_args, config, args.image))
    for path, text in texts.items():
        write_whole(Path(path), text)
    for node, experts in placed.items():
        print(f"{node}: {', '.join(experts)}")
    if args.ray_config is not None:
        print(f"coserve: wrote {args.ray_config}: `serve deploy {args.ray_config}`, or a RayService's serveConfigV2")
    if args.rayservice is not None:
        print(f"coserve: wrote {args.rayservice}: `kubectl apply -f {args.rayservice}` ({len(cluster.nodes)} pods)")
    return 0


def _rayservice(app_args: AppArgs, config: dict[str, Any], image: str) -> dict[str, Any]:
    """The RayService manifest around this Serve config (coserve.distributed.rayservice)."""
    from coserve.distributed.cluster import load_cluster
    from coserve.distributed.ray_app import local_cluster
    from coserve.distributed.ray_host import served_library
    from coserve.distributed.rayservice import rayservice_manifest

    library = served_library(app_args.library)
    cluster = load_cluster(app_args.cluster) if app_args.cluster else local_cluster(library)
    log_file = None
    if library.server.log.path is not None:  # a named file: it gets a volume; the default one goes with the pod
        from coserve.server.app import decision_log_file

        log_file = decision_log_file(library).resolve()
    return rayservice_manifest(
        config, cluster, image, log_file=log_file, log_node=app_args.ingress_node, ray_version=_ray_version()
    )


def _ray_version() -> str:
    """The installed Ray's version (what the image should carry), else the one coserve is tested with."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return RAY_TESTED


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a file beside it, renamed over it once complete: a failure
    leaves no partial file (and an existing one as it was). An OSError becomes a ConfigError."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ConfigError(f"{path}: cannot write it ({exc.strerror or exc})") from None


def add_deploy_parser(sub: Subcommands) -> None:
    p = sub.add_parser("deploy", help="write the Ray Serve config (serve deploy) and/or a KubeRay RayService")
    add_library_arg(p)
    p.add_argument("--ray-config", help="where to write the Ray Serve config (YAML: serve deploy / serve run)")
    p.add_argument("--rayservice", help="where to write the KubeRay RayService manifest (YAML; needs --image)")
    p.add_argument("--image", help="the container image of every pod of the RayService (coserve[ray] and the experts)")
    p.add_argument("--host", default="0.0.0.0", help="HTTP host of Ray Serve's proxies (default 0.0.0.0)")
    p.add_argument("--port", type=tcp_port, default=8000)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_deploy)
