"""Every Kubernetes object the operator creates for a run is built here, and only here."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from mlperf_harness.pipeline import Step
from mlperf_harness.spec import MLPerfRunSpec

from .api import GROUP, KIND, VERSION

PART_OF = "mlperf-operator"
RUN_LABEL = f"{GROUP}/run"
STEP_LABEL = f"{GROUP}/step"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # a Job that names a LocalQueue waits for Kueue to admit it
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a WorkloadPriorityClass: the order of admission
# The chart's kueue option (helm/mlperf-operator values kueue.*): the LocalQueue and WorkloadPriorityClass of the
# Jobs of every run that names none in spec.kueue.
DEFAULT_QUEUE_ENV, DEFAULT_PRIORITY_ENV = "MLPERF_KUEUE_QUEUE", "MLPERF_KUEUE_PRIORITY_CLASS"
ARTIFACT_ANNOTATION = f"{GROUP}/artifact"
WORKDIR = "/mlperf"
SOURCES_ROOT = "/sources"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
MAX_NAME = 63
# The harness images run as this non-root user; fsGroup makes the volume writable for it.
RUN_AS_USER = 65532


def dns_name(*parts: str, limit: int = MAX_NAME) -> str:
    """A deterministic DNS-1123 label: the parts joined, shortened with a digest when too long."""
    name = "-".join(parts).lower()
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def _short(run: str, room: int) -> str:
    """The run's name in `room` characters: cut, with a digest of the whole so that two cuts never collide."""
    if len(run) <= room:
        return run
    digest = hashlib.sha256(run.encode()).hexdigest()[:8]
    return f"{run[: room - 9].rstrip('-.')}-{digest}"


def run_label(run: str) -> str:
    """The run label's value: a run name may be 253 characters, a label value 63."""
    return _short(run, MAX_NAME)


def job_name(run: str, step: str) -> str:
    """The run's name shortened, never the step's: `kubectl get jobs` still says which step it is."""
    return f"{_short(run, MAX_NAME - len(step) - 1)}-{step}"


def run_key(run: dict[str, Any]) -> str:
    """The run's directory on the claim: a run deleted and created anew under its name measures afresh."""
    meta = run["metadata"]
    return f"{meta['name']}-{meta['uid'][:8]}"


def claim_name(run: str) -> str:
    return dns_name(run, "data")


def cache_index_name(claim: str) -> str:
    return dns_name("mlperf-cache", claim, limit=253)


def common_labels(run: str, spec: MLPerfRunSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlperf-harness",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": PART_OF,
        RUN_LABEL: run_label(run),
        f"{GROUP}/benchmark": spec.benchmark,
    }


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """The reference that makes an object the run's (or the campaign's): removed with it."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": owner.get("kind", KIND),
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def kueue_labels(spec: MLPerfRunSpec) -> dict[str, str]:
    """Kueue's labels for a Job: the run's spec.kueue, else the operator's defaults (the chart's kueue option);
    none without a LocalQueue, as a priority class alone means nothing to Kueue."""
    queue = spec.kueue.queueName or os.environ.get(DEFAULT_QUEUE_ENV)
    if not queue:
        return {}
    priority = spec.kueue.priorityClass or os.environ.get(DEFAULT_PRIORITY_ENV)
    return {KUEUE_QUEUE_LABEL: queue, **({KUEUE_PRIORITY_LABEL: priority} if priority else {})}


def _gpu_count(spec: MLPerfRunSpec, step: Step) -> int:
    if not step.gpu:
        return 0
    if spec.system.exclusiveNode and step.verb in ("run-harness", "audit"):
        return spec.system.gpusPerNode
    return spec.system.gpuCount


def _env(spec: MLPerfRunSpec, key: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "MLPERF_SPEC", "value": spec.model_dump_json(exclude_defaults=True)},
        {"name": "MLPERF_RUN", "value": key},
        {"name": "MLPERF_WORKDIR", "value": WORKDIR},
        {"name": "MLPERF_SOURCES_ROOT", "value": SOURCES_ROOT},
        {"name": "HOME", "value": "/tmp"},
    ]
    # Credentials reach the pod by reference: the operator never reads a Secret.
    secrets = {s.s3.secretRef.name for s in (spec.dataset, spec.model) if s.s3 and s.s3.secretRef}
    for secret in sorted(secrets):
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _source_claims(spec: MLPerfRunSpec) -> list[str]:
    return sorted({s.pvc.claimName for s in (spec.dataset, spec.model) if s.pvc})


def restricted_container_security() -> dict[str, Any]:
    """What the restricted Pod Security Standard asks of a container."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_job(run: dict[str, Any], spec: MLPerfRunSpec, step: Step, claim: str) -> dict[str, Any]:
    """The batch/v1 Job that runs one step of one run."""
    name = run["metadata"]["name"]
    labels = {**common_labels(name, spec), STEP_LABEL: step.name, "app.kubernetes.io/component": step.verb}
    key = run_key(run)
    command = [step.verb, *step.args, "--run", key, "--workdir", WORKDIR]
    job = _job(run, job_name(name, step.name), spec, labels, command, claim, _gpu_count(spec, step), key)
    if step.artifact:
        job["metadata"]["annotations"] = {ARTIFACT_ANNOTATION: step.artifact.relpath}
    return job


def build_submission_job(
    campaign: dict[str, Any], name: str, spec: MLPerfRunSpec, labels: dict[str, str], runs: list[str], out: str
) -> dict[str, Any]:
    """The Job that assembles a campaign's finished runs (their directories on the claim) into one checked
    tree and tarball under ``out`` on the claim; the check's findings are its outcome."""
    command = ["submission", "--workdir", WORKDIR, "--runs", ",".join(runs), "--out", f"{WORKDIR}/{out}/trees"]
    command += ["--tarball", f"{WORKDIR}/{out}/submission.tar.gz", "--no-fail"]
    all_labels = {"app.kubernetes.io/name": "mlperf-harness", "app.kubernetes.io/component": "submission", **labels}
    assert spec.storage.existingClaim is not None
    return _job(campaign, name, spec, all_labels, command, spec.storage.existingClaim, 0, run_key(campaign))


def _job(
    owner: dict[str, Any],
    name: str,
    spec: MLPerfRunSpec,
    labels: dict[str, str],
    command: list[str],
    claim: str,
    gpus: int,
    key: str,
) -> dict[str, Any]:
    """A Job of the harness image running `mlperf <command>` on the claim, as the spec places its pods;
    ``key`` is the owner's directory on the claim (MLPERF_RUN)."""
    queue = kueue_labels(spec)
    job_labels = {**labels, **queue}

    resources: dict[str, Any] = {k: dict(v) for k, v in spec.resources.items()}
    node_selector = dict(spec.nodeSelector)
    tolerations = list(spec.tolerations)
    if gpus:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[GPU_RESOURCE] = str(gpus)  # a quantity is a string
        node_selector[GPU_PRODUCT_LABEL] = spec.system.gpuProduct
        tolerations.append(GPU_TOLERATION)

    mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": WORKDIR}, {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "tmp", "emptyDir": {}},
    ]
    for i, source_claim in enumerate(_source_claims(spec)):
        mounts.append({"name": f"source-{i}", "mountPath": f"{SOURCES_ROOT}/{source_claim}", "readOnly": True})
        volumes.append({"name": f"source-{i}", "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True}})

    container = {
        "name": "harness",
        "image": spec.images.harness,
        "imagePullPolicy": spec.images.pullPolicy,
        "command": ["mlperf", command[0]],
        "args": command[1:],
        "env": _env(spec, key),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
        # A failed step's last log lines become its termination message when it wrote none.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    optional = {
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "affinity": spec.affinity,
        "serviceAccountName": spec.serviceAccountName,
        "priorityClassName": spec.priorityClassName,
        "imagePullSecrets": [{"name": s} for s in spec.images.pullSecrets],
    }
    pod_spec.update({k: v for k, v in optional.items() if v})

    job_spec: dict[str, Any] = {
        # The Job controller retries a failed pod with exponential backoff: that is spec.retries.
        "backoffLimit": spec.retries,
        "template": {
            "metadata": {
                "labels": {**spec.podLabels, **labels},
                "annotations": dict(spec.podAnnotations),
            },
            "spec": pod_spec,
        },
    }
    if spec.ttlSecondsAfterFinished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttlSecondsAfterFinished
    if queue:
        job_spec["suspend"] = True  # Kueue un-suspends the Job when it admits it

    metadata: dict[str, Any] = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": job_labels,
        "ownerReferences": [owner_reference(owner)],
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_claim(run: dict[str, Any], spec: MLPerfRunSpec) -> dict[str, Any]:
    """The PVC the operator creates for storage.create; owned by the run unless it is retained."""
    create = spec.storage.create
    assert create is not None
    name = run["metadata"]["name"]
    metadata: dict[str, Any] = {
        "name": claim_name(name),
        "namespace": run["metadata"]["namespace"],
        "labels": common_labels(name, spec),
    }
    if create.reclaim == "Delete":
        metadata["ownerReferences"] = [owner_reference(run)]
    pvc_spec: dict[str, Any] = {
        "accessModes": [create.accessMode],
        "resources": {"requests": {"storage": create.size}},
    }
    if create.storageClassName:
        pvc_spec["storageClassName"] = create.storageClassName
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": pvc_spec}


def build_cache_index(claim: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap that records which artifacts a claim holds; it goes with the claim."""
    meta = claim["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cache_index_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/part-of": PART_OF, f"{GROUP}/cache-for": meta["name"]},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"], "uid": meta["uid"]}
            ],
        },
        "data": {},
    }
