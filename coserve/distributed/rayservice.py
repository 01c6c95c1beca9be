"""The KubeRay RayService manifest for a library on a cluster file (``coserve deploy --rayservice``).

One Kubernetes pod per cluster-file node: the first node is the Ray head group, every other node a
worker group of exactly one pod. Each pod's ``ray start`` carries its node's custom resources
(``coserve-node-<node>`` and one ``coserve-host``, as ``ray_app.node_resources`` gives them), so
the expert-host replica Ray Serve places there serves that node's experts; its container asks
Kubernetes for the node's host memory budget plus a fixed allowance for Ray's own processes and
the ingress (requests equal to limits), and for one GPU when the node has accelerator memory. The
``serveConfigV2`` is the Serve config ``coserve deploy --ray-config`` writes (``ray_run.ray_config``).
When the library names a decision-log file (``server.log.path``), the pod that runs the
``decision-log`` deployment (the ingress node's when the args pin one, else the head) mounts a
persistent volume claim at that file's folder, so the log outlives the pod.

This module builds plain dicts; it knows nothing about Kubernetes clients, Ray or the planner, and
nothing here has been run on a Kubernetes cluster (this project has none to test on).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from coserve.distributed.cluster import Cluster, NodeSpec
from coserve.errors import ConfigError

__all__ = [
    "LOG_CLAIM",
    "POD_ALLOWANCE_BYTES",
    "RAYSERVICE_API",
    "group_name",
    "manifest_yaml",
    "memory_quantity",
    "rayservice_manifest",
    "start_resources",
]

RAYSERVICE_API = "ray.io/v1"
LOG_CLAIM = "coserve-log"  # the persistent volume claim the operator creates for the decision log
# Memory a pod needs beyond the experts' budget: the raylet, the object store Serve uses for its
# handles, the GCS on the head, the ingress and host processes (Python, FastAPI, the router). A
# round allowance, not measured on Kubernetes: an operator with other numbers edits the manifest.
POD_ALLOWANCE_BYTES = 2 * 1024**3
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 6379, 8265, 10001  # Ray's defaults, as KubeRay's examples name them
_MiB = 1024**2


def group_name(node: str) -> str:
    """The node's name as a Kubernetes name (a DNS-1123 label: lowercase letters, digits, ``-``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-")
    return name[:63].rstrip("-") or "node"


def memory_quantity(n_bytes: int) -> str:
    """Bytes as a Kubernetes quantity in MiB, rounded up: ``2147483648`` -> ``"2048Mi"``."""
    return f"{math.ceil(n_bytes / _MiB)}Mi"


def start_resources(node: str) -> str:
    """The ``resources`` value of a pod's ``rayStartParams``: the node's custom resources as the
    quoted JSON string ``ray start --resources`` takes through KubeRay."""
    from coserve.distributed.ray_app import node_resources

    resources = {name: int(units) for name, units in node_resources(node).items()}
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'


def _container(role: str, node: NodeSpec, image: str, port: int, log_dir: str | None) -> dict[str, Any]:
    memory = memory_quantity(node.ram + POD_ALLOWANCE_BYTES)
    limits: dict[str, Any] = {"memory": memory}
    if node.accelerator > 0:
        limits["nvidia.com/gpu"] = 1  # a node with accelerator memory: one GPU (edit for more)
    ports = [{"containerPort": port, "name": "serve"}]
    if role == "head":
        ports = [
            {"containerPort": GCS_PORT, "name": "gcs-server"},
            {"containerPort": DASHBOARD_PORT, "name": "dashboard"},  # KubeRay deploys serveConfigV2 through it
            {"containerPort": CLIENT_PORT, "name": "client"},
            *ports,
        ]
    container: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": image,
        "resources": {"requests": {"memory": memory}, "limits": limits},
        "ports": ports,
    }
    if log_dir is not None:
        container["volumeMounts"] = [{"name": LOG_CLAIM, "mountPath": log_dir}]
    return container


def _pod(role: str, node: NodeSpec, image: str, port: int, log_dir: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [_container(role, node, image, port, log_dir)]}
    if log_dir is not None:
        spec["volumes"] = [{"name": LOG_CLAIM, "persistentVolumeClaim": {"claimName": LOG_CLAIM}}]
    return {"metadata": {"labels": {"coserve-node": group_name(node.name)}}, "spec": spec}


def rayservice_manifest(
    serve_config: dict[str, Any],
    cluster: Cluster,
    image: str,
    *,
    log_file: Path | None,
    log_node: str | None,
    ray_version: str,
    name: str = "coserve",
) -> dict[str, Any]:
    """The RayService for this Serve config on this cluster. ``log_file``: the decision log's file
    when the library names one (its folder is mounted from a volume), else None; ``log_node``: the
    cluster-file node that runs the decision-log deployment (None: the head, the first node)."""
    if not image.strip():
        raise ConfigError("--image: give the container image that holds coserve[ray] and the experts' files")
    names = [group_name(n.name) for n in cluster.nodes]
    for i, kube_name in enumerate(names):
        if kube_name in names[:i]:
            raise ConfigError(
                f"nodes {cluster.nodes[names.index(kube_name)].name!r} and {cluster.nodes[i].name!r} give the "
                f"same Kubernetes name {kube_name!r}: rename one in the cluster file"
            )
    if log_node is not None and log_node not in {n.name for n in cluster.nodes}:
        raise ConfigError(f"ingress_node {log_node!r} is not a node of the cluster file")
    log_holder = log_node or cluster.nodes[0].name
    port = int(serve_config["http_options"]["port"])

    def log_dir(node: NodeSpec) -> str | None:
        return str(log_file.parent) if log_file is not None and node.name == log_holder else None

    head, *workers = cluster.nodes
    head_group = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "resources": start_resources(head.name)},
        "template": _pod("head", head, image, port, log_dir(head)),
    }
    worker_groups = [
        {
            "groupName": group_name(node.name),
            "replicas": 1,  # one pod per cluster-file node: the node's resources exist once
            "minReplicas": 1,
            "maxReplicas": 1,
            "rayStartParams": {"resources": start_resources(node.name)},
            "template": _pod("worker", node, image, port, log_dir(node)),
        }
        for node in workers
    ]
    import yaml

    return {
        "apiVersion": RAYSERVICE_API,
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "headGroupSpec": head_group,
                "workerGroupSpecs": worker_groups,
            },
        },
    }


def manifest_yaml(manifest: dict[str, Any]) -> str:
    """The manifest as YAML, its multi-line strings (``serveConfigV2``) as literal blocks (``|``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    _Dumper.add_representer(str, text)
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False)
