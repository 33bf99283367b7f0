"""Which Job events start a reconcile of their run (Controller.job_moved): the Job controller updates a Job several
times per state the run reads, and a new Job that has not moved yet tells its run nothing."""

from __future__ import annotations

from typing import Any

from mlperf_operator.controller import Controller


def job(uid: str = "j-1", suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {"metadata": {"uid": uid}, "spec": {"suspend": suspend}, "status": status}


def complete() -> list[dict[str, str]]:
    return [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]


def test_a_new_jobs_creation_and_first_count_start_no_reconcile_its_moves_do() -> None:
    controller = Controller(kube=None)  # type: ignore[arg-type]
    assert not controller.job_moved(job())  # created: the reconcile that created it knows
    assert not controller.job_moved(job(active=1, ready=0))  # the Job controller's first count
    assert controller.job_moved(job(active=1, ready=1))  # its pod is ready: the step runs
    assert not controller.job_moved(job(active=1, ready=1, terminating=0))  # bookkeeping
    assert controller.job_moved(job(ready=0, succeeded=1, conditions=complete()))
    assert controller.job_moved(job(), deleted=True)


def test_a_job_first_seen_suspended_failed_or_ended_starts_a_reconcile() -> None:
    controller = Controller(kube=None)  # type: ignore[arg-type]
    assert controller.job_moved(job("queued", suspend=True))  # Kueue holds it: the run says it is queued
    assert controller.job_moved(job("retried", active=1, failed=1))  # seen first after a restart, mid-way
    assert controller.job_moved(job("done", conditions=complete()))
