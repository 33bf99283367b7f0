"""The local control plane does what the operator's tests rely on: real scheduling onto fake GPU nodes, the
real Job controller and garbage collector, kwok's pod lifecycles, RBAC, and the local pod executor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, PodExecutor, cluster_tools, wait_for
from cluster.control_plane import REPO
from kubernetes import client

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PART_OF = {"app.kubernetes.io/part-of": "mlperf-operator"}


def job_manifest(
    name: str,
    *,
    command: list[str] | None = None,
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    backoff_limit: int = 0,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "mlperf-harness:test", "command": command or ["true"]}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if gpus:
        pod_spec["tolerations"] = [GPU_TOLERATION]
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    metadata: dict[str, Any] = {"name": name}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"annotations": annotations or {}, "labels": labels or {}},
                "spec": pod_spec,
            },
        },
    }


def job_condition(batch: client.BatchV1Api, ns: str, name: str, kind: str) -> Any:
    """The Job's condition of this type when it is True, else None."""
    job = batch.read_namespaced_job(name, ns)
    return next((c for c in job.status.conditions or [] if c.type == kind and c.status == "True"), None)


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[Any]:
    return list(core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items)


def pod_condition(pod: Any, kind: str) -> Any:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


# --- the fleet -----------------------------------------------------------------------------------------------


def test_fake_gpu_node_pools(core: client.CoreV1Api) -> None:
    nodes = core.list_node(label_selector="type=kwok").items
    products = [n.metadata.labels.get("nvidia.com/gpu.product", "cpu") for n in nodes]
    assert sorted(products) == sorted(["NVIDIA-H200"] * 4 + ["NVIDIA-A100-SXM4-80GB"] * 2 + ["cpu"] * 2)
    for node in nodes:
        assert pod_condition(node, "Ready").status == "True"
        labels = node.metadata.labels
        if "nvidia.com/gpu.product" in labels:
            assert node.status.allocatable["nvidia.com/gpu"] == "8"
            assert labels["nvidia.com/gpu.count"] == "8"
            assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
                ("nvidia.com/gpu", "present", "NoSchedule")
            ]
        else:
            assert "nvidia.com/gpu" not in node.status.allocatable
            assert not node.spec.taints
    h200 = next(n for n in nodes if n.metadata.labels.get("nvidia.com/gpu.product") == "NVIDIA-H200")
    assert {k: h200.metadata.labels[k] for k in ("nvidia.com/gpu.memory", "nvidia.com/gpu.family")} == {
        "nvidia.com/gpu.memory": "143771",
        "nvidia.com/gpu.family": "hopper",
    }


# --- scheduler, Job controller, garbage collector --------------------------------------------------------------


def test_gpu_job_is_scheduled_on_h200_and_completes(
    core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str
) -> None:
    body = job_manifest("gpu2", gpus=2, node_selector={"nvidia.com/gpu.product": "NVIDIA-H200"})
    batch.create_namespaced_job(namespace, body)
    wait_for(lambda: job_condition(batch, namespace, "gpu2", "Complete"), timeout=30, what="Job Complete")
    [pod] = job_pods(core, namespace, "gpu2")
    assert pod.status.phase == "Succeeded"
    assert pod_condition(pod, "PodScheduled").status == "True"
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert batch.read_namespaced_job("gpu2", namespace).status.succeeded == 1


def test_job_asking_more_gpus_than_a_node_has_stays_pending(
    core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str
) -> None:
    batch.create_namespaced_job(namespace, job_manifest("gpu16", gpus=16))

    def unschedulable() -> Any:
        pods = job_pods(core, namespace, "gpu16")
        cond = pod_condition(pods[0], "PodScheduled") if pods else None
        return cond if cond and cond.status == "False" else None

    cond = wait_for(unschedulable, timeout=30, what="PodScheduled=False")
    assert cond.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond.message
    time.sleep(1)
    [pod] = job_pods(core, namespace, "gpu16")
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    assert job_condition(batch, namespace, "gpu16", "Complete") is None


def test_failing_pod_fails_its_job_after_backoff_limit(
    core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str
) -> None:
    body = job_manifest("fails", backoff_limit=1, annotations={"kwok.mlperf-operator.io/exit-code": "3"})
    batch.create_namespaced_job(namespace, body)
    # The Job controller waits ~10 s (its fixed pod-failure backoff) before the retry.
    cond = wait_for(lambda: job_condition(batch, namespace, "fails", "Failed"), timeout=60, what="Job Failed")
    assert cond.reason == "BackoffLimitExceeded"
    pods = job_pods(core, namespace, "fails")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert batch.read_namespaced_job("fails", namespace).status.failed == 2


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_owner_garbage_collects_jobs_and_pods(
    core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str, propagation: str
) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    # Long-running pods, so there is something to collect.
    for name in ("owned-a", "owned-b"):
        body = job_manifest(name, owner=ref, annotations={"kwok.mlperf-operator.io/delay": "10m"})
        batch.create_namespaced_job(namespace, body)

    def running() -> bool:
        pods = core.list_namespaced_pod(namespace).items
        return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

    wait_for(running, timeout=30, what="2 running pods")
    core.delete_namespaced_config_map("owner", namespace, propagation_policy=propagation)

    def collected() -> bool:
        return not batch.list_namespaced_job(namespace).items and not core.list_namespaced_pod(namespace).items

    wait_for(collected, timeout=60, what="Jobs and pods garbage-collected")


# --- kwok stages ----------------------------------------------------------------------------------------------


def test_pod_delay_annotation(core: client.CoreV1Api, namespace: str) -> None:
    def pod(name: str, annotations: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "x", "command": ["true"]}]},
        }

    core.create_namespaced_pod(namespace, pod("slow", {"kwok.mlperf-operator.io/delay": "3s"}))
    core.create_namespaced_pod(namespace, pod("default", {}))
    phase = lambda name: core.read_namespaced_pod(name, namespace).status.phase  # noqa: E731
    wait_for(lambda: phase("slow") == "Running", timeout=20, what="slow pod Running")
    started = time.monotonic()
    wait_for(lambda: phase("default") == "Succeeded", timeout=10, what="default-delay pod Succeeded")
    time.sleep(max(0.0, 1 - (time.monotonic() - started)))
    assert phase("slow") == "Running", "a 3 s pod finished within 1 s"
    wait_for(lambda: phase("slow") == "Succeeded", timeout=5, what="slow pod Succeeded")
    assert time.monotonic() - started >= 2.5


# --- RBAC and ServiceAccount identities -------------------------------------------------------------------------


def test_rbac_and_service_account_tokens(cluster: Cluster, api: client.ApiClient, namespace: str) -> None:
    sa = f"system:serviceaccount:{namespace}:default"

    def can_create_jobs() -> str:  # asked as the ServiceAccount, through impersonation
        args = ("auth", "can-i", "create", "jobs", "-n", namespace, "--as", sa)
        return cluster.kubectl(*args, check=False).stdout.strip()

    assert can_create_jobs() == "no"
    cluster.kubectl(
        "create", "rolebinding", "edit", "--clusterrole=edit", f"--serviceaccount={namespace}:default", "-n", namespace
    )
    wait_for(lambda: can_create_jobs() == "yes", timeout=10, what="RBAC to grant the ServiceAccount")
    # A token signed with the API server's service-account key authenticates as that ServiceAccount.
    token = cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = api.configuration.host, api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    review = client.AuthenticationV1Api(client.ApiClient(cfg)).create_self_subject_review({})
    assert review.status.user_info.username == sa


# --- the local pod executor -------------------------------------------------------------------------------------

WRITE_RESULT = (
    "import json, os, pathlib, sys\n"
    "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
    "(out / 'result.txt').write_text(os.environ['POD_NAME'] + ' ' + os.environ['GREETING'])\n"
    "print('harness says hello')\n"
    "open(os.environ['MLPERF_TERMINATION_LOG'], 'w').write(json.dumps({'ok': 1}))\n"
)


def test_executor_runs_operator_pods_and_reports_their_result(
    core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str, pod_executor: PodExecutor
) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"greeting": "hi"}})
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "results"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    body = job_manifest("run", labels=PART_OF, command=["python", "-c", WRITE_RESULT, "/results/run1"])
    pod_spec = body["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "res", "persistentVolumeClaim": {"claimName": "results"}}]
    container = pod_spec["containers"][0]
    container["volumeMounts"] = [{"name": "res", "mountPath": "/results"}]
    container["env"] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
    ]
    batch.create_namespaced_job(namespace, body)

    wait_for(lambda: job_condition(batch, namespace, "run", "Complete"), timeout=30, what="Job Complete")
    [pod] = job_pods(core, namespace, "run")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (0, json.dumps({"ok": 1}))
    assert pod.metadata.annotations["kwok.mlperf-operator.io/log-tail"] == "harness says hello"
    result = pod_executor.root / "pvcs" / namespace / "results" / "run1" / "result.txt"
    assert result.read_text() == f"{pod.metadata.name} hi"


def test_executor_failure_fails_the_job(
    core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str, pod_executor: PodExecutor
) -> None:
    script = "import sys; print('step 1 ok'); print('boom', file=sys.stderr); sys.exit(1)"
    batch.create_namespaced_job(namespace, job_manifest("boom", labels=PART_OF, command=["python", "-c", script]))
    cond = wait_for(lambda: job_condition(batch, namespace, "boom", "Failed"), timeout=30, what="Job Failed")
    assert cond.reason == "BackoffLimitExceeded"
    [pod] = job_pods(core, namespace, "boom")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 1
    assert pod.metadata.annotations["kwok.mlperf-operator.io/log-tail"].splitlines() == ["step 1 ok", "boom"]
    assert pod_executor.wait(pod.metadata.name, namespace).returncode == 1


def test_operator_pods_wait_for_the_executor(core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str) -> None:
    # Without an executor, an operator pod keeps running; a test may also end it by hand.
    batch.create_namespaced_job(namespace, job_manifest("waits", labels=PART_OF))
    wait_for(lambda: [p for p in job_pods(core, namespace, "waits") if p.status.phase == "Running"], timeout=20)
    time.sleep(2)
    [pod] = job_pods(core, namespace, "waits")
    assert pod.status.phase == "Running"
    patch = {"kwok.mlperf-operator.io/exit-code": "0", "kwok.mlperf-operator.io/termination-message": "{}"}
    core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"annotations": patch}})
    wait_for(lambda: job_condition(batch, namespace, "waits", "Complete"), timeout=20, what="Job Complete")


# --- the built tools ------------------------------------------------------------------------------------------


def pinned_versions() -> dict[str, str]:
    listing = subprocess.run([str(REPO / "tools" / "build-tools.sh"), "--list"], capture_output=True, text=True)
    return dict(re.findall(r"^(\w+) (v[\d.]+)", listing.stdout, re.M))


@pytest.mark.parametrize(
    ("binary", "args", "expected"),
    [
        ("kube-apiserver", ["--version"], "Kubernetes {kubernetes}"),
        ("kube-controller-manager", ["--version"], "Kubernetes {kubernetes}"),
        ("kube-scheduler", ["--version"], "Kubernetes {kubernetes}"),
        ("etcd", ["--version"], "etcd Version: {etcd_bare}"),
        ("kwok", ["--version"], "kwok version {kwok}"),
        ("kwokctl", ["--version"], "kwokctl version {kwok}"),
        ("helm", ["version", "--template", "{{.Version}}"], "{helm}"),
    ],
)
def test_built_tools_report_their_version(binary: str, args: list[str], expected: str) -> None:
    versions = pinned_versions()
    versions["etcd_bare"] = versions["etcd"].removeprefix("v")
    path = cluster_tools().BIN / binary
    if not path.exists() and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip(f"{path} not built (make tools)")
    out = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert expected.format(**versions) in out.stdout.splitlines()[0]


def test_failed_start_shows_the_failing_components_log(tmp_path: Path) -> None:
    tools = cluster_tools()
    if not (tools.BIN / "kube-apiserver").exists() and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("tools not built (make tools)")
    # The real binaries, but a "kube-scheduler" that is etcd and so rejects the scheduler's flags.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in tools.COMPONENTS:
        target = tools.BIN / ("etcd" if name == "kube-scheduler" else name)
        (bin_dir / name).symlink_to(target.resolve())
    local = tools.LocalCluster("broken", root=tmp_path / "clusters", bin_dir=bin_dir, die_with_parent=True)
    with pytest.raises(tools.ClusterError, match=r"kube-scheduler exited(.|\n)*-kubeconfig"):
        local.up(timeout=60)
    assert local.dead_components() == list(tools.COMPONENTS)  # nothing left running


def test_executor_rewrites_each_mount_path_once() -> None:
    from cluster.executor import _rewrite

    mounts = [
        (m, Path(p))
        for m, p in [("/data/models", "/l/models"), ("/cache", "/tmp/c"), ("/data", "/l/d"), ("/tmp", "/l/t")]
    ]
    assert _rewrite("--cache=/cache/x --out /tmp/y", mounts) == "--cache=/tmp/c/x --out /l/t/y"
    assert _rewrite("/data/models/a:/data/b:/data", mounts) == "/l/models/a:/l/d/b:/l/d"
    assert _rewrite("/database /x/cache /cache2 cache", mounts) == "/database /x/cache /cache2 cache"
