"""``coserve serve --ray [ADDRESS]`` and ``coserve deploy --ray-config OUT.yaml``: the library on a
Ray Serve cluster. The work is coserve.distributed's (ray_app, ray_run); this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.cli.common import Subcommands, add_library_arg

if TYPE_CHECKING:
    from coserve.distributed.ray_app import AppArgs

__all__ = ["add_deploy_parser", "add_ray_arguments", "cmd_deploy", "cmd_serve_ray"]


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """The Ray options of ``serve`` and ``deploy``: the cluster file and the ingress's autoscaling."""
    p.add_argument("--cluster", help="cluster file (YAML, as for `coserve plan`); default: one node, 'local'")
    p.add_argument("--min-replicas", type=int, default=1, help="ingress replicas at least (default 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="ingress replicas at most (default 4)")


def _app_args(args: argparse.Namespace) -> AppArgs:
    from coserve.distributed.ray_app import AppArgs

    return AppArgs.from_dict(
        {
            "library": args.library,
            "cluster": args.cluster,
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
        }
    )


def cmd_serve_ray(args: argparse.Namespace) -> int:
    """Run ``coserve serve --ray``."""
    from coserve.distributed.ray_run import serve_on_ray

    app_args = _app_args(args)
    address = None if args.ray == "local" else args.ray
    where = "a local Ray cluster" if address is None else f"the Ray cluster at {address}"
    print(f"coserve: starting on {where}", flush=True)
    serve_on_ray(app_args, address, args.host, args.port)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Run ``coserve deploy --ray-config OUT.yaml``."""
    import yaml

    from coserve.distributed.ray_app import placed_experts
    from coserve.distributed.ray_run import ray_config

    app_args = _app_args(args)
    _, placed = placed_experts(app_args)  # a library or cluster file that cannot be planned fails here
    config = ray_config(app_args, args.host, args.port)
    Path(args.ray_config).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for node, experts in placed.items():
        print(f"{node}: {', '.join(experts)}")
    print(f"coserve: wrote {args.ray_config}: `serve deploy {args.ray_config}`, or a RayService's serveConfigV2")
    return 0


def add_deploy_parser(sub: Subcommands) -> None:
    p = sub.add_parser("deploy", help="write the Ray Serve config (serve deploy / KubeRay RayService)")
    add_library_arg(p)
    p.add_argument("--ray-config", required=True, help="where to write the Ray Serve config (YAML)")
    p.add_argument("--host", default="0.0.0.0", help="HTTP host of Ray Serve's proxies (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_deploy)
