"""The operator's Jobs admitted by a real Kueue (issue 21) on the real control plane.

Kueue v0.19 (built by tools/build-tools.sh, started by tools/cluster.py) runs as a local process with its
webhooks registered by URL. Every Job of the runs asks one nvidia.com/gpu (through spec.resources: the null
backend itself asks none), so a ClusterQueue with 2 GPUs of the h200 flavor admits two Jobs at a time; the
others wait suspended, and the operator says so with Kueue's own reason.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mlperf_operator.reconcile import QUIET
from test_operator_e2e import apply, crds, get_run, make_claim, operator, wait_phase
from test_operator_hardening import quick

__all__ = ["crds", "operator"]  # fixtures, used by name

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
GPU = "nvidia.com/gpu"
QUOTA = 2
RUNS = 5
ONE_GPU = {"requests": {GPU: "1"}, "limits": {GPU: "1"}}


def cluster_queue(name: str, gpus: int) -> dict[str, Any]:
    """examples/kueue/cluster-queue.yaml cut to the cpu and h200 flavors, with `gpus` H200 GPUs."""
    big = [{"name": "cpu", "nominalQuota": "64"}, {"name": "memory", "nominalQuota": "1Ti"}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", GPU],
                    "flavors": [
                        {"name": "cpu", "resources": [*big, {"name": GPU, "nominalQuota": "0"}]},
                        {"name": "h200", "resources": [*big, {"name": GPU, "nominalQuota": str(gpus)}]},
                    ],
                }
            ],
        },
    }


def admitted_gpus(custom: client.CustomObjectsApi, namespace: str) -> int:
    """GPUs held now by the namespace's admitted, unfinished Workloads, as Kueue accounts them."""
    total = 0
    for wl in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]:
        conds = {c["type"]: c["status"] for c in wl.get("status", {}).get("conditions") or []}
        if conds.get("Admitted") != "True" or conds.get("Finished") == "True":
            continue
        for assignment in (wl["status"].get("admission") or {}).get("podSetAssignments") or []:
            total += int(str((assignment.get("resourceUsage") or {}).get(GPU, "0")))
    return total


class Watcher(threading.Thread):
    """Polls what Kueue admitted and what the runs say while they go: the peak of admitted GPUs, and every
    Queued step (and Queued run) seen, with its reason and message."""

    def __init__(self, api: client.ApiClient, namespace: str, runs: list[str]) -> None:
        super().__init__(daemon=True)
        self.custom = client.CustomObjectsApi(api)
        self.api, self.namespace, self.runs = api, namespace, runs
        self.peak = 0
        self.queued_steps: set[tuple[str, str, str, str]] = set()  # run, step, Kueue's reason and message
        self.queued_runs: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, admitted_gpus(self.custom, self.namespace))
            for name in self.runs:
                try:
                    status = get_run(self.api, self.namespace, name).get("status") or {}
                except ApiException as e:
                    if e.status == 404:  # not applied yet
                        continue
                    raise
                for st in status.get("steps") or []:
                    if st.get("state") == "Queued" and st.get("reason") not in (None, *QUIET):
                        self.queued_steps.add((name, st["name"], st["reason"], st.get("message", "")))
                if status.get("phase") == "Queued":
                    self.queued_runs[name] = status.get("message", "")
            time.sleep(0.3)


def wait_done(api: client.ApiClient, namespace: str, name: str, op: OperatorProcess) -> dict[str, Any]:
    """The run's status once it ended; on a timeout (a bound against hangs), what Kueue and the run say."""
    try:
        return dict(wait_phase(api, namespace, name, {"Succeeded", "Failed"}, op, timeout=300)["status"])
    except AssertionError as exc:
        workloads = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")
        seen = [
            (w["metadata"]["name"], [(c["type"], c["status"], c.get("message", "")) for c in w["status"]["conditions"]])
            for w in workloads["items"]
        ]
        raise AssertionError(f"{exc}\nworkloads: {seen}") from None


def test_kueue_admits_two_gpus_at_a_time_the_rest_wait_queued_with_kueues_reason_and_all_succeed(
    kueue: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    t0 = time.monotonic()
    custom = client.CustomObjectsApi(api)
    make_claim(api, namespace)
    cq = f"mlperf-{namespace}"
    custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", cluster_queue(cq, QUOTA))
    try:
        local = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue", "metadata": {"name": "mlperf"}}
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "localqueues", {**local, "spec": {"clusterQueue": cq}}
        )

        def active() -> bool:
            conds = custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq).get("status", {})
            return any(c["type"] == "Active" and c["status"] == "True" for c in conds.get("conditions") or [])

        wait_for(active, timeout=60, what=f"ClusterQueue {cq} to be Active")

        kueue_spec = {"kueue": {"queueName": "mlperf"}, "resources": ONE_GPU}
        names = [f"q{i}" for i in range(RUNS)]
        # A GPU product no flavor has: Kueue can admit none of its Jobs, and the run says so. On a claim of its own:
        # a producer that waits in Kueue's queue keeps its artifact's lease, and the runs sharing it would wait too.
        make_claim(api, namespace, "b200-cache")
        nowhere = quick(
            "b200",
            nodeSelector={"nvidia.com/gpu.product": "NVIDIA-B200"},
            storage={"existingClaim": "b200-cache"},
            **kueue_spec,
        )
        watcher = Watcher(api, namespace, [*names, "b200"])
        watcher.start()
        for name in names:
            apply(kueue, namespace, quick(name, **kueue_spec))
        apply(kueue, namespace, nowhere)

        try:
            finished = [wait_done(api, namespace, n, operator) for n in names]
        finally:
            watcher.stop.set()
            watcher.join(timeout=10)
        assert [s["phase"] for s in finished] == ["Succeeded"] * RUNS, [s.get("message") for s in finished]
        assert 0 < watcher.peak <= QUOTA, f"{watcher.peak} GPUs admitted at once, quota {QUOTA}"

        quota_waits = [q for q in watcher.queued_steps if q[0] != "b200"]
        assert quota_waits, "no step was seen Queued with Kueue's reason"
        odd = [q for q in quota_waits if "insufficient" not in q[3] or GPU not in q[3]]
        assert not odd, odd
        assert {q[2] for q in quota_waits} == {"Pending"}, quota_waits  # QuotaReserved=False's reason
        assert set(watcher.queued_runs) - {"b200"}, "no run was seen Queued while all its Jobs waited"

        stuck = get_run(api, namespace, "b200")["status"]
        cond = next(c for c in stuck["conditions"] if c["type"] == "Queued")
        assert stuck["phase"] == "Queued" and cond["status"] == "True", stuck
        assert "doesn't match" in cond["message"] and "h200" in cond["message"], cond  # the flavors it tried
        assert "Kueue" in stuck["message"], stuck["message"]
        print(
            f"kueue test: {RUNS} runs Succeeded, peak {watcher.peak} GPUs admitted, "
            f"{len(quota_waits)} steps seen Queued, {time.monotonic() - t0:.0f} s"
        )
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq)
