"""What the operator reads off a step's Job, its pods and (under Kueue) its Workload, as a JobView. Pure: the
objects (plain dicts, as the API returns them) come in, nothing is asked of the API server here. The one thing the
objects may lack, the log of a pod that failed without a termination message, comes through ``log_tail``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlperf_harness.results import StepOutcome, read_termination_message

from .jobs import KUEUE_QUEUE_LABEL, STEP_LABEL
from .status import StepState

MESSAGE_LIMIT = 1500  # of a failure message kept in status; Kubernetes caps the source at 4096
NO_WORKLOAD, NOT_CONSIDERED = "NoWorkload", "NotConsideredYet"  # a queued Job's reasons before Kueue's own
LogTail = Callable[[str, str], str]  # (namespace, pod) -> the pod's last log lines, "" when there are none


@dataclass(frozen=True)
class JobView:
    """What the operator reads off one step's Job (and, when it ended, its pod)."""

    name: str
    state: StepState
    start: str | None = None
    end: str | None = None
    message: str = ""
    outcome: StepOutcome | None = None
    unschedulable: str = ""  # the scheduler's reason while no node fits the step's pod
    unschedulable_since: str | None = None
    reason: str = ""  # Kueue's reason while the Job waits for admission (then `message` is Kueue's message)


def _no_log(namespace: str, pod: str) -> str:
    return ""


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


def own_jobs(run: dict[str, Any], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's own Jobs: a deleted run of the same name may leave some behind until the garbage collector
    removes them, and they are not this run's."""
    return [j for j in jobs if owned_by(j, run["metadata"]["uid"])]


def job_views(
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    log_tail: LogTail = _no_log,
    workloads: list[dict[str, Any]] | None = None,
) -> dict[str, JobView]:
    """Each Job's view, by its step's name."""
    return {j["metadata"]["labels"][STEP_LABEL]: job_view(j, pods, log_tail, workloads) for j in jobs}


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or [] if c.get("status") == "True"}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if "terminated" in (cs.get("state") or {}):
            return dict(cs["state"]["terminated"])
    return None


def _outcome(text: str) -> StepOutcome | None:
    try:
        return read_termination_message(text)
    except ValueError:
        return None


def _state(job: dict[str, Any], conditions: dict[str, dict[str, Any]], pods: list[dict[str, Any]]) -> StepState:
    if "Complete" in conditions:
        return "Succeeded"
    if "Failed" in conditions:
        return "Failed"
    if job.get("spec", {}).get("suspend"):
        return "Queued"
    if job.get("status", {}).get("ready") or any(p.get("status", {}).get("phase") == "Running" for p in pods):
        return "Running"
    return "Pending"


def job_view(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    log_tail: LogTail = _no_log,
    workloads: list[dict[str, Any]] | None = None,
) -> JobView:
    """The step's state from the Job's conditions; its outcome from the termination message of the Job's last
    pod that ended; the scheduler's reason while its pod fits no node; Kueue's while the Job waits for it."""
    status = job.get("status", {})
    conditions = _conditions(job)
    mine = sorted(
        (p for p in pods if owned_by(p, job["metadata"]["uid"])),
        key=lambda p: p["metadata"].get("creationTimestamp", ""),
    )
    ended = [(p, t) for p in mine if (t := _terminated(p)) is not None]
    state = _state(job, conditions, mine)
    finished = state in ("Succeeded", "Failed")

    unschedulable = _unschedulable(mine[-1]) if mine and state == "Pending" else None
    outcome, message = None, ""
    if ended:
        pod, term = ended[-1]
        outcome = _outcome(term.get("message", ""))
        if state == "Failed":
            attempts = int(status.get("failed", 0))
            message = _failure_message(conditions["Failed"], pod, term, outcome, attempts, log_tail)
    elif state == "Failed":
        cond = conditions["Failed"]
        message = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}"
    reason = ""
    if state == "Queued":
        reason, message = admission(job, workloads or [])
    end = (conditions.get("Complete") or conditions.get("Failed") or {}).get("lastTransitionTime")
    return JobView(
        name=job["metadata"]["name"],
        state=state,
        start=status.get("startTime"),
        end=end if finished else None,
        message=message,
        outcome=outcome if finished else None,
        unschedulable=(unschedulable.get("message") or "no node fits") if unschedulable else "",
        unschedulable_since=unschedulable.get("lastTransitionTime") if unschedulable else None,
        reason=reason,
    )


def admission(job: dict[str, Any], workloads: list[dict[str, Any]]) -> tuple[str, str]:
    """Why a suspended Job waits: Kueue's (reason, message) from its Workload, found by its owner reference to
    the Job; QuotaReserved=False says what Kueue lacks (quota, a flavor that fits, the LocalQueue)."""
    queue = job["metadata"].get("labels", {}).get(KUEUE_QUEUE_LABEL)
    if not queue:
        return "Suspended", "the Job is suspended and names no Kueue LocalQueue"
    workload = next((w for w in workloads if owned_by(w, job["metadata"]["uid"])), None)
    if workload is None:
        return NO_WORKLOAD, f"waiting for Kueue to take the Job into LocalQueue {queue} (no Workload yet)"
    name = workload["metadata"]["name"]
    conds = {c["type"]: c for c in workload.get("status", {}).get("conditions") or []}
    reserved = conds.get("QuotaReserved")
    if reserved and reserved.get("status") == "False":
        why = reserved.get("message") or "no quota reserved yet"
        return reserved.get("reason") or "Pending", f"Kueue: {why} (Workload {name}, LocalQueue {queue})"
    if (conds.get("Admitted") or {}).get("status") == "True":
        return "Admitted", f"Kueue admitted Workload {name}; the Job is being started"
    return NOT_CONSIDERED, f"Kueue has not considered Workload {name} yet (LocalQueue {queue})"


def _unschedulable(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The scheduler's PodScheduled=False condition, when it could place the pod nowhere."""
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return dict(c)
    return None


def _failure_message(
    cond: dict[str, Any],
    pod: dict[str, Any],
    term: dict[str, Any],
    outcome: StepOutcome | None,
    attempts: int,
    log_tail: LogTail,
) -> str:
    head = (
        f"{cond.get('reason', 'Failed')} after {attempts} attempt(s); "
        f"pod {pod['metadata']['name']} exited {term.get('exitCode')}"
    )
    if outcome is not None:
        tail = outcome.message
    else:
        tail = (term.get("message") or "").strip() or log_tail(pod["metadata"]["namespace"], pod["metadata"]["name"])
    tail = tail[-MESSAGE_LIMIT:]
    return f"{head}: {tail}" if tail else head
