"""Campaigns on the real control plane: the example's matrix (resnet50 x Offline, Server, SingleStream x two
GPU products) to Succeeded with the operator killed along the way, a matrix edit that adds only its new
points, and a manifest that server-side apply and kubectl diff see unchanged after the operator wrote to it.
The runs use the null backend and performance runs only (each pipeline a few harness processes of seconds)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import yaml
from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from test_operator_e2e import RUN_TIMEOUT, crds, make_claim, operator, run_jobs

__all__ = ["crds", "operator"]  # fixtures, used by name

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "campaign-resnet50.yaml"


def campaign_manifest(**spec: Any) -> dict[str, Any]:
    """The example campaign, made cheap: the null backend, performance only, no audits, short runs."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["template"].update(
        backend="null",
        testModes=["PerformanceOnly"],
        audits=[],
        fast=False,
        loadgen={"minDurationMs": 1000, "minQueryCount": 1, "expectedQps": 1, "targetQps": 5, "targetLatencyMs": 50},
        dataset={"synthetic": {"samples": 16}},
    )
    doc["spec"].update(spec)
    return doc


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def get_campaign(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[return-value]
        "mlperf-operator.io", "v1alpha1", namespace, "mlperfcampaigns", name
    )


def campaign_runs(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "mlperf-operator.io", "v1alpha1", namespace, "mlperfruns", label_selector="mlperf-operator.io/campaign=resnet50"
    )
    return list(listed["items"])  # type: ignore[index]


def wait_campaign(api: client.ApiClient, namespace: str, op: OperatorProcess, generation: int = 1) -> dict[str, Any]:
    """The campaign's status once it finished the points of its spec's `generation`."""

    def reached() -> dict[str, Any] | None:
        status = get_campaign(api, namespace, "resnet50").get("status") or {}
        done = status.get("phase") in ("Succeeded", "Failed")
        return status if done and status.get("observedGeneration") == generation else None

    try:
        return wait_for(reached, timeout=2 * RUN_TIMEOUT, interval=1, what="the campaign to finish")
    except AssertionError as exc:
        status = get_campaign(api, namespace, "resnet50").get("status", {})
        raise AssertionError(f"{exc}\nstatus: {json.dumps(status, indent=1)[:4000]}\n{op.log_tail()}") from None


def test_a_campaign_runs_its_matrix_to_succeeded_through_restarts_and_grows_by_its_new_points_only(
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    pod_executor: PodExecutor,
    tmp_path: Path,
) -> None:
    make_claim(api, namespace)
    manifest = write(tmp_path, campaign_manifest())
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(manifest))

    # The operator killed (SIGKILL) at three points of the campaign: no duplicate run, no duplicate Job.
    def progress() -> tuple[int, int, bool]:
        status = get_campaign(api, namespace, "resnet50").get("status") or {}
        finished = status.get("phase") in ("Succeeded", "Failed")
        return len(campaign_runs(api, namespace)), status.get("succeeded", 0), finished

    marks = [lambda runs, done: runs >= 1, lambda runs, done: done >= 1, lambda runs, done: runs >= 5]
    for mark in marks:
        wait_for(lambda m=mark: m(*progress()[:2]) or progress()[2], timeout=RUN_TIMEOUT, interval=0.5)
        operator.restart(kill=True)
    assert operator.starts == 4
    status = wait_campaign(api, namespace, operator)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:4000]
    assert (status["pointCount"], status["succeeded"], status["failed"]) == (6, 6, 0)
    assert {(p["scenario"], p["category"]) for p in status["points"]} == {
        ("Offline", "datacenter"),
        ("Server", "datacenter"),
        ("SingleStream", "edge"),
    }
    assert all(p["result"] and p["samplesPerSecond"] for p in status["points"])
    runs = campaign_runs(api, namespace)
    assert sorted(r["metadata"]["name"] for r in runs) == sorted(p["run"] for p in status["points"])
    for run in runs:
        steps = [
            j.metadata.labels["mlperf-operator.io/step"] for j in run_jobs(api, namespace, run["metadata"]["name"])
        ]
        assert len(steps) == len(set(steps)), f"duplicate Jobs: {sorted(steps)}"
    # One Job assembled the six runs into the round's tree and tarball on the claim, and checked it.
    submission = status["submission"]
    assert submission["state"] == "Succeeded" and submission["runs"] == 6, submission
    assert submission["message"].startswith("6 run(s) in 1 tree(s), "), submission
    claim = pod_executor.root / "pvcs" / namespace / "mlperf-cache"
    with tarfile.open(claim / submission["tarball"]) as tar:
        paths = [n.split("/results/")[1].split("/") for n in tar.getnames() if "/results/" in n]
    assert {p[1] for p in paths if len(p) > 2} == {"resnet50"}, paths
    assert {p[2] for p in paths if len(p) > 3} == {"Offline", "Server", "SingleStream"}, paths
    reasons = [
        e.reason
        for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
        if e.involved_object.kind == "MLPerfCampaign"
    ]
    assert "SubmissionChecked" in reasons and "Succeeded" in reasons, reasons
    table = cluster.kubectl("get", "mlperfcampaigns", "-n", namespace).stdout
    assert table.split("\n")[0].split()[:6] == ["NAME", "POINTS", "SUCCEEDED", "FAILED", "RUNNING", "PHASE"]
    assert table.split("\n")[1].split()[:6] == ["resnet50", "6", "6", "0", "0", "Succeeded"]

    # GitOps: what Git holds applies unchanged over what the operator wrote (status, children, defaults).
    diff = cluster.kubectl("diff", "--server-side", "-n", namespace, "-f", str(manifest), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    again = cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(manifest), "-o", "json")
    assert json.loads(again.stdout)["metadata"]["generation"] == 1  # a no-op: no new generation

    # A fourth scenario: two new points (one per system), the six finished runs untouched.
    uids = {r["metadata"]["name"]: r["metadata"]["uid"] for r in runs}
    grown = campaign_manifest()
    grown["spec"]["matrix"]["scenarios"].append("MultiStream")
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(write(tmp_path, grown)))
    status = wait_campaign(api, namespace, operator, generation=2)
    after = {r["metadata"]["name"]: r["metadata"]["uid"] for r in campaign_runs(api, namespace)}
    assert {k: v for k, v in after.items() if k in uids} == uids
    assert sorted(set(after) - set(uids)) == [
        "resnet50-resnet50-multistream-nvidia-a100-sxm4-80gbx1",
        "resnet50-resnet50-multistream-nvidia-h200x1",
    ]
    assert status["pointCount"] == status["succeeded"] == 8
    assert status["submission"]["runs"] == 8 and status["submission"]["tarball"] != submission["tarball"]

    # One point run again on demand, from Git: its next attempt, once; the submission follows it.
    point = "resnet50-resnet50-offline-nvidia-h200x1"
    grown["spec"]["reruns"] = {point: "2026-12-04"}
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(write(tmp_path, grown)))
    status = wait_campaign(api, namespace, operator, generation=3)
    row = next(p for p in status["points"] if p["name"] == point)
    assert (row["run"], row["attempts"], row["phase"]) == (f"{point}-r1", 2, "Succeeded"), row
    assert len(campaign_runs(api, namespace)) == 9 and status["submission"]["runs"] == 8
