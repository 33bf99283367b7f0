"""The operator end to end on the real control plane.

kube-scheduler places the step pods on kwok's fake GPU nodes, the Job controller runs the Jobs, and
the pod executor really runs each pod's command (the harness verb) on this machine on small
synthetic data; results come back through the pods' termination messages.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from mlperf_operator.jobs import RUN_LABEL, run_label

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "resnet50-offline.yaml"
RUN_TIMEOUT = 900  # a bound against hangs, not a speed check: a loaded 2-core machine took over 420 s


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"), "--timeout=60s")


def make_claim(api: client.ApiClient, namespace: str, name: str = "mlperf-cache") -> None:
    """A statically provisioned PV bound to a PVC: the kwok cluster has no storage provisioner."""
    core = client.CoreV1Api(api)
    pv = f"{namespace}-{name}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv, "labels": {"mlperf-operator.io/test": "true"}},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "hostPath": {"path": f"/tmp/{pv}"},
                "claimRef": {"namespace": namespace, "name": name},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound",
        timeout=30,
        what=f"PVC {name} to bind",
    )


@pytest.fixture
def operator(cluster: Cluster, namespace: str, crds: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(cluster.kubeconfig, [namespace], tmp_path / "operator.log") as op:
        yield op


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def get_run(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        "mlperf-operator.io", "v1alpha1", namespace, "mlperfruns", name
    )


def wait_phase(
    api: client.ApiClient,
    namespace: str,
    name: str,
    phases: set[str],
    op: OperatorProcess,
    timeout: float = RUN_TIMEOUT,
) -> dict:
    def reached() -> dict | None:
        run = get_run(api, namespace, name)
        return run if run.get("status", {}).get("phase") in phases else None

    try:
        return wait_for(reached, timeout=timeout, interval=1, what=f"run {name} to reach {phases}")
    except AssertionError as exc:
        status = get_run(api, namespace, name).get("status", {})
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status, indent=1)[:3000]}\noperator:\n{op.log_tail()}"
        ) from None


def run_jobs(api: client.ApiClient, namespace: str, name: str) -> list[client.V1Job]:
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=f"{RUN_LABEL}={run_label(name)}")
    return list(jobs.items)


def events(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e.reason for e in items]


def test_example_succeeds_with_results_and_a_second_run_reuses_the_cache(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    apply(cluster, namespace, yaml.safe_load(EXAMPLE.read_text()))
    run = wait_phase(api, namespace, "resnet50-offline", {"Succeeded", "Failed"}, operator)
    status = run["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    # Results were measured by the real harness verbs, on synthetic data, and say so.
    modes = {(r["scenario"], r["testMode"]) for r in status["results"]}
    assert modes == {("Offline", "PerformanceOnly"), ("Offline", "AccuracyOnly")}
    perf = next(r for r in status["results"] if r["testMode"] == "PerformanceOnly")
    accuracy = next(r for r in status["results"] if r["testMode"] == "AccuracyOnly")
    assert perf["samplesPerSecond"] > 0 and perf["synthetic"] is True
    assert accuracy["accuracy"] == pytest.approx(100.0) and accuracy["accuracyPassed"] is True
    assert {a["test"] for a in status["audits"]} == {"TEST01", "TEST04-A", "TEST04-B", "TEST05"}
    assert status["synthetic"] is True and status["submittable"] is False
    assert status["samplesPerSecond"] == perf["samplesPerSecond"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Succeeded"]["observedGeneration"] == 1

    # kubectl get answers "is it done, did it pass, how fast".
    row = cluster.kubectl("get", "mlperfrun", "resnet50-offline", "-n", namespace).stdout
    assert "Succeeded" in row and "Offline" in row and status["result"] in row

    # GPU steps ran on H200 nodes, placed by the real scheduler; CPU steps on nodes without GPUs.
    core = client.CoreV1Api(api)
    for pod in core.list_namespaced_pod(namespace, label_selector="mlperf-operator.io/run=resnet50-offline").items:
        node = core.read_node(pod.spec.node_name)
        gpu = (pod.spec.containers[0].resources.limits or {}).get("nvidia.com/gpu")
        product = node.metadata.labels.get("nvidia.com/gpu.product")
        # CPU steps do not tolerate the GPU taint, so they land on the CPU-only nodes.
        assert product == ("NVIDIA-H200" if gpu else None), (pod.metadata.name, product)

    reasons = events(api, namespace, "resnet50-offline")
    assert {"StepStarted", "StepSucceeded", "PhaseRunning", "RunSucceeded"} <= set(reasons), reasons
    text = operator.metrics()
    assert "mlperf_result_samples_per_second{" in text and 'run="resnet50-offline"' in text
    assert 'mlperf_step_duration_seconds_count{benchmark="resnet50",step="run-harness"}' in text

    # The same benchmark on the same GPU product: download, preprocess and engine build come from the cache.
    apply(cluster, namespace, manifest("resnet50-offline-again"))
    again = wait_phase(api, namespace, "resnet50-offline-again", {"Succeeded", "Failed"}, operator)["status"]
    assert again["phase"] == "Succeeded"
    cached = {s["name"] for s in again["steps"] if s.get("cacheHit")}
    assert {"download-data", "download-model", "preprocess"} <= cached
    assert any(name.startswith("build-engine") for name in cached)
    jobs = {j.metadata.labels["mlperf-operator.io/step"] for j in run_jobs(api, namespace, "resnet50-offline-again")}
    assert not jobs & cached, f"cached steps still ran as Jobs: {jobs & cached}"
    assert "CacheHit" in events(api, namespace, "resnet50-offline-again")
    assert 'mlperf_cache_hits_total{kind="engine"}' in operator.metrics()


def test_operator_restarts_mid_pipeline_end_the_same_without_duplicate_jobs(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    apply(cluster, namespace, manifest("restarts", audits=["TEST05"]))
    seen: list[str] = []
    for phases in ({"Downloading", "Preprocessing"}, {"BuildingEngines", "Running"}, {"Auditing", "Reporting"}):
        try:
            run = wait_for(
                lambda p=phases: (
                    get_run(api, namespace, "restarts").get("status", {}).get("phase") in p
                    or get_run(api, namespace, "restarts").get("status", {}).get("phase") in {"Succeeded", "Failed"}
                ),
                timeout=RUN_TIMEOUT,
                interval=0.3,
            )
        except AssertionError:
            continue
        assert run
        seen.append(get_run(api, namespace, "restarts")["status"]["phase"])
        operator.restart(kill=True)  # a crash: SIGKILL, no clean shutdown
    assert operator.starts >= 3, seen
    final = wait_phase(api, namespace, "restarts", {"Succeeded", "Failed"}, operator)["status"]
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    assert {r["testMode"] for r in final["results"]} == {"PerformanceOnly", "AccuracyOnly"}
    steps = [j.metadata.labels["mlperf-operator.io/step"] for j in run_jobs(api, namespace, "restarts")]
    assert len(steps) == len(set(steps)), f"duplicate Jobs: {sorted(steps)}"
    # Every Job ran exactly one successful pod: nothing was started twice.
    for job in run_jobs(api, namespace, "restarts"):
        assert job.status.succeeded == 1, job.metadata.name


class _BadFileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"not the model you are looking for"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_failing_step_is_retried_then_the_run_fails_with_a_clear_condition(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadFileHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/resnet50_v1.onnx"
        model = {"https": {"url": url, "sha256": "0" * 64}}
        apply(cluster, namespace, manifest("bad-model", model=model, retries=1))
        status = wait_phase(api, namespace, "bad-model", {"Failed", "Succeeded"}, operator)["status"]
    finally:
        server.shutdown()
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StepFailed"
    assert "download-model" in failed["message"] and "2 attempt" in failed["message"]
    assert "sha256" in failed["message"].lower() or "checksum" in failed["message"].lower(), failed["message"]
    job = next(j for j in run_jobs(api, namespace, "bad-model") if j.metadata.name.endswith("download-model"))
    assert job.status.failed == 2  # the first try and one retry (spec.retries: 1)
    assert "StepFailed" in events(api, namespace, "bad-model")
    time.sleep(0.5)
    assert 'mlperf_runs{phase="Failed"} 1.0' in operator.metrics()


def claim_artifacts(executor: PodExecutor, namespace: str, claim: str = "mlperf-cache") -> set[str]:
    """The complete artifacts on the claim, as the pods left them (the executor maps a claim to a directory)."""
    root = executor.root / "pvcs" / namespace / claim
    return {str(p.relative_to(root)) for p in root.glob("cache/*/*") if (p / ".complete").is_file()}


def test_the_cache_index_lists_what_the_pods_wrote_for_a_cpu_and_a_gpu_spec(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    """The operator plans from the manifest (an H200 spec: batch 1024), the pods key what they write from the
    system they run on (this CPU: batch 8) and their installed backend: the index records the pods' keys."""
    make_claim(api, namespace)
    cheap = {
        "testModes": ["PerformanceOnly"],
        "audits": [],
        "loadgen": {"minDurationMs": 1000, "expectedQps": 1},
        "dataset": {"synthetic": {"samples": 16}},
    }
    specs = {"on-cpu": {"system": {"gpuCount": 0}}, "on-h200": {}, "on-h200-again": {}}
    statuses = {}
    for name, system in specs.items():  # one after the other: each later run finds the earlier one's artifacts
        apply(cluster, namespace, manifest(name, **cheap, **system))
        statuses[name] = status = wait_phase(api, namespace, name, {"Succeeded", "Failed"}, operator)["status"]
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]

        index = client.CoreV1Api(api).read_namespaced_config_map("mlperf-cache-mlperf-cache", namespace).data
        assert not [k for k in index if k.startswith("producing.")], index  # every lease given back
        recorded = {json.loads(v)["relpath"]: json.loads(v) for v in index.values()}
        assert set(recorded) == claim_artifacts(pod_executor, namespace), (name, index)
        assert {k.replace(".", "/", 1) for k in index} == {r.removeprefix("cache/") for r in recorded}

    engines = [r for r in recorded if r.startswith("cache/engine/")]
    assert len(engines) == 1 and "-b8-" in engines[0], engines  # built on this CPU, whatever the plan said
    built = recorded[engines[0]]
    assert built["inputs"]["batch"] == 8 and built["inputs"]["gpu"] == "cpu"
    assert built["inputs"]["backendVersion"].startswith("onnxruntime-")  # the installed one, not the image's name
    planned = {s["name"] for s in statuses["on-h200"]["steps"] if s["name"].startswith("build-engine")}
    assert planned == {"build-engine-fp32-b1024"}  # the H200 plan asked for batch 1024 ...
    assert any("-b1024-" in r for r in built["requests"]) and any("-b8-" in r for r in built["requests"])
    # ... the pod answered it with the CPU engine, and the index says so: the third run takes all from the cache.
    again = statuses["on-h200-again"]
    shared = {"download-data", "download-model", "preprocess", "build-engine-fp32-b1024"}
    assert {s["name"] for s in again["steps"] if s.get("cacheHit")} >= shared
    jobs = {j.metadata.labels["mlperf-operator.io/step"] for j in run_jobs(api, namespace, "on-h200-again")}
    assert not jobs & shared, f"cached steps still ran as Jobs: {jobs & shared}"
