"""The chart's RBAC is enough for the operator and no more: the real operator, authenticated with a token of
the chart's ServiceAccount, drives the example to Succeeded; SubjectAccessReviews (`kubectl auth can-i`) show
what it cannot do."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from test_helm import install, service_account, token_kubeconfig, uninstall
from test_leader import holder
from test_operator_e2e import EXAMPLE, get_run, make_claim, run_jobs, wait_phase

RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
# An API call refused by RBAC reads: ... is forbidden: User "system:serviceaccount:NS:SA" cannot VERB resource ...
DENIAL = re.compile(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot (\w+) resource \\?"([\w/]+)\\?"(.{0,60})')


def denials(log: str) -> set[tuple[str, str, str]]:
    found = set()
    for verb, resource, rest in DENIAL.findall(log):
        where = "at the cluster scope" if "at the cluster scope" in rest else "in a namespace"
        found.add((verb, resource, where))
    return found


@pytest.fixture
def namespaced_identity(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """The chart installed with scope=namespace into the test namespace (CRD, ServiceAccount, RBAC; no
    Deployment: no image runs under kwok), and a kubeconfig holding a token of its ServiceAccount."""
    release = "mlperf-operator"
    install(cluster, release, namespace, replicaCount=0, scope="namespace")
    cluster.kubectl("wait", "--for=condition=Established", "crd/mlperfruns.mlperf-operator.io", "--timeout=60s")
    yield token_kubeconfig(cluster, namespace, service_account(release), tmp_path / "sa.kubeconfig")
    uninstall(cluster, release, namespace)


@pytest.fixture
def clusterwide_release(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart installed with scope=cluster (the default); yields the ServiceAccount's user name."""
    release = "mlperf-operator"
    install(cluster, release, namespace, replicaCount=0)
    yield f"system:serviceaccount:{namespace}:{service_account(release)}"
    uninstall(cluster, release, namespace)  # takes its ClusterRole and ClusterRoleBinding along


def can_i(cluster: Cluster, user: str, verb: str, resource: str, namespace: str | None, name: str = "") -> bool:
    """What `kubectl auth can-i --as=user` asks, as a SubjectAccessReview: kubectl cannot name the group of a
    resource the server does not serve (Kueue's, where Kueue is not installed), RBAC can. "pods/log" asks for
    the subresource; "jobs.batch" for the group; `name` for one object."""
    resource, _, sub = resource.partition("/")
    plural, _, group = resource.partition(".")
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):  # what impersonating a ServiceAccount adds
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}"]
    attributes = {"verb": verb, "resource": plural, "group": group, "subresource": sub, "namespace": namespace or ""}
    attributes["name"] = name
    review = {"spec": {"user": user, "groups": groups, "resourceAttributes": attributes}}
    answer = client.AuthorizationV1Api(cluster.api_client()).create_subject_access_review(review)
    return bool(answer.status.allowed)


# What the operator does, everywhere it watches ...
ALLOWED = [
    ("create", "jobs.batch"),
    ("list", "jobs.batch"),
    ("patch", "jobs.batch"),  # only to suspend a Job unschedulable past its run's deadline
    ("watch", "mlperfruns.mlperf-operator.io"),
    ("patch", "mlperfruns.mlperf-operator.io/status"),
    ("create", "mlperfruns.mlperf-operator.io"),  # a campaign's points
    ("delete", "mlperfruns.mlperf-operator.io"),  # a point removed from a campaign's matrix
    ("watch", "mlperfcampaigns.mlperf-operator.io"),
    ("patch", "mlperfcampaigns.mlperf-operator.io/status"),
    ("get", "pods/log"),
    ("create", "persistentvolumeclaims"),
    ("patch", "configmaps"),
    ("create", "events"),
    ("list", "workloads.kueue.x-k8s.io"),  # why a step waits for Kueue
]
# ... and a sample of what it has no business with: credentials, nodes, workloads other than Jobs,
# deleting anything, rewriting a run's spec, and anything that would let it grant itself more.
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("create", "deployments.apps"),
    ("create", "daemonsets.apps"),
    ("delete", "jobs.batch"),
    ("update", "jobs.batch"),
    ("delete", "persistentvolumeclaims"),
    ("update", "mlperfruns.mlperf-operator.io"),
    ("patch", "mlperfruns.mlperf-operator.io"),
    ("patch", "mlperfcampaigns.mlperf-operator.io"),
    ("delete", "mlperfcampaigns.mlperf-operator.io"),
    ("create", "serviceaccounts/token"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
]
CLUSTER_DENIED = [
    ("delete", "nodes"),
    ("patch", "nodes"),
    ("create", "persistentvolumes"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "namespaces"),
    ("create", "certificatesigningrequests.certificates.k8s.io"),
]


def test_cluster_scope_can_run_jobs_everywhere_but_not_read_secrets_or_touch_nodes(
    cluster: Cluster, namespace: str, clusterwide_release: str
) -> None:
    user = clusterwide_release
    for ns in (namespace, "default"):
        wrong = [(v, r) for v, r in ALLOWED if not can_i(cluster, user, v, r, ns)]
        wrong += [(v, r, "allowed!") for v, r in DENIED if can_i(cluster, user, v, r, ns)]
        assert not wrong, f"in {ns}: {wrong}"
    assert can_i(cluster, user, "list", "mlperfruns.mlperf-operator.io", None)
    assert not can_i(cluster, user, "list", "secrets", None)
    assert not [(v, r) for v, r in CLUSTER_DENIED if can_i(cluster, user, v, r, None)]
    assert_lease_rbac(cluster, user, release_namespace=namespace)


LEASES = "leases.coordination.k8s.io"


def assert_lease_rbac(cluster: Cluster, user: str, release_namespace: str) -> None:
    """Leader election: its one Lease (named after the release) in the release namespace, nothing else."""
    lease = "mlperf-operator"
    for verb in ("get", "update"):
        assert can_i(cluster, user, verb, LEASES, release_namespace, lease), verb
        assert not can_i(cluster, user, verb, LEASES, release_namespace, "kube-controller-manager"), verb
        assert not can_i(cluster, user, verb, LEASES, "default", lease), verb
    assert can_i(cluster, user, "create", LEASES, release_namespace)
    assert not can_i(cluster, user, "create", LEASES, "default")
    assert not can_i(cluster, user, "delete", LEASES, release_namespace, lease)
    assert not can_i(cluster, user, "list", LEASES, release_namespace)


def test_namespace_scope_acts_only_in_its_namespace(
    cluster: Cluster, namespace: str, namespaced_identity: Path
) -> None:
    user = f"system:serviceaccount:{namespace}:{service_account('mlperf-operator')}"
    assert all(can_i(cluster, user, v, r, namespace) for v, r in ALLOWED)
    assert not [(v, r) for v, r in DENIED if can_i(cluster, user, v, r, namespace)]
    # Nothing at all in another namespace, nothing cluster-wide but the two reads kopf does.
    assert not [(v, r) for v, r in ALLOWED if can_i(cluster, user, v, r, "default")]
    assert not can_i(cluster, user, "list", "mlperfruns.mlperf-operator.io", None)
    assert can_i(cluster, user, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert not [(v, r) for v, r in CLUSTER_DENIED if can_i(cluster, user, v, r, None)]
    assert_lease_rbac(cluster, user, release_namespace=namespace)


def test_operator_under_the_chart_identity_drives_the_example_to_succeeded_in_a_restricted_namespace(
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    namespaced_identity: Path,
    pod_executor: PodExecutor,
    tmp_path: Path,
) -> None:
    # Every pod of the pipeline must also be admitted under the restricted Pod Security Standard.
    cluster.kubectl("label", "namespace", namespace, RESTRICTED)
    make_claim(api, namespace)  # as the admin: creating volumes is the cluster admin's part
    doc = yaml.safe_load(EXAMPLE.read_text())
    # The example's pipeline, every step, with LoadGen runs kept short: this test is about identity and
    # admission, not the benchmark's figures. One audit keeps an audit Job in the pipeline.
    doc["spec"]["loadgen"] = {"minDurationMs": 1000, "expectedQps": 20, "minQueryCount": 1}
    doc["spec"]["audits"] = ["TEST05"]

    with OperatorProcess(namespaced_identity, [namespace], tmp_path / "operator.log") as operator:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
        run = wait_phase(api, namespace, "resnet50-offline", {"Succeeded", "Failed"}, operator)
        time.sleep(1)  # let the last reconciles' calls reach the log
        log = operator.log_path.read_text(errors="replace")

    status = run["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert {r["testMode"] for r in status["results"]} == {"PerformanceOnly", "AccuracyOnly"}
    assert [a["test"] for a in status["audits"]] == ["TEST05"]

    # The chart's RBAC was enough: no call the operator made was refused.
    unexpected = denials(log)
    assert not unexpected, f"RBAC refused the operator: {sorted(unexpected)}\n{operator.log_tail()}"

    # Every step ran as a Job whose pod was admitted: no FailedCreate (PodSecurity) anywhere.
    core = client.CoreV1Api(api)
    events = core.list_namespaced_event(namespace).items
    failed = [f"{e.involved_object.name}: {e.message}" for e in events if e.reason == "FailedCreate"]
    assert not failed, failed
    jobs = run_jobs(api, namespace, "resnet50-offline")
    assert len(jobs) == len(status["steps"]) and all(j.status.succeeded == 1 for j in jobs)
    assert get_run(api, namespace, "resnet50-offline")["status"]["phase"] == "Succeeded"


def test_namespace_scope_resync_and_leader_election_need_no_cluster_wide_rights(
    cluster: Cluster, api: client.ApiClient, namespace: str, namespaced_identity: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "operator.log"
    with OperatorProcess(namespaced_identity, [namespace], log_path, resync_seconds=0.5, leader="sa") as op:
        # It takes the Lease (create, then get and update: the chart's lease name is the release's) and
        # leads; the Lease is absent until then (a loaded machine's operator can take seconds to start).
        wait_for(lambda: holder(api, namespace) == op.identity, timeout=60, what="the operator to lead")
        time.sleep(2)  # a few resyncs and renewals
        log = op.log_path.read_text(errors="replace")
    assert not denials(log), sorted(denials(log))
    assert "released the Lease" in log_path.read_text(errors="replace")  # update, on SIGTERM
