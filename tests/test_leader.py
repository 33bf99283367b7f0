"""Two operator replicas with leader election (operator/mlperf_operator/leader.py) on the real control plane.

Only the Lease's holder reconciles; killing it (SIGKILL) at three points of a pipeline hands the run to the
standby, which holds the Lease within 15 s (lease 10 s), and the run ends as an undisturbed one does, with one Job
per step. The points are made certain by holding pods back: a step's pod stays Running (kwok) with nothing
executing it until its pod executor, started after the kill, runs it. SIGTERM gives the Lease back at once, and a
leader that finds the Lease taken exits non-zero.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, PodExecutor, wait_for
from cluster.operator_process import OperatorProcess
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_operator_e2e import apply, crds, get_run, make_claim, run_jobs, wait_phase
from test_operator_hardening import quick

__all__ = ["crds"]  # a fixture, used by name

LEASE = "mlperf-operator"
TAKEOVER_BOUND = 15.0  # seconds from the leader's death to the standby holding the Lease (lease 10 s)
STEP = "mlperf-operator.io/step"
PODS = "app.kubernetes.io/part-of=mlperf-operator"
RUN = "mlperf-operator.io/run"


def holder(api: client.ApiClient, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity


@pytest.fixture
def replicas(
    cluster: Cluster, api: client.ApiClient, namespace: str, crds: None, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """Two candidates; the first leads (it started alone), the second stands by."""
    a = OperatorProcess(cluster.kubeconfig, [namespace], tmp_path / "a.log", leader="a")
    b = OperatorProcess(cluster.kubeconfig, [namespace], tmp_path / "b.log", leader="b")
    try:
        a.start()
        wait_for(lambda: holder(api, namespace) == a.identity, timeout=60, what="the first replica to lead")
        started = "Activity 'configure' succeeded"  # kopf's startup, which a SIGTERM would cut short
        wait_for(lambda: started in a.log_path.read_text(), timeout=60, what="the leader's startup")
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def leader_and_standby(
    api: client.ApiClient, namespace: str, replicas: tuple[OperatorProcess, OperatorProcess]
) -> tuple[OperatorProcess, OperatorProcess]:
    first, second = replicas
    return (first, second) if holder(api, namespace) == first.identity else (second, first)


def kill_leader(
    api: client.ApiClient,
    namespace: str,
    replicas: tuple[OperatorProcess, OperatorProcess],
    meanwhile: Callable[[], object] = lambda: None,
) -> tuple[float, OperatorProcess]:
    """SIGKILL the leader and do `meanwhile` (nobody leads then); the seconds until the standby holds the Lease,
    and the new leader. The killed one restarts (its pod's restart) and stands by."""
    dead, standby = leader_and_standby(api, namespace, replicas)
    assert holder(api, namespace) == dead.identity
    dead.stop(kill=True)
    killed = time.monotonic()
    meanwhile()
    wait_for(lambda: holder(api, namespace) == standby.identity, timeout=60, interval=0.1, what="the takeover")
    took = time.monotonic() - killed
    dead.start()
    return took, standby


def executor(cluster: Cluster, namespace: str, workdir: Path, steps: list[str]) -> PodExecutor:
    """Runs only these steps' pods (not started yet): the others stay Running with nothing behind them. Every
    executor of a test shares `workdir`, where the claims' folders are."""
    selector = f"{PODS},{STEP} in ({','.join(steps)})"
    return PodExecutor(cluster.kubeconfig, [namespace], workdir_root=workdir, label_selector=selector)


def held_pod(api: client.ApiClient, namespace: str, run: str, step: str) -> None:
    """Wait until the step's pod is Running (held: nothing executes it yet)."""

    def running() -> list[Any]:
        status = get_run(api, namespace, run).get("status", {})
        assert status.get("phase") != "Failed", json.dumps(status, indent=1)[:3000]
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{STEP}={step}").items
        return [p for p in pods if p.status.phase == "Running" and p.metadata.labels.get(RUN) == run]

    wait_for(running, timeout=300, what=f"the {step} pod of {run}")


def verdict(status: dict[str, Any]) -> tuple[Any, ...]:
    """What a run ends with, its measured figures aside (they differ from run to run)."""
    results = [(r["scenario"], r["testMode"], r.get("valid"), r.get("invalidReason")) for r in status["results"]]
    steps = [(s["name"], s["state"], s.get("cacheHit")) for s in status["steps"]]
    return status["phase"], status.get("result"), results, steps


def ended_before_takeover(api: client.ApiClient, namespace: str) -> bool:
    """Whether the preprocess step ended while nobody led (what the second kill point is after)."""
    wait_for(lambda: job_done(api, namespace, "stormy", "preprocess"), timeout=300, what="preprocess to end")
    job = next(j for j in run_jobs(api, namespace, "stormy") if j.metadata.labels[STEP] == "preprocess")
    acquired = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace).spec.acquire_time
    return bool(job.status.completion_time <= acquired)


def job_done(api: client.ApiClient, namespace: str, run: str, step: str) -> bool:
    return any(j.status.succeeded for j in run_jobs(api, namespace, run) if j.metadata.labels[STEP] == step)


def jobs_per_step(api: client.ApiClient, namespace: str, run: str) -> dict[str, int]:
    return dict(collections.Counter(j.metadata.labels[STEP] for j in run_jobs(api, namespace, run)))


def jobs_created(op: OperatorProcess) -> float:
    """The replica's mlperf_jobs_created_total, over every step."""
    lines = op.metrics().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("mlperf_jobs_created_total{"))


STEPS = ["download-data", "download-model", "preprocess", "run-offline-performance", "report"]


@pytest.mark.timeout(1800)
def test_killing_the_leader_at_three_points_of_a_pipeline_changes_nothing_but_who_leads(
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    replicas: tuple[OperatorProcess, OperatorProcess],
    tmp_path: Path,
) -> None:
    # An undisturbed run first: its ending is what the disturbed one must end with. Only the leader works.
    make_claim(api, namespace, "calm")
    make_claim(api, namespace, "stormy")
    leader, standby = leader_and_standby(api, namespace, replicas)
    workdir = tmp_path / "executor"
    with executor(cluster, namespace, workdir, STEPS):
        apply(cluster, namespace, quick("calm", storage={"existingClaim": "calm"}))
        calm = wait_phase(api, namespace, "calm", {"Succeeded", "Failed"}, leader)["status"]
    assert calm["phase"] == "Succeeded", json.dumps(calm, indent=1)[:3000]
    assert jobs_per_step(api, namespace, "calm") == dict.fromkeys(STEPS, 1)
    assert "mlperf_operator_leader 1.0" in leader.metrics() and jobs_created(leader) == len(STEPS)
    assert "mlperf_operator_leader 0.0" in standby.metrics() and jobs_created(standby) == 0
    assert "made the controller" not in standby.log_path.read_text() and "standing by" in standby.log_tail()

    apply(cluster, namespace, quick("stormy", storage={"existingClaim": "stormy"}))
    takeovers = []
    held: list[PodExecutor] = []
    try:
        # 1. While the first Jobs run: their pods are Running, and nothing executes them until after the kill.
        held_pod(api, namespace, "stormy", "download-data")
        took, leader = kill_leader(api, namespace, replicas)
        takeovers.append(took)
        held.append(executor(cluster, namespace, workdir, STEPS[:2]).start())
        # 2. Between steps: the held preprocess pod runs as soon as the leader is dead, so the step (most likely)
        # ends while nobody leads, and the next leader finds it ended with the next step's Job still to make.
        held_pod(api, namespace, "stormy", "preprocess")
        preprocess = executor(cluster, namespace, workdir, ["preprocess"])
        held.append(preprocess)
        took, leader = kill_leader(api, namespace, replicas, meanwhile=preprocess.start)
        takeovers.append(took)
        print(f"preprocess ended {'before' if ended_before_takeover(api, namespace) else 'after'} the takeover")
        # 3. While the performance step runs.
        held_pod(api, namespace, "stormy", STEPS[3])
        took, leader = kill_leader(api, namespace, replicas)
        takeovers.append(took)
        held.append(executor(cluster, namespace, workdir, STEPS[3:]).start())
        stormy = wait_phase(api, namespace, "stormy", {"Succeeded", "Failed"}, leader)["status"]
    finally:
        for ex in held:
            ex.stop()

    print(f"takeovers after SIGKILL: {', '.join(f'{t:.1f} s' for t in takeovers)}")
    assert all(t < TAKEOVER_BOUND for t in takeovers), takeovers
    assert verdict(stormy) == verdict(calm), json.dumps(stormy, indent=1)[:3000]
    assert jobs_per_step(api, namespace, "stormy") == dict.fromkeys(STEPS, 1)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{STEP}")
    by_run = collections.Counter(p.metadata.labels.get(RUN) for p in pods.items)
    assert by_run["stormy"] == len(STEPS), f"a Job ran more than one pod: {by_run}"
    assert get_run(api, namespace, "stormy")["status"]["results"][0]["samplesPerSecond"] > 0


def test_sigterm_gives_the_lease_back_and_the_standby_leads_at_once(
    api: client.ApiClient, namespace: str, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, standby = leader_and_standby(api, namespace, replicas)
    leader.stop()  # SIGTERM: kopf stops, then the Lease is released
    assert leader.proc is not None and leader.proc.returncode == 0
    wait_for(lambda: holder(api, namespace) == standby.identity, timeout=TAKEOVER_BOUND, what="the standby to lead")
    assert "released the Lease" in leader.log_tail()
    wait_for(lambda: "mlperf_operator_leader 1.0" in standby.metrics(), timeout=30, what="the new leader's gauge")


def test_a_leader_that_finds_the_lease_taken_exits_non_zero(
    api: client.ApiClient, namespace: str, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, _ = leader_and_standby(api, namespace, replicas)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    client.CoordinationV1Api(api).patch_namespaced_lease(
        LEASE, namespace, {"spec": {"holderIdentity": "usurper", "renewTime": now}}
    )
    assert leader.proc is not None
    wait_for(lambda: leader.proc.poll() is not None, timeout=30, what="the leader to exit")
    assert leader.proc.returncode == 1 and "lost the Lease" in leader.log_tail()
