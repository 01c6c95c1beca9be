"""The files ``coserve deploy`` writes, checked by Ray's own tools: the Serve config against Ray
Serve's config model (``ServeDeploySchema``, what ``serve run``/``serve deploy`` validate with) and
its application builder, then served by ``serve run CONFIG`` on Ray's multi-node test cluster; the
KubeRay RayService against the cluster file. Bad input to ``coserve deploy`` exits 2 and writes
nothing. (The RayService is not applied to Kubernetes: there is none here.)

Select with ``-m ray``; skipped with the reason when Ray Serve (``coserve[ray]``) is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import HELD_OUT, MiB
from test_ray_serve import ROOT, _free_port, _write_files, alarm

from coserve.cli import main
from coserve.distributed.ray_app import AppArgs, node_resources, placed_experts

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SERVE_RUN_S = 90  # the end-to-end test's bound: two raylets, `serve run`, one chat


def _deploy(*argv: str) -> int:
    return main(["deploy", *argv])


def _schema(config: dict[str, Any]) -> Any:
    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    return schema.ServeDeploySchema.model_validate(config)


# -- the Serve config, by Ray's own config model and application builder ----------------------------
@pytest.mark.parametrize("with_cluster", [False, True], ids=["default-cluster", "two-nodes"])
@pytest.mark.parametrize("autoscaling", [(), ("--min-replicas", "2", "--max-replicas", "6")], ids=["", "autoscaled"])
def test_ray_serve_accepts_the_config(tmp_path: Path, with_cluster: bool, autoscaling: tuple[str, ...]) -> None:
    library, cluster = _write_files(tmp_path)
    out = tmp_path / "serve.yaml"
    argv = ["--ray-config", str(out), "--library", str(library), *autoscaling]
    if with_cluster:
        argv += ["--cluster", str(cluster)]
    assert _deploy(*argv) == 0
    config = _schema(yaml.safe_load(out.read_text()))  # raises on anything Ray Serve would refuse
    (app,) = config.applications
    low, high = (2, 6) if autoscaling else (1, 4)
    assert (app.name, app.route_prefix, app.import_path) == ("coserve", "/", "coserve.distributed.ray_app:build_app")
    assert app.args == {
        "library": str(library.resolve()),
        "cluster": str(cluster.resolve()) if with_cluster else None,
        "min_replicas": low,
        "max_replicas": high,
        "target_ongoing_requests": 8.0,
        "ingress_node": None,
    }
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 8000)
    # What the Serve controller does with it (build_serve_application): call the builder the import
    # path names with the args, then split the application into its deployments.
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    built = build_app(call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args), name="x")
    deployments = {d.name: d for d in built.deployments}
    assert set(deployments) == {"ingress", "expert-host", "placement", "quota", "decision-log"}
    assert built.ingress_deployment_name == "ingress"
    assert deployments["expert-host"].num_replicas == (2 if with_cluster else 1)  # one per cluster-file node
    scaling = deployments["ingress"]._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (low, high, 8.0)
    # Session 13's walk: the ingress had Ray's default of 5 requests at once, below its own autoscaling
    # target (8) and its admission share (the library's default max_pending, 64): the 6th request
    # waited in Ray's proxy, out of coserve's admission, log and /health. Now: that bound + 64 others.
    assert deployments["ingress"]._deployment_config.max_ongoing_requests == 64 + 64
    # The internal deployments' calls (several a second, idle or not) leave no access-log line each.
    access = {name: d._deployment_config.logging_config for name, d in deployments.items()}
    assert {name: (c or {}).get("enable_access_log", True) for name, c in access.items()} == {
        "ingress": True,
        "expert-host": False,
        "placement": False,
        "quota": False,
        "decision-log": False,
    }


# -- bad input: exit 2, a clear message, no file ------------------------------------------------------
def _no_file_left(folder: Path, name: str) -> None:
    assert not (folder / name).exists()
    assert [p.name for p in folder.iterdir() if p.name.endswith(".partial")] == []


def test_deploy_with_a_missing_library_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _deploy("--ray-config", str(tmp_path / "serve.yaml"), "--library", str(tmp_path / "none.yaml")) == 2
    err = capsys.readouterr().err
    assert err.startswith("coserve: error: ") and "none.yaml" in err
    _no_file_left(tmp_path, "serve.yaml")


def test_deploy_with_a_bad_cluster_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    library, cluster = _write_files(tmp_path)
    cluster.write_text(yaml.safe_dump({"nodes": [{"name": "a", "ram": "-1GiB"}]}), encoding="utf-8")
    argv = ["--library", str(library), "--cluster", str(cluster), "--image", "img"]
    assert _deploy("--ray-config", str(tmp_path / "s.yaml"), "--rayservice", str(tmp_path / "k.yaml"), *argv) == 2
    assert "nodes[0].ram" in capsys.readouterr().err
    _no_file_left(tmp_path, "s.yaml")
    _no_file_left(tmp_path, "k.yaml")


def test_deploy_to_an_unwritable_place_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    library, _ = _write_files(tmp_path)
    missing_folder = tmp_path / "no" / "serve.yaml"
    assert _deploy("--ray-config", str(missing_folder), "--library", str(library)) == 2
    assert f"{missing_folder}: cannot write it" in capsys.readouterr().err
    taken = tmp_path / "taken"
    (taken / "inside").mkdir(parents=True)  # a folder where the file should go: the rename fails
    assert _deploy("--ray-config", str(taken), "--library", str(library)) == 2
    assert f"{taken}: cannot write it" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["inside"]  # left as it was
    _no_file_left(tmp_path, "no")


def test_deploy_needs_an_output_and_an_image_for_the_rayservice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library, _ = _write_files(tmp_path)
    assert _deploy("--library", str(library)) == 2
    assert "--ray-config OUT.yaml" in capsys.readouterr().err
    assert _deploy("--rayservice", str(tmp_path / "k.yaml"), "--library", str(library)) == 2
    assert "--rayservice needs --image" in capsys.readouterr().err
    _no_file_left(tmp_path, "k.yaml")


# -- the RayService, against the cluster file -----------------------------------------------------------
def _resources(start_params: dict[str, str]) -> dict[str, Any]:
    """``rayStartParams.resources``: a JSON string quoted once more, as KubeRay passes it to ray start."""
    parsed: dict[str, Any] = json.loads(json.loads(start_params["resources"]))
    return parsed


def test_the_rayservice_has_a_group_per_node_with_its_resources_and_memory(tmp_path: Path) -> None:
    library, _ = _write_files(tmp_path)
    cluster = tmp_path / "cluster.yaml"
    nodes = [
        {"name": "a", "ram": 32 * MiB},
        {"name": "gpu_box.1", "ram": 48 * MiB, "accelerator": "8GiB"},
        {"name": "c", "ram": "1GiB"},
    ]
    cluster.write_text(yaml.safe_dump({"nodes": nodes}), encoding="utf-8")
    serve_out, kube_out = tmp_path / "serve.yaml", tmp_path / "rayservice.yaml"
    argv = ["--library", str(library), "--cluster", str(cluster), "--image", "registry.example/coserve:1"]
    assert _deploy("--ray-config", str(serve_out), "--rayservice", str(kube_out), *argv) == 0
    manifest = yaml.safe_load(kube_out.read_text())
    assert (manifest["apiVersion"], manifest["kind"], manifest["metadata"]) == (
        "ray.io/v1",
        "RayService",
        {"name": "coserve"},
    )
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load(serve_out.read_text())  # the same Serve config, inlined
    _schema(serve_config)
    ray_cluster = manifest["spec"]["rayClusterConfig"]
    head, workers = ray_cluster["headGroupSpec"], ray_cluster["workerGroupSpecs"]
    assert _resources(head["rayStartParams"]) == {"coserve-node-a": 1, "coserve-host": 1}
    assert [w["groupName"] for w in workers] == ["gpu-box-1", "c"]  # Kubernetes names of the other nodes
    assert [_resources(w["rayStartParams"]) for w in workers] == [
        {"coserve-node-gpu_box.1": 1, "coserve-host": 1},  # Ray's resource keeps the cluster file's name
        {"coserve-node-c": 1, "coserve-host": 1},
    ]
    assert [(w["replicas"], w["minReplicas"], w["maxReplicas"]) for w in workers] == [(1, 1, 1)] * 2
    containers = [head["template"]["spec"]["containers"][0]] + [w["template"]["spec"]["containers"][0] for w in workers]
    assert {c["image"] for c in containers} == {"registry.example/coserve:1"}
    # The node's budget plus 2 GiB for Ray and coserve's own processes, in MiB; a GPU where it has one.
    assert [c["resources"]["requests"] for c in containers] == [
        {"memory": "2080Mi"},
        {"memory": "2096Mi"},
        {"memory": "3072Mi"},
    ]
    assert [c["resources"]["limits"].get("nvidia.com/gpu") for c in containers] == [None, 1, None]
    assert all("volumeMounts" not in c for c in containers)  # the library names no log file
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} >= {6379, 8265, 8000}


def test_the_rayservice_mounts_the_named_log_folder_where_the_log_runs(tmp_path: Path) -> None:
    library, cluster = _write_files(tmp_path)
    data = yaml.safe_load(library.read_text())
    data["server"] = {"log": {"path": "logs/decisions.sqlite"}}  # relative: to the library file
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    out = tmp_path / "rayservice.yaml"
    assert _deploy("--rayservice", str(out), "--library", str(library), "--cluster", str(cluster), "--image", "i") == 0
    spec = yaml.safe_load(out.read_text())["spec"]["rayClusterConfig"]
    head_pod = spec["headGroupSpec"]["template"]["spec"]
    assert head_pod["containers"][0]["volumeMounts"] == [
        {"name": "coserve-log", "mountPath": str((tmp_path / "logs").resolve())}
    ]
    assert head_pod["volumes"] == [{"name": "coserve-log", "persistentVolumeClaim": {"claimName": "coserve-log"}}]
    (worker,) = spec["workerGroupSpecs"]
    assert "volumes" not in worker["template"]["spec"]  # quota and decision-log run on the head


def test_node_names_that_collide_in_kubernetes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    library, cluster = _write_files(tmp_path)
    nodes = [{"name": "a_b", "ram": 32 * MiB}, {"name": "a.b", "ram": 32 * MiB}]
    cluster.write_text(yaml.safe_dump({"nodes": nodes}), encoding="utf-8")
    argv = ["--library", str(library), "--cluster", str(cluster), "--image", "i"]
    assert _deploy("--rayservice", str(tmp_path / "k.yaml"), *argv) == 2
    assert "same Kubernetes name 'a-b'" in capsys.readouterr().err
    _no_file_left(tmp_path, "k.yaml")


# -- served by Ray's own runner: `serve run CONFIG` on the multi-node test cluster --------------------
def test_serve_run_serves_the_written_config_on_a_two_node_cluster(tmp_path: Path) -> None:
    """``serve run OUT.yaml --address ...`` (Ray's CLI, in its own process, no dashboard) deploys the
    file through the Serve controller; one chat through the official openai client answers."""
    ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    from openai import OpenAI
    from ray import serve
    from ray.cluster_utils import Cluster

    library, cluster_file = _write_files(tmp_path)
    port = _free_port()
    out = tmp_path / "serve.yaml"
    argv = ["--ray-config", str(out), "--library", str(library), "--cluster", str(cluster_file)]
    assert _deploy(*argv, "--host", "127.0.0.1", "--port", str(port), "--max-replicas", "1") == 0
    head = {"num_cpus": 2, "resources": node_resources("a"), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        with alarm(SERVE_RUN_S):
            cluster.add_node(num_cpus=1, resources=node_resources("b"))
            # Ray's own `serve run CONFIG`; run from the repository root, whose code its workers import.
            runner = [sys.executable, "-c", "from ray.serve.scripts import cli; cli()", "run", str(out)]
            env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
            ran = subprocess.run(
                [*runner, "--address", cluster.address, "--non-blocking"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=SERVE_RUN_S,
            )
            assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
            _wait_healthy(f"http://127.0.0.1:{port}")
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
            raw = client.chat.completions.with_raw_response.create(
                model="coserve", messages=[{"role": "user", "content": HELD_OUT["math"]}], max_tokens=6
            )
            reply = raw.parse()
        assert raw.http_response.status_code == 200
        assert reply.model == "big"  # the map sends math to big (library_data)
        assert (reply.model_extra or {})["coserve"]["expert"] == "big"
        assert (reply.choices[0].message.content or "").startswith("big says:")
        _, placed = placed_experts(AppArgs(library=str(library), cluster=str(cluster_file)))
        assert raw.http_response.headers["x-coserve-node"] == next(n for n, e in placed.items() if "big" in e)
    finally:
        with contextlib.suppress(Exception):
            ray.init(address=cluster.address, log_to_driver=False)
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _wait_healthy(url: str) -> None:
    """Until ``/health`` answers 200 (the alarm around the caller bounds it)."""
    import time

    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
