"""The Helm chart (helm/mlperf-operator): lint, rendering, its values schema, its CRD copy, and an install
into the local control plane. Helpers here are shared with test_rbac.py and test_security.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import Cluster, wait_for
from kubernetes import client

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "mlperf-operator"
CRD_FILE = "mlperfruns.mlperf-operator.io.yaml"
TOOLS_BIN = Path.home() / ".cache" / "mlperf-operator" / "bin"
# The locally built helm does not know its Kubernetes version (it would say v1.20, older than the chart's
# kubeVersion), so rendering without a cluster names the control plane's.
KUBE_VERSION = "1.37.2"


# --- helpers ---------------------------------------------------------------------------------------------


def helm_bin() -> Path:
    """`make tools` builds helm; without it the test fails under CI and is skipped elsewhere."""
    found = TOOLS_BIN / "helm"
    if found.exists():
        return found
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("helm is missing: run `make tools`", pytrace=False)
    pytest.skip("helm is missing: run `make tools`")


def helm(*args: str, cluster: Cluster | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = cluster.env() if cluster else {**os.environ, "KUBECONFIG": os.devnull}
    proc = subprocess.run([str(helm_bin()), *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def sets(values: dict[str, Any]) -> list[str]:
    """--set-json flags, one per top-level value (keeps types: numbers, lists, booleans)."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render(namespace: str = "mlperf", release: str = "mlperf", **values: Any) -> list[dict[str, Any]]:
    """The chart's templates rendered without a cluster (CRDs not included)."""
    out = helm("template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, *sets(values)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def install(cluster: Cluster, release: str, namespace: str, **values: Any) -> str:
    """helm install into the cluster; returns helm's output (NOTES included)."""
    return helm("install", release, str(CHART), "-n", namespace, *sets(values), cluster=cluster).stdout


def uninstall(cluster: Cluster, release: str, namespace: str) -> None:
    helm("uninstall", release, "-n", namespace, "--ignore-not-found", cluster=cluster, check=False)


def service_account(release: str) -> str:
    """The ServiceAccount the chart makes for a release (its full name)."""
    return release if "mlperf-operator" in release else f"{release}-mlperf-operator"


def lint_tools() -> Path:
    """The bin directory of the chart's checkers (checkov, promql-parser), installed once into a venv of
    their own by helm/install-lint-tools.sh; later calls only check the versions."""
    script = REPO / "helm" / "install-lint-tools.sh"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}{proc.stderr}"
    return Path(proc.stdout.strip().splitlines()[-1])


def token_kubeconfig(cluster: Cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a token from the TokenRequest API."""
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": sa, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = sa
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --- without a cluster -----------------------------------------------------------------------------------


def test_chart_carries_the_generated_crds_byte_for_byte() -> None:
    for crd in (CRD_FILE, "mlperfcampaigns.mlperf-operator.io.yaml"):
        generated = (REPO / "crds" / crd).read_bytes()
        assert (CHART / "crds" / crd).read_bytes() == generated, f"helm/mlperf-operator/crds/{crd} drifted: make crds"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))


def test_helm_lint_passes() -> None:
    out = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in out.stdout


def test_the_operator_deployment_is_hardened() -> None:
    deployment = by_kind(render(), "Deployment")[0]
    # Two replicas, one leading (leader election), so an update may overlap old and new pods.
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["image"] == "ghcr.io/mlperf-operator/operator:0.1.0"  # the chart's appVersion
    assert container["command"] == ["mlperf-operator"]
    assert container["args"] == [
        "--all-namespaces",
        "--health-port=8081",
        "--leader-election",
        "--lease-name=mlperf-mlperf-operator",
    ]
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["MLPERF_METRICS_PORT"] == "8080"
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"  # the downward API


def test_leader_election_has_its_lease_rbac_and_without_it_one_replica_recreated() -> None:
    docs = render(namespace="ops")
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["mlperf-mlperf-operator"],  # the --lease-name, nothing else
            "verbs": ["get", "update"],
        },
    ]
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == role["metadata"]["name"]]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlperf-mlperf-operator", "namespace": "ops"}]
    # In namespace scope too, next to the watched namespaces' Roles.
    roles = by_kind(render(namespace="ops", scope="namespace", watchNamespaces=["team-a"]), "Role")
    assert sorted((r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles) == [
        ("ops", "mlperf-mlperf-operator-leader-election"),
        ("team-a", "mlperf-mlperf-operator"),
    ]

    single = render(leaderElection={"enabled": False}, replicaCount=1)
    deployment = by_kind(single, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--leader-election" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not by_kind(single, "Role")


def test_image_tag_and_digest_come_from_values() -> None:
    def image(**values: Any) -> str:
        return str(by_kind(render(**values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"])

    assert image(image={"repository": "r.example/op", "tag": "1.2.3"}) == "r.example/op:1.2.3"
    digest = "sha256:" + "a" * 64
    assert image(image={"repository": "r.example/op", "digest": digest}) == f"r.example/op@{digest}"


def test_cluster_scope_binds_one_cluster_role_and_namespace_scope_binds_roles() -> None:
    cluster_docs = render()
    # No Role but the leader election's, for its Lease (test_leader_election_has_its_lease_rbac_...).
    assert [r["metadata"]["name"] for r in by_kind(cluster_docs, "Role")] == ["mlperf-mlperf-operator-leader-election"]
    (role,) = by_kind(cluster_docs, "ClusterRole")
    assert {"mlperfruns", "jobs", "customresourcedefinitions"} <= {
        r for rule in role["rules"] for r in rule["resources"]
    }

    docs = render(namespace="ops", scope="namespace", watchNamespaces=["team-a", "team-b"])
    roles = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlperf-mlperf-operator", "namespace": "ops"}]
    # Cluster-wide, a namespace-scoped install can only read CRDs and namespace names: nothing else.
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert {(r, v) for rule in cluster_role["rules"] for r in rule["resources"] for v in rule["verbs"]} == {
        ("customresourcedefinitions", "list"),
        ("customresourcedefinitions", "watch"),
        ("namespaces", "list"),
        ("namespaces", "watch"),
    }
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"]
    # Without watchNamespaces it watches the release's own namespace.
    roles = by_kind(render(namespace="ops", scope="namespace"), "Role")
    assert [r["metadata"]["namespace"] for r in roles if r["metadata"]["name"] == "mlperf-mlperf-operator"] == ["ops"]


def test_no_rule_grants_secrets_wildcards_or_escalation() -> None:
    for docs in (render(), render(scope="namespace")):
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "secrets" not in rule["resources"], rule
                assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
                # The one delete: a campaign's run whose point left its matrix (an owned child).
                assert "delete" not in rule["verbs"] or rule["resources"] == ["mlperfruns"], rule


def test_optional_monitoring_renders_servicemonitor_rules_and_dashboard() -> None:
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PrometheusRule")
    docs = render(
        metrics={"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True, "stuckFor": "3h"}},
        grafanaDashboard={"enabled": True},
    )
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"MLPerfRunFailed", "MLPerfRunStuck", "MLPerfReconcileErrors", "MLPerfOperatorDown"}
    assert 'mlperf_runs{phase="Failed"}' in alerts["MLPerfRunFailed"]["expr"]
    assert "[3h]" in alerts["MLPerfRunStuck"]["expr"]
    assert "mlperf_reconcile_errors_total" in alerts["MLPerfReconcileErrors"]["expr"]
    assert "{{ $value }}" in alerts["MLPerfRunFailed"]["annotations"]["description"]  # left for Prometheus
    dashboard = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["mlperf-operator.json"])["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("mlperf_runs", "mlperf_result_samples_per_second", "mlperf_step_duration_seconds_bucket"):
        assert metric in exprs
    # A ServiceMonitor without the Service it scrapes is refused with a clear message.
    no_service = sets({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})
    proc = helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, *no_service, check=False)
    assert proc.returncode != 0 and "needs metrics.service.enabled" in proc.stderr


def test_alerts_and_dashboard_query_only_metrics_the_operator_exports_in_valid_promql() -> None:
    from mlperf_operator import metrics  # noqa: F401  (registers the operator's metrics)
    from prometheus_client import REGISTRY

    exported = {s.name for family in REGISTRY.collect() for s in family.samples if s.name.startswith("mlperf_")}
    exported |= {family.name for family in REGISTRY.collect() if family.name.startswith("mlperf_")}
    docs = render(
        metrics={"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        grafanaDashboard={"enabled": True},
    )
    alerts = [r["expr"] for r in by_kind(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]]
    dashboard = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    panels = json.loads(dashboard["data"]["mlperf-operator.json"])["panels"]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    used = {name for expr in alerts + queries for name in re.findall(r"\bmlperf_\w+", expr)}
    # A histogram's and a counter's series carry suffixes the registry may not list until observed.
    bare = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in exported}
    unknown = {n for n in used if n not in exported and re.sub(r"_(bucket|count|sum|total)$", "", n) not in bare}
    assert not unknown, f"queries name metrics the operator does not export: {unknown}"

    # Grafana's own variables are not PromQL; give them a value before parsing.
    grafana = {"$__rate_interval": "5m", "$__range": "1h"}
    for name, value in grafana.items():
        queries = [q.replace(name, value) for q in queries]
    check = "import json, sys, promql_parser\nfor q in json.load(sys.stdin): promql_parser.parse(q)\n"
    for expr in alerts + queries:
        proc = subprocess.run(
            [str(lint_tools() / "python"), "-c", check], input=json.dumps([expr]), capture_output=True, text=True
        )
        assert proc.returncode == 0, f"invalid PromQL: {expr}\n{proc.stderr[-500:]}"


# --- on the local control plane ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 0"),
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "at '/replicaCount': maximum: got 2, want 1"),
        ({"leaderElection": {"enable": True}}, "at '/leaderElection'"),
        ({"replicas": 1}, "additional properties 'replicas' not allowed"),
        ({"image": {"repository": "r", "pullpolicy": "Always"}}, "at '/image': additional properties 'pullpolicy'"),
        ({"scope": "everywhere"}, "at '/scope'"),
    ],
)
def test_a_bad_value_fails_helm_install_with_the_schema_message(
    cluster: Cluster, namespace: str, values: dict[str, Any], message: str
) -> None:
    proc = helm("install", "bad", str(CHART), "-n", namespace, *sets(values), cluster=cluster, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr and message in proc.stderr, proc.stderr
    assert "bad" not in helm("list", "-n", namespace, "-q", cluster=cluster).stdout.split()


def test_helm_install_succeeds_and_the_operator_pod_is_admitted_as_restricted(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    # The operator's own pod must pass the restricted Pod Security Standard too.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    release = "mlperf-operator"
    try:
        notes = install(cluster, release, namespace)
        assert "STATUS: deployed" in notes and "kubectl get mlperfruns" in notes
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        assert core.read_namespaced_service_account(release, namespace)
        assert core.read_namespaced_service(f"{release}-metrics", namespace)
        assert apps.read_namespaced_deployment(release, namespace).spec.replicas == 2
        cluster.kubectl("get", "crd", "mlperfruns.mlperf-operator.io")
        # No image can run under kwok, but the ReplicaSet's pod is created: PodSecurity admitted it.
        selector = f"app.kubernetes.io/instance={release}"
        wait_for(
            lambda: core.list_namespaced_pod(namespace, label_selector=selector).items,
            timeout=30,
            what="the operator's pod to be created",
        )
        failed = [e.message for e in core.list_namespaced_event(namespace).items if e.reason == "FailedCreate"]
        assert not failed, failed
    finally:
        uninstall(cluster, release, namespace)


def test_the_kueue_option_gives_the_operator_its_default_queue_and_installs_the_local_queues() -> None:
    def env(docs: list[dict[str, Any]]) -> dict[str, str]:
        container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}  # valueFrom entries have none

    off = render()
    assert "MLPERF_KUEUE_QUEUE" not in env(off) and not by_kind(off, "LocalQueue")
    docs = render(kueue={"enabled": True, "localQueue": "gpus", "priorityClass": "low"})
    assert env(docs)["MLPERF_KUEUE_QUEUE"] == "gpus" and env(docs)["MLPERF_KUEUE_PRIORITY_CLASS"] == "low"
    assert not by_kind(docs, "LocalQueue")  # the queue may be the cluster admin's
    docs = render(
        namespace="ops",
        scope="namespace",
        watchNamespaces=["team-a", "team-b"],
        kueue={"enabled": True, "createLocalQueue": True, "clusterQueue": "shared"},
    )
    assert "MLPERF_KUEUE_PRIORITY_CLASS" not in env(docs)
    queues = by_kind(docs, "LocalQueue")
    assert [(q["metadata"]["name"], q["metadata"]["namespace"]) for q in queues] == [
        ("mlperf", "team-a"),
        ("mlperf", "team-b"),
    ]
    assert {q["spec"]["clusterQueue"] for q in queues} == {"shared"}
    # The operator reads Kueue's Workloads (why a step is Queued), and only lists them.
    (role,) = by_kind(render(), "ClusterRole")
    assert [r["verbs"] for r in role["rules"] if r["resources"] == ["workloads"]] == [["list"]]
    proc = helm(
        "template", "x", str(CHART), "--kube-version", KUBE_VERSION, *sets({"kueue": {"enable": True}}), check=False
    )
    assert proc.returncode != 0 and "enable" in proc.stderr
