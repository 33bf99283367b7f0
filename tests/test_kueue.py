"""The operator's Jobs admitted by a real Kueue (issue 21) on the real control plane.

Kueue v0.19 (built by tools/build-tools.sh, started by tools/cluster.py) runs as a local process with its
webhooks registered by URL. Every Job of the runs asks one nvidia.com/gpu (through spec.resources: the null
backend itself asks none), so a ClusterQueue with 2 GPUs of the h200 flavor admits two Jobs at a time; the
others wait suspended, and the operator says so with Kueue's own reason. Where no harness needs to run, kwok
ends the pods at once (KWOK_DONE, or the test's Finisher), which keeps 20 runs cheap.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from mlperf_operator.jobs import RUN_LABEL, STEP_LABEL
from mlperf_operator.reconcile import QUIET
from test_operator_e2e import apply, crds, get_run, make_claim, operator, wait_phase
from test_operator_hardening import all_events, quick

__all__ = ["crds", "operator"]  # fixtures, used by name

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
GPU = "nvidia.com/gpu"
QUOTA = 2
RUNS = 5
ONE_GPU = {"requests": {GPU: "1"}, "limits": {GPU: "1"}}
# kwok ends a pod of the operator's at once with this exit code when the pod carries it (tools/kwok-stages): the
# step's Job completes with no outcome (nothing recorded in the cache), and no harness process runs.
KWOK_DONE = {"kwok.mlperf-operator.io/exit-code": "0"}
LOW, HIGH = 14, 6  # priority test: low-priority runs applied first, then high-priority ones


def cluster_queue(name: str, gpus: int, a100: int = 0) -> dict[str, Any]:
    """examples/kueue/cluster-queue.yaml cut to the cpu and h200 flavors (and a100 when `a100`), with `gpus` H200
    GPUs."""
    big = [{"name": "cpu", "nominalQuota": "64"}, {"name": "memory", "nominalQuota": "1Ti"}]
    flavors = [("cpu", 0), ("h200", gpus), *([("a100", a100)] if a100 else [])]
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
                        {"name": flavor, "resources": [*big, {"name": GPU, "nominalQuota": str(n)}]}
                        for flavor, n in flavors
                    ],
                }
            ],
        },
    }


@contextlib.contextmanager
def local_queue(custom: client.CustomObjectsApi, namespace: str, gpus: int, a100: int = 0) -> Iterator[str]:
    """A ClusterQueue of its own for the test (cluster_queue), Active, and the namespace's LocalQueue `mlperf`
    pointing at it; the ClusterQueue is deleted afterwards."""
    cq = f"mlperf-{namespace}"
    custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", cluster_queue(cq, gpus, a100))
    try:
        local = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue", "metadata": {"name": "mlperf"}}
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "localqueues", {**local, "spec": {"clusterQueue": cq}}
        )

        def active() -> bool:
            conds = custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq).get("status", {})
            return any(c["type"] == "Active" and c["status"] == "True" for c in conds.get("conditions") or [])

        wait_for(active, timeout=60, what=f"ClusterQueue {cq} to be Active")
        yield "mlperf"
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq)


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


def _gpus(requests: dict[str, Any] | None) -> int:
    return int(str((requests or {}).get(GPU, "0")))


def admitted_gpus(workloads: list[dict[str, Any]]) -> int:
    """GPUs held by the admitted, unfinished Workloads, as Kueue accounts them."""
    total = 0
    for wl in workloads:
        conds = _conditions(wl)
        if conds.get("Admitted") != "True" or conds.get("Finished") == "True":
            continue
        for assignment in (wl["status"].get("admission") or {}).get("podSetAssignments") or []:
            total += _gpus(assignment.get("resourceUsage"))
    return total


def pod_gpus(pods: list[Any]) -> int:
    """GPUs requested by the pods that hold them now (not ended)."""
    return sum(
        _gpus(c.resources.requests if c.resources else None)
        for p in pods
        if p.status.phase not in ("Succeeded", "Failed")
        for c in p.spec.containers
    )


def owner_run(workload: dict[str, Any], runs: list[str]) -> str | None:
    """The run whose Job the Workload stands for (a Job is named <run>-<step>)."""
    job = next((o["name"] for o in workload["metadata"].get("ownerReferences") or [] if o["kind"] == "Job"), "")
    return next((r for r in runs if job.startswith(f"{r}-")), None)


class Watcher(threading.Thread):
    """Polls what Kueue admitted and what the runs say while they go: the peak of admitted GPUs (by Kueue's
    account and by the pods), the poll at which each run's first Job was first seen admitted, and every Queued
    step (and Queued run) seen, with its reason and message. One list of each kind per poll: a consistent view."""

    def __init__(self, api: client.ApiClient, namespace: str, runs: list[str]) -> None:
        super().__init__(daemon=True)
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.namespace, self.runs = namespace, runs
        self.peak = self.peak_pods = 0
        self.polls = 0
        self.first_admitted: dict[str, int] = {}  # run -> poll that first saw one of its Workloads admitted
        self.queued_steps: set[tuple[str, str, str, str]] = set()  # run, step, Kueue's reason and message
        self.queued_runs: dict[str, str] = {}
        self.stop = threading.Event()

    def workloads(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "workloads")["items"])

    def run(self) -> None:
        while not self.stop.is_set():
            self.polls += 1
            workloads = self.workloads()
            self.peak = max(self.peak, admitted_gpus(workloads))
            self.peak_pods = max(self.peak_pods, pod_gpus(self.core.list_namespaced_pod(self.namespace).items))
            for wl in workloads:
                run = owner_run(wl, self.runs)
                if run and _conditions(wl).get("QuotaReserved") == "True":
                    self.first_admitted.setdefault(run, self.polls)
            runs = self.custom.list_namespaced_custom_object(
                "mlperf-operator.io", "v1alpha1", self.namespace, "mlperfruns"
            )["items"]
            for run in runs:
                name, status = run["metadata"]["name"], run.get("status") or {}
                for st in status.get("steps") or []:
                    if st.get("state") == "Queued" and st.get("reason") not in (None, *QUIET):
                        self.queued_steps.add((name, st["name"], st["reason"], st.get("message", "")))
                if status.get("phase") == "Queued":
                    self.queued_runs[name] = status.get("message", "")
            time.sleep(0.2)


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
    with local_queue(custom, namespace, QUOTA) as queue:
        kueue_spec = {"kueue": {"queueName": queue}, "resources": ONE_GPU}
        names = [f"q{i}" for i in range(RUNS)]
        # A GPU product no flavor has: Kueue can admit none of its Jobs, and the run says so. On a claim of its own,
        # with a run that shares its artifacts: a producer waiting in Kueue's queue keeps its artifact's lease (only
        # one run makes an artifact), and the run behind it is told that the producer is queued, and why.
        make_claim(api, namespace, "b200-cache")
        b200 = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-B200"}, "storage": {"existingClaim": "b200-cache"}}
        watcher = Watcher(api, namespace, [*names, "b200"])
        watcher.start()
        for name in names:
            apply(kueue, namespace, quick(name, **kueue_spec))
        apply(kueue, namespace, quick("b200", **b200, **kueue_spec))

        def b200_queued() -> dict[str, Any] | None:
            status = get_run(api, namespace, "b200").get("status") or {}
            return status if status.get("phase") == "Queued" and "doesn't match" in status.get("message", "") else None

        wait_for(b200_queued, timeout=120, what="run b200 Queued with Kueue's reason")
        apply(kueue, namespace, quick("behind-b200", storage=b200["storage"], **kueue_spec))

        try:
            finished = [wait_done(api, namespace, n, operator) for n in names]
        finally:
            watcher.stop.set()
            watcher.join(timeout=10)
        assert [s["phase"] for s in finished] == ["Succeeded"] * RUNS, [s.get("message") for s in finished]
        assert 0 < watcher.peak <= QUOTA, f"{watcher.peak} GPUs admitted at once, quota {QUOTA}"
        assert watcher.peak_pods <= QUOTA, f"{watcher.peak_pods} GPUs in pods at once, quota {QUOTA}"

        quota_waits = [q for q in watcher.queued_steps if q[0] != "b200"]
        assert quota_waits, "no step was seen Queued with Kueue's reason"
        odd = [q for q in quota_waits if "insufficient" not in q[3] or GPU not in q[3]]
        assert not odd, odd
        assert {q[2] for q in quota_waits} == {"Pending"}, quota_waits  # QuotaReserved=False's reason
        assert set(watcher.queued_runs) - {"b200"}, "no run was seen Queued while all its Jobs waited"

        stuck = get_run(api, namespace, "b200")["status"]
        cond = next(c for c in stuck["conditions"] if c["type"] == "Queued")
        assert stuck["phase"] == "Queued" and cond["status"] == "True", stuck
        # Kueue's own words, the flavors it tried and why none fits, in the condition and the step
        assert cond["reason"] == "Pending" and "doesn't match" in cond["message"] and "h200" in cond["message"], cond
        assert "node affinity" in cond["message"], cond
        first = next(s for s in stuck["steps"] if s["state"] == "Queued")
        assert first["reason"] == "Pending" and "doesn't match" in first["message"], first
        assert "Kueue" in stuck["message"], stuck["message"]
        told = [e.message for e in all_events(api, namespace) if e.involved_object.name == "b200"]
        assert [m for m in told if "doesn't match" in m], told  # the Queued Event, for `kubectl describe`

        def told_why() -> list[dict[str, Any]] | None:
            steps = (get_run(api, namespace, "behind-b200").get("status") or {}).get("steps") or []
            waiting = [s["message"] for s in steps if s.get("reason") == "ArtifactInProduction"]
            # Kueue's reason as the producer's status has it (one of its steps may not have been considered yet)
            kueues = [m for m in waiting if "run b200" in m and "queued in Kueue" in m]
            return waiting if waiting == kueues and any("doesn't match" in m for m in waiting) else None

        wait_for(told_why, timeout=120, what="behind-b200 told that its producer waits in Kueue, and why")
        print(
            f"kueue test: {RUNS} runs Succeeded, peak {watcher.peak} GPUs admitted, "
            f"{len(quota_waits)} steps seen Queued, {time.monotonic() - t0:.0f} s"
        )


def test_twenty_runs_over_the_quota_are_admitted_by_priority_never_over_the_quota_and_all_succeed(
    kueue: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess, pod_executor: PodExecutor
) -> None:
    """14 low-priority runs, then 6 high-priority ones, each Job asking one GPU of a 2-GPU quota. A first run
    (outside Kueue, its pods really run) fills the claim's cache, so each of the 20 has two Jobs (the harness run
    and the report), which kwok ends at once. The high-priority runs, applied last, are admitted before every
    low-priority run that was still waiting when Kueue had them queued."""
    t0 = time.monotonic()
    custom = client.CustomObjectsApi(api)
    make_claim(api, namespace)
    apply(kueue, namespace, quick("warm"))
    assert wait_done(api, namespace, "warm", operator)["phase"] == "Succeeded"

    lows, highs = [f"lo{i:02}" for i in range(LOW)], [f"hi{i:02}" for i in range(HIGH)]
    with local_queue(custom, namespace, QUOTA) as queue:
        watcher = Watcher(api, namespace, [*lows, *highs])
        watcher.start()

        def queued(name: str, priority: str) -> dict[str, Any]:
            kueue_spec = {"queueName": queue, "priorityClass": priority}
            return quick(name, kueue=kueue_spec, resources=ONE_GPU, podAnnotations=KWOK_DONE)

        for name in lows:
            apply(kueue, namespace, queued(name, "low"))
        wait_for(lambda: len(watcher.first_admitted) >= QUOTA, timeout=120, what="the quota taken by low runs")
        for name in highs:
            apply(kueue, namespace, queued(name, "high"))

        def considered() -> list[dict[str, Any]] | None:
            """The Workloads, once Kueue has tried (queued or admitted) a Workload of every high-priority run."""
            workloads = watcher.workloads()
            tried = {owner_run(w, highs) for w in workloads if "QuotaReserved" in _conditions(w)}
            return workloads if tried >= set(highs) else None

        workloads = wait_for(considered, timeout=120, what="Kueue to queue the high-priority runs")
        admitted = {owner_run(w, lows) for w in workloads if _conditions(w).get("QuotaReserved") == "True"}
        waiting = [name for name in lows if name not in admitted]
        try:
            finished = {n: wait_done(api, namespace, n, operator) for n in [*lows, *highs]}
        finally:
            watcher.stop.set()
            watcher.join(timeout=10)

        failed = {n: s.get("message") for n, s in finished.items() if s["phase"] != "Succeeded"}
        assert not failed, failed
        assert 0 < watcher.peak <= QUOTA, f"{watcher.peak} GPUs admitted at once, quota {QUOTA}"
        assert watcher.peak_pods <= QUOTA, f"{watcher.peak_pods} GPUs in pods at once, quota {QUOTA}"
        assert watcher.queued_steps, "no step of the excess was seen Queued with Kueue's reason"
        odd = [q for q in watcher.queued_steps if q[2] != "Pending" or "insufficient" not in q[3] or GPU not in q[3]]
        assert not odd, odd
        assert waiting, "every low-priority run was admitted before the high-priority ones arrived"
        first = watcher.first_admitted
        last_high = max(first[h] for h in highs)
        early = {low: first[low] for low in waiting if first[low] < last_high}
        assert not early, f"low runs admitted before a high one (poll {last_high}): {early}; order {first}"
        print(
            f"priority test: {LOW + HIGH} runs Succeeded, {len(waiting)} low runs waited behind {HIGH} high ones, "
            f"peak {watcher.peak} GPUs admitted, {watcher.polls} polls, {time.monotonic() - t0:.0f} s"
        )


A100 = "NVIDIA-A100-SXM4-80GB"  # tools/cluster.py: two kwok nodes of 8 GPUs
PERF = "run-offline-performance"


class Finisher(threading.Thread):
    """kwok's stand-in for the pods' processes: ends every running pod of the operator's in the namespace at once
    (exit code 0, no outcome), except the performance steps' pods, which run until the test releases them."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace = client.CoreV1Api(api), namespace
        self.stop = threading.Event()

    def end(self, pod: str) -> None:
        self.core.patch_namespaced_pod(pod, self.namespace, {"metadata": {"annotations": KWOK_DONE}})

    def held(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.namespace, field_selector="status.phase=Running").items
        return [p for p in pods if not set(KWOK_DONE) & set(p.metadata.annotations or {})]

    def run(self) -> None:
        while not self.stop.is_set():
            for pod in self.held():
                if pod.metadata.labels.get(STEP_LABEL) != PERF:
                    self.end(pod.metadata.name)
            time.sleep(0.3)


def test_a_performance_step_takes_a_whole_node_and_engine_build_and_runs_land_on_one_gpu_product(
    kueue: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    """Two runs on A100 through Kueue (a100 flavor, 16 GPUs): `whole` with system.exclusiveNode, `shared` without.
    Their performance pods are held running together: `whole`'s asks all 8 GPUs of a node, so it is alone on its
    node (the scheduler counts GPUs: no other GPU pod fits there), and `shared`'s one-GPU pod lands elsewhere.
    Every GPU step of both (engine build and run) selects, is admitted to and placed on the A100 product."""
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    finisher = Finisher(api, namespace)
    finisher.start()
    try:
        with local_queue(custom, namespace, 0, a100=16) as queue:
            for name, exclusive in (("whole", True), ("shared", False)):
                make_claim(api, namespace, f"{name}-cache")
                system = {"gpuProduct": A100, "gpuCount": 1, "exclusiveNode": exclusive, "gpusPerNode": 8}
                run = quick(name, backend="onnxruntime", system=system, kueue={"queueName": queue})
                apply(kueue, namespace, {**run, "spec": {**run["spec"], "storage": {"existingClaim": f"{name}-cache"}}})

            def both_running() -> dict[str, Any] | None:
                held = {
                    p.metadata.labels[RUN_LABEL]: p for p in finisher.held() if p.metadata.labels[STEP_LABEL] == PERF
                }
                return held if set(held) == {"whole", "shared"} else None

            held = wait_for(both_running, timeout=180, what="both runs' performance pods running")
            whole, shared = held["whole"], held["shared"]
            limits = whole.spec.containers[0].resources.limits
            assert limits[GPU] == "8" and shared.spec.containers[0].resources.limits[GPU] == "1", limits
            node = whole.spec.node_name
            on_node = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
            gpu_pods = [p.metadata.name for p in on_node if p.status.phase == "Running" and pod_gpus([p])]
            assert gpu_pods == [whole.metadata.name], f"GPU pods on {node} beside the exclusive one: {gpu_pods}"
            assert shared.spec.node_name != node
            for name in ("whole", "shared"):
                finisher.end(held[name].metadata.name)
            done = [wait_done(api, namespace, n, operator) for n in ("whole", "shared")]
            assert [s["phase"] for s in done] == ["Succeeded", "Succeeded"], [s.get("message") for s in done]

        gpu_pods = [p for p in core.list_namespaced_pod(namespace).items if p.spec.node_selector]
        steps = {p.metadata.labels[STEP_LABEL] for p in gpu_pods}
        assert PERF in steps and any(s.startswith("build-engine") for s in steps), steps
        for pod in gpu_pods:
            assert pod.spec.node_selector == {"nvidia.com/gpu.product": A100}, pod.spec.node_selector
            labels = core.read_node(pod.spec.node_name).metadata.labels
            assert labels["nvidia.com/gpu.product"] == A100, (pod.metadata.name, pod.spec.node_name)
        flavors = [
            a.get("flavors", {}).get(GPU)
            for wl in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
            for a in (wl["status"].get("admission") or {}).get("podSetAssignments") or []
            if _gpus(a.get("resourceUsage"))
        ]
        assert flavors and set(flavors) == {"a100"}, flavors
        print(
            f"exclusive test: whole on {node} alone, shared on {shared.spec.node_name}, "
            f"{len(gpu_pods)} GPU pods on A100"
        )
    finally:
        finisher.stop.set()
        finisher.join(timeout=10)
