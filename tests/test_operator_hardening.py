"""The operator in a newcomer's and an adversary's hands (issue 22), on the real control plane.

Long names, a run deleted and created anew, restart bursts, unschedulable steps, fifty identical runs at once,
restarts and INVALID results: each leaves every run right, and says what happened. The runs use the null
backend and performance runs only, so that each pipeline is a few harness processes of seconds.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from mlperf_operator.controller import Controller
from mlperf_operator.kube import Kube
from test_operator_e2e import apply, crds, events, get_run, make_claim, manifest, operator, run_jobs, wait_phase

__all__ = ["crds", "operator"]  # fixtures, used by name

TERMINAL = {"Succeeded", "Failed"}


def quick(name: str, **spec: Any) -> dict[str, Any]:
    """The example's run, made cheap: no model inference (null backend), performance only, no audits. An
    expected QPS of 1 issues a handful of samples, so the result is INVALID (min duration not met)."""
    base = {
        "backend": "null",
        "testModes": ["PerformanceOnly"],
        "audits": [],
        "loadgen": {"minDurationMs": 1000, "expectedQps": 1},
        "dataset": {"synthetic": {"samples": 16}},
        "system": {"gpuCount": 0},
    }
    return manifest(name, **{**base, **spec})


def all_events(api: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_event(namespace).items)


def duplicate_events(api: client.ApiClient, namespace: str) -> list[tuple[str, str, str]]:
    seen = collections.Counter(
        (e.involved_object.name, e.reason, e.message)
        for e in all_events(api, namespace)
        if e.source and e.source.component == "mlperf-operator"
    )
    return [key for key, n in seen.items() if n > 1]


def step(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["steps"] if s["name"] == name)


# --- finding 2: names -------------------------------------------------------------------------------------------


def test_a_run_name_of_any_valid_length_runs_with_readable_job_names_and_an_invalid_reason(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    name = "a-run-whose-name-is-far-longer-than-a-label-value-may-be-" + "x" * 60  # 117 characters
    apply(cluster, namespace, quick(name))
    # A spec the API server rejects once the operator builds its Job: the run fails saying so, at once.
    apply(cluster, namespace, quick("bad-account", serviceAccountName="Not_A_Name"))
    status = wait_phase(api, namespace, name, TERMINAL, operator)["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    jobs = run_jobs(api, namespace, name)
    assert {j.metadata.labels["mlperf-operator.io/step"] for j in jobs} == {
        "download-data",
        "download-model",
        "preprocess",
        "run-offline-performance",
        "report",
    }
    for job in jobs:
        step_name = job.metadata.labels["mlperf-operator.io/step"]
        assert len(job.metadata.name) <= 63 and job.metadata.name.endswith(f"-{step_name}"), job.metadata.name
        assert job.metadata.name.startswith("a-run-whose-name")

    # Finding 9: an INVALID result says which LoadGen check failed, in the result and the Passed condition.
    perf = status["results"][0]
    assert status["result"] == "INVALID" and perf["valid"] is False
    assert perf["invalidReason"].startswith("min duration not met"), perf
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert passed["status"] == "False" and "min duration not met" in passed["message"], passed

    bad = wait_phase(api, namespace, "bad-account", TERMINAL, operator)["status"]
    failed = next(c for c in bad["conditions"] if c["type"] == "Failed")
    assert bad["phase"] == "Failed" and failed["reason"] == "Rejected", bad
    assert "serviceAccountName" in failed["message"] and "Not_A_Name" in failed["message"], failed["message"]
    assert "Rejected" in events(api, namespace, "bad-account")


def test_one_runs_error_does_not_stop_the_resync_of_the_others(
    cluster: Cluster, api: client.ApiClient, namespace: str, crds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The controller in this process against the real API server; no operator, so only resync() reconciles.
    make_claim(api, namespace)
    for name in ("a-breaks", "b-fine"):
        apply(cluster, namespace, quick(name))
    controller = Controller(Kube(api))
    real = controller._reconcile

    def breaking(run: dict[str, Any]) -> set[str]:
        if run["metadata"]["name"] == "a-breaks":
            raise RuntimeError("something no run can be blamed for")
        return real(run)

    monkeypatch.setattr(controller, "_reconcile", breaking)
    controller.resync([namespace])
    assert get_run(api, namespace, "b-fine")["status"]["phase"] == "Downloading"
    broken = get_run(api, namespace, "a-breaks")["status"]
    assert "something no run can be blamed for" in broken["message"], broken
    assert "ReconcileError" in events(api, namespace, "a-breaks")


# --- finding 3 and 8: a re-created run, metrics after a restart --------------------------------------------------


def test_a_run_created_anew_under_its_name_measures_afresh_and_metrics_survive_a_restart(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    apply(cluster, namespace, quick("again"))
    first = wait_phase(api, namespace, "again", TERMINAL, operator)
    assert first["status"]["phase"] == "Succeeded", json.dumps(first["status"], indent=1)

    # Finding 8: the operator restarts; the result's series come back from the status.
    series = 'mlperf_result_samples_per_second{benchmark="resnet50",gpu_product="NVIDIA-H200",namespace="'
    assert f'{series}{namespace}",run="again"' in operator.metrics()
    operator.restart(kill=True)
    wait_for(
        lambda: f'{series}{namespace}",run="again"' in operator.metrics(),
        timeout=60,
        what="the restarted operator to export the finished run's result",
    )

    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "mlperf-operator.io", "v1alpha1", namespace, "mlperfruns", "again"
    )
    wait_for(lambda: not run_jobs(api, namespace, "again"), timeout=120, what="the old run's Jobs to go")
    # A deleted run's series go with it: one series per live run, not one per run ever seen.
    wait_for(
        lambda: f'{series}{namespace}",run="again"' not in operator.metrics(),
        timeout=60,
        what="the deleted run's result series to go",
    )
    apply(cluster, namespace, quick("again"))
    second = wait_phase(api, namespace, "again", TERMINAL, operator)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    status = second["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    # Data, model and preprocessing are shared artifacts (cache hits); the measurement is the new run's own.
    assert step(status, "download-data")["cacheHit"] is True
    measured = step(status, "run-offline-performance")
    assert measured["cacheHit"] is False and "already complete" not in measured["message"], measured
    assert status["results"][0]["logDir"] != first["status"]["results"][0]["logDir"]


def conflicts(cluster: Cluster) -> int:
    """POSTs of claims and ConfigMaps that the API server answered 409 (it exists), since it started."""
    total = 0.0
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        posted = line.startswith("apiserver_request_total{") and 'code="409"' in line and 'verb="POST"' in line
        if posted and ('resource="configmaps"' in line or 'resource="persistentvolumeclaims"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_runs_read_before_they_write_no_create_is_answered_409(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    """Issue 21: a reconcile used to re-POST the claim and its cache index, and get 409 back, every time."""
    make_claim(api, namespace)
    before = conflicts(cluster)
    for name in ("first", "second"):  # the second finds the claim's cache index made by the first
        apply(cluster, namespace, quick(name))
        status = wait_phase(api, namespace, name, TERMINAL, operator)["status"]
        assert status["phase"] == "Succeeded", status
    assert conflicts(cluster) == before


# --- finding 4: one controller, one lock per run, through a restart burst ----------------------------------------


def test_a_restart_burst_posts_every_event_once(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    names = [f"burst-{i}" for i in range(4)]
    for name in names:
        apply(cluster, namespace, quick(name))
    batch = client.BatchV1Api(api)
    wait_for(lambda: batch.list_namespaced_job(namespace).items, timeout=60, what="the first download Jobs")
    operator.stop(kill=True)
    # While it is away the download Jobs end: its restart meets runs and Jobs that all changed at once.
    wait_for(
        lambda: all(j.status.succeeded for j in batch.list_namespaced_job(namespace).items),
        timeout=180,
        interval=1,
        what="the Jobs to end while the operator is down",
    )
    operator.start()
    for name in names:
        assert wait_phase(api, namespace, name, TERMINAL, operator)["status"]["phase"] == "Succeeded"
    assert duplicate_events(api, namespace) == []
    assert operator.log_path.read_text().count("made the controller") == operator.starts  # one per process


# --- finding 5: the spec of a run in flight -----------------------------------------------------------------------


# In tests/test_crd_admission.py: test_fields_that_shape_the_jobs_are_immutable_once_created.


# --- finding 6: unschedulable steps -------------------------------------------------------------------------------


def test_an_unschedulable_step_says_why_warns_and_fails_the_run_after_its_deadline(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    make_claim(api, namespace)
    doc = quick("nowhere", nodeSelector={"mlperf-operator.io/no-such-pool": "true"}, schedulingTimeoutSeconds=25)
    apply(cluster, namespace, doc)

    def waiting() -> dict[str, Any] | None:
        status = get_run(api, namespace, "nowhere").get("status", {})
        cond = next((c for c in status.get("conditions", []) if c["type"] == "Unschedulable"), None)
        return status if cond and cond["status"] == "True" else None

    status = wait_for(waiting, timeout=60, what="the Unschedulable condition")
    assert status["phase"] == "Downloading"
    stuck = step(status, "download-data")
    assert stuck["reason"] == "Unschedulable" and "node(s) didn't match" in stuck["message"], stuck

    def warned() -> set[str]:  # the Event follows the status patch that the wait above saw
        events = all_events(api, namespace)
        return {e.reason for e in events if e.involved_object.name == "nowhere" and e.type == "Warning"}

    wait_for(lambda: "Unschedulable" in warned(), timeout=30, what="the Unschedulable Warning Event")
    assert "Unschedulable" in warned()

    final = wait_phase(api, namespace, "nowhere", TERMINAL, operator)["status"]
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert final["phase"] == "Failed" and failed["reason"] == "Unschedulable", failed
    assert "schedulingTimeoutSeconds" in failed["message"] and "didn't match" in failed["message"]
    # The Jobs that could never run are suspended, so their pods do not wait for a node for ever.
    jobs = run_jobs(api, namespace, "nowhere")
    assert jobs and all(j.spec.suspend for j in jobs), [(j.metadata.name, j.spec.suspend) for j in jobs]
    wait_for(
        lambda: not client.CoreV1Api(api).list_namespaced_pod(namespace).items,
        timeout=60,
        what="the waiting pods to go",
    )
    assert duplicate_events(api, namespace) == []


# --- finding 7: one producer per artifact across runs -------------------------------------------------------------

IDENTICAL_RUNS = 50


@pytest.mark.timeout(1800)
def test_fifty_identical_runs_make_each_shared_artifact_once(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    make_claim(api, namespace)
    names = [f"same-{i:02d}" for i in range(IDENTICAL_RUNS)]
    started = time.monotonic()
    with PodExecutor(cluster.kubeconfig, namespaces=[namespace], workdir_root=tmp_path / "executor") as executor:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([quick(n) for n in names]))
        for name in names:
            status = wait_phase(api, namespace, name, TERMINAL, operator)["status"]
            assert status["phase"] == "Succeeded", (name, json.dumps(status, indent=1)[:2000])
    elapsed = time.monotonic() - started

    jobs = list(client.BatchV1Api(api).list_namespaced_job(namespace).items)
    by_step = collections.Counter(j.metadata.labels["mlperf-operator.io/step"] for j in jobs)
    shared = ("download-data", "download-model", "preprocess")
    assert {s: by_step[s] for s in shared} == dict.fromkeys(shared, 1), by_step
    assert by_step["run-offline-performance"] == by_step["report"] == IDENTICAL_RUNS
    pods = [r for r in executor.runs.values() if r.returncode is not None]
    assert len(pods) == len(jobs), "a Job ran more than one pod"
    index = client.CoreV1Api(api).read_namespaced_config_map("mlperf-cache-mlperf-cache", namespace).data
    assert not [k for k in index if k.startswith("producing.")], index  # every lease given back
    assert len({json.loads(v)["producedBy"] for v in index.values()}) == len(shared)
    assert duplicate_events(api, namespace) == []
    print(f"{IDENTICAL_RUNS} runs, {len(jobs)} Jobs, {elapsed:.0f} s")
