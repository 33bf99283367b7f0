"""Job observation without a cluster: a Job object and its pods' statuses -> the step's observed state."""

from __future__ import annotations

from typing import Any

from mlperf_harness.results import ProducedArtifact, StepOutcome
from mlperf_operator.observe import job_view, job_views, own_jobs

RUN = {"metadata": {"name": "r", "namespace": "ns", "uid": "run-uid"}}


def _job(status: dict[str, Any] | None = None, suspend: bool = False, owner: str = "run-uid") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "r-download-data",
            "uid": "job-uid",
            "labels": {"mlperf-operator.io/step": "download-data"},
            "ownerReferences": [{"uid": owner}],
        },
        "spec": {"suspend": suspend},
        "status": status or {},
    }


def _cond(type_: str, **extra: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "lastTransitionTime": "2026-12-04T10:00:05Z", **extra}


def _pod(name: str, created: str, state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    statuses = [{"name": "harness", "state": state}] if state else []
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "creationTimestamp": created,
            "ownerReferences": [{"uid": "job-uid"}],
        },
        "status": {"containerStatuses": statuses, **status},
    }


def _ended(code: int, message: str) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "message": message}}


def test_a_complete_job_gives_its_last_pods_outcome_with_the_artifact_it_wrote() -> None:
    made = ProducedArtifact(kind="dataset", key="resnet50-0123", inputs={"seed": 0})
    outcome = StepOutcome(step="download-data", ok=True, message="ready", artifact=made)
    job = _job({"startTime": "2026-12-04T10:00:00Z", "conditions": [_cond("Complete")]})
    pods = [
        _pod("p2", "2026-12-04T10:00:02Z", _ended(0, outcome.to_message())),
        _pod("p1", "2026-12-04T10:00:01Z", _ended(1, "not json")),
    ]
    view = job_view(job, pods)
    assert view.state == "Succeeded" and view.start == "2026-12-04T10:00:00Z" and view.end == "2026-12-04T10:00:05Z"
    assert view.outcome is not None and view.outcome.artifact == made and view.message == ""


def test_a_failed_job_says_why_from_the_outcome_else_the_message_else_the_log() -> None:
    job = _job({"failed": 2, "conditions": [_cond("Failed", reason="BackoffLimitExceeded")]})
    bad = StepOutcome(step="download-model", ok=False, message="sha256 mismatch").to_message()
    view = job_view(job, [_pod("p", "t", _ended(2, bad))])
    assert view.state == "Failed" and view.outcome is not None
    assert view.message == "BackoffLimitExceeded after 2 attempt(s); pod p exited 2: sha256 mismatch"
    assert job_view(job, [_pod("p", "t", _ended(1, "Traceback: boom"))]).message.endswith("exited 1: Traceback: boom")
    asked: list[tuple[str, str]] = []

    def tail(ns: str, pod: str) -> str:
        asked.append((ns, pod))
        return "last log line"

    assert job_view(job, [_pod("p", "t", _ended(137, ""))], tail).message.endswith("exited 137: last log line")
    assert asked == [("ns", "p")]
    # No pod ended (a deadline, say): the Job's own condition.
    gone = job_view(_job({"conditions": [_cond("Failed", reason="DeadlineExceeded", message="too slow")]}), [])
    assert gone.state == "Failed" and gone.message == "DeadlineExceeded: too slow"


def test_states_before_the_end_and_the_schedulers_reason() -> None:
    assert job_view(_job(suspend=True), []).state == "Queued"
    assert job_view(_job({"ready": 1}), []).state == "Running"
    assert job_view(_job(), [_pod("p", "t", phase="Running")]).state == "Running"
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/8 nodes are available",
        "lastTransitionTime": "2026-12-04T10:00:03Z",
    }
    view = job_view(_job(), [_pod("p", "t", phase="Pending", conditions=[unschedulable])])
    assert view.state == "Pending" and view.unschedulable == "0/8 nodes are available"
    assert view.unschedulable_since == "2026-12-04T10:00:03Z" and view.outcome is None and view.end is None


def test_only_the_runs_own_jobs_and_each_jobs_own_pods_count() -> None:
    mine, stale = _job(), _job(owner="a-deleted-run-of-the-same-name")
    assert own_jobs(RUN, [mine, stale]) == [mine]
    strangers = _pod("other", "t", _ended(0, StepOutcome(step="x", ok=True).to_message()))
    strangers["metadata"]["ownerReferences"] = [{"uid": "another-job"}]
    views = job_views([_job({"conditions": [_cond("Complete")]})], [strangers])
    assert list(views) == ["download-data"] and views["download-data"].outcome is None


def _workload(owner: str, **reserved: str) -> dict[str, Any]:
    conditions = [{"type": "QuotaReserved", **reserved}] if reserved else []
    return {
        "metadata": {"name": "job-r-download-data-1a2b3", "ownerReferences": [{"uid": owner}]},
        "status": {"conditions": conditions},
    }


def test_a_job_waiting_for_kueue_says_kueues_reason_from_its_own_workload() -> None:
    job = _job(suspend=True)
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "gpus"
    why = "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor h200"
    full = _workload("job-uid", status="False", reason="Pending", message=why)
    view = job_view(job, [], workloads=[_workload("another-job", status="False", reason="Inadmissible"), full])
    assert view.state == "Queued" and view.reason == "Pending"
    assert why in view.message and "job-r-download-data-1a2b3" in view.message and "gpus" in view.message
    assert job_view(job, [], workloads=[]).reason == "NoWorkload"  # Kueue has not seen the Job yet
    admitted = _workload("job-uid", status="True", reason="QuotaReserved")
    admitted["status"]["conditions"].append({"type": "Admitted", "status": "True"})
    assert job_view(job, [], workloads=[admitted]).reason == "Admitted"
    assert job_view(_job(suspend=True), []).reason == "Suspended"  # no LocalQueue: not Kueue's
