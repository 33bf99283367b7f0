"""The generated CRD on the real API server: admission rules, immutability, kubectl explain."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cluster import Cluster, wait_for

REPO = Path(__file__).resolve().parents[1]
INVALID = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd_installed(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"), "--timeout=60s")
    return cluster


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <field>'"
    return first.removeprefix("# expect: ").strip()


@pytest.mark.parametrize("manifest", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(crd_installed: Cluster, namespace: str, manifest: Path) -> None:
    proc = crd_installed.kubectl("apply", "-n", namespace, "-f", str(manifest), check=False)
    assert proc.returncode != 0, f"{manifest.name} was accepted:\n{proc.stdout}"
    assert _expected_field(manifest) in proc.stderr, proc.stderr


def test_examples_are_accepted(crd_installed: Cluster, namespace: str) -> None:
    for example in sorted((REPO / "examples").glob("*.yaml")):
        crd_installed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example))


def _patch(cluster: Cluster, namespace: str, spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "resnet50-offline.yaml"))
    patch = json.dumps({"spec": spec})
    return cluster.kubectl(
        "patch", "mlperfrun", "resnet50-offline", "-n", namespace, "--type=merge", "-p", patch, check=False
    )


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("spec.benchmark", {"benchmark": "bert"}),
        ("spec.images", {"images": {"harness": "example.org/harness:other"}}),  # changed
        ("spec.nodeSelector", {"nodeSelector": {"pool": "other"}}),  # added where there was none
        ("spec.precision", {"precision": "fp16"}),  # an optional field, added
        ("spec.system", {"system": {"gpuCount": 2}}),
        ("spec.resources", {"resources": {"limits": {"cpu": "2"}}}),
        ("spec.tolerations", {"tolerations": [{"key": "k", "operator": "Exists"}]}),
    ],
)
def test_fields_that_shape_the_jobs_are_immutable_once_created(
    crd_installed: Cluster, namespace: str, field: str, spec: dict[str, object]
) -> None:
    """A change mid-run would mix two settings in one result (issue 22): refused, naming the field."""
    proc = _patch(crd_installed, namespace, spec)
    assert proc.returncode != 0 and f"{field} is immutable once the run exists" in proc.stderr, proc.stderr


def test_fields_that_do_not_shape_a_result_may_change(crd_installed: Cluster, namespace: str) -> None:
    proc = _patch(crd_installed, namespace, {"retries": 4, "ttlSecondsAfterFinished": 60})
    assert proc.returncode == 0, proc.stderr


def test_kubectl_explain_shows_the_descriptions(crd_installed: Cluster) -> None:
    def explained() -> str:
        proc = crd_installed.kubectl("explain", "mlperfrun.spec.loadgen", check=False)
        return proc.stdout if proc.returncode == 0 else ""

    text = wait_for(explained, timeout=30, what="kubectl explain to know the CRD")
    assert "Server target QPS" in text and "targetQps" in text
    status = crd_installed.kubectl("explain", "mlperfrun.status.steps").stdout
    assert "cacheHit" in status and "already in the cache" in status
