"""Shared fixtures. Cluster tests run against the local control plane of tools/cluster.py (see
tests/cluster/): the `cluster` of the session, a fresh `namespace` per test, and a `pod_executor` that
really runs the operator's pods of that namespace."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, PodExecutor, acquire, release, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever uses the cluster is a cluster test, so `-m "not cluster"` leaves it out.
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The `make dev-cluster` cluster when it is healthy, else one started (and stopped) for the session.
    Without it the test is skipped, except under CI=true where it fails."""
    try:
        handle = acquire()
    except Exception as e:
        reason = f"local Kubernetes cluster unavailable ({type(e).__name__}): {e}"
        if _ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    yield handle
    release(handle)


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Cluster:
    """A real Kueue in the session's cluster (tools/cluster.py start_kueue: its CRDs, manager and webhooks), and
    the ResourceFlavors and WorkloadPriorityClasses of examples/kueue/. Skipped (failed under CI=true) when
    tools/build-tools.sh has not built it."""
    try:
        cluster.local.start_kueue()
    except Exception as e:
        reason = f"Kueue unavailable ({type(e).__name__}): {e}"
        if _ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    examples = Path(__file__).resolve().parents[1] / "examples" / "kueue"
    cluster.kubectl("apply", "-f", str(examples / "flavors.yaml"), "-f", str(examples / "priority-classes.yaml"))
    return cluster


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    meta = client.V1ObjectMeta(name=name, labels={"mlperf-operator.io/test": "true"})
    core.create_namespace(client.V1Namespace(metadata=meta))

    def has_default_sa() -> bool:  # pods are refused until the ServiceAccount controller made it
        try:
            return bool(core.read_namespaced_service_account("default", name))
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    wait_for(has_default_sa, timeout=30, what=f"ServiceAccount {name}/default")
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture
def pod_executor(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[PodExecutor]:
    """Runs the pods labelled app.kubernetes.io/part-of=mlperf-operator of `namespace` as local processes."""
    with PodExecutor(cluster.kubeconfig, namespaces=[namespace], workdir_root=tmp_path / "executor") as ex:
        yield ex
