"""The Job builder: names, labels, GPU placement, restricted security, credentials by reference."""

from __future__ import annotations

import pytest
from mlperf_harness.pipeline import plan
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_operator.jobs import build_claim, build_job, dns_name, job_name, run_label

RUN = {"metadata": {"name": "r1", "namespace": "ns", "uid": "u-1"}}


def _spec(**extra: object) -> MLPerfRunSpec:
    return MLPerfRunSpec.model_validate({"benchmark": "resnet50", "storage": {"existingClaim": "c"}, **extra})


def _job(spec: MLPerfRunSpec, step_name: str) -> dict:
    step = next(s for s in plan(spec, "v") if s.name == step_name)
    return build_job(RUN, spec, step, "c")


def test_names_are_deterministic_and_dns_safe() -> None:
    long = dns_name("x" * 60, "run-offline-performance")
    assert len(long) == 63 and long == dns_name("x" * 60, "run-offline-performance")
    assert not long.endswith("-") and long != dns_name("x" * 60, "run-offline-accuracy")


def test_gpu_steps_request_gpus_on_the_right_product() -> None:
    job = _job(_spec(system={"gpuProduct": "NVIDIA-A100-SXM4-80GB", "gpuCount": 2}), "run-offline-performance")
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_cpu_steps_and_exclusive_nodes() -> None:
    spec = _spec(system={"exclusiveNode": True, "gpusPerNode": 8})
    assert "nodeSelector" not in _job(spec, "download-data")["spec"]["template"]["spec"]
    run = _job(spec, "run-offline-performance")["spec"]["template"]["spec"]
    assert run["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    pod = _job(_spec(), "preprocess")["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_credentials_reach_the_pod_by_reference() -> None:
    spec = _spec(dataset={"s3": {"uri": "s3://b/imagenet", "secretRef": {"name": "aws"}}})
    env = _job(spec, "download-data")["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
    assert refs == [{"name": "aws", "key": "AWS_ACCESS_KEY_ID"}, {"name": "aws", "key": "AWS_SECRET_ACCESS_KEY"}]


def test_kueue_jobs_start_suspended_with_their_queue() -> None:
    job = _job(_spec(kueue={"queueName": "gpu", "priorityClass": "high"}), "download-data")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"


def test_the_operators_default_queue_and_priority_apply_unless_the_run_names_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLPERF_KUEUE_QUEUE", "team")  # the chart's kueue.localQueue
    monkeypatch.setenv("MLPERF_KUEUE_PRIORITY_CLASS", "low")
    default = _job(_spec(), "download-data")
    assert default["spec"]["suspend"] is True
    assert default["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
    assert default["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    own = _job(_spec(kueue={"queueName": "gpu", "priorityClass": "high"}), "download-data")["metadata"]["labels"]
    assert own["kueue.x-k8s.io/queue-name"] == "gpu" and own["kueue.x-k8s.io/priority-class"] == "high"
    monkeypatch.delenv("MLPERF_KUEUE_QUEUE")
    plain = _job(_spec(), "download-data")  # a priority class alone goes to no queue
    assert "suspend" not in plain["spec"]
    assert not [k for k in plain["metadata"]["labels"] if k.startswith("kueue.x-k8s.io/")]


def test_engine_build_and_runs_land_on_the_same_gpu_product() -> None:
    spec = _spec(backend="onnxruntime", system={"gpuProduct": "NVIDIA-A100-SXM4-80GB", "exclusiveNode": True})
    gpu_steps = [s.name for s in plan(spec, "v") if s.gpu]
    assert any(n.startswith("build-engine") for n in gpu_steps) and "run-offline-performance" in gpu_steps
    for name in gpu_steps:
        pod = _job(spec, name)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, name
    engine = next(n for n in gpu_steps if n.startswith("build-engine"))
    limits = _job(spec, engine)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"  # exclusiveNode is for measuring, not for building


def test_created_claim_is_owned_unless_retained() -> None:
    owned = build_claim(RUN, _spec(storage={"create": {"size": "10Gi"}}))
    kept = build_claim(RUN, _spec(storage={"create": {"size": "10Gi", "reclaim": "Retain"}}))
    assert owned["metadata"]["ownerReferences"] and "ownerReferences" not in kept["metadata"]


def test_long_run_names_keep_the_step_in_job_names_and_fit_a_label() -> None:
    run = "r" * 200
    name = job_name(run, "run-offline-performance")
    assert len(name) == 63 and name.endswith("-run-offline-performance") and name.startswith("r" * 20)
    assert job_name(run, "report") != job_name("r" * 199, "report")  # cut, with a digest of the whole
    assert len(run_label(run)) == 63 and run_label("short") == "short"
    job = build_job({"metadata": {"name": run, "namespace": "ns", "uid": "u-1"}}, _spec(), plan(_spec(), "v")[0], "c")
    assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())
    assert all(len(v) <= 63 for v in job["spec"]["template"]["metadata"]["labels"].values())
