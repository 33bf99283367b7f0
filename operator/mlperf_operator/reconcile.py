"""Decide what a run needs next, from what is observed. Pure: no API calls happen here.

The operator observes (Jobs, pods' outcomes, the cache index), calls ``decide``, then acts
on the returned ``Decision``. Because everything is derived from the cluster and the previous
status, a restart at any point decides the same thing again, and Job names are deterministic,
so no Job is ever created twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from mlperf_harness.pipeline import Phase, Step
from mlperf_harness.results import ProducedArtifact, RunVerdict, StepOutcome, collect, verdict
from mlperf_harness.spec import MLPerfRunSpec

from .jobs import job_name
from .observe import NO_WORKLOAD, NOT_CONSIDERED, JobView
from .status import MLPerfRunStatus, StepState, StepStatus, now

__all__ = ["Decision", "Event", "JobView", "decide"]

ACTIVE: tuple[StepState, ...] = ("Pending", "Queued", "Running")
UNSCHEDULABLE = "Unschedulable"
QUEUED = "Queued"  # the condition while a step's Job waits for Kueue's admission
QUIET = ("", NO_WORKLOAD, NOT_CONSIDERED, "Admitted")  # queued, not worth an Event: Kueue has not decided, or said yes
IN_PRODUCTION = "ArtifactInProduction"  # another run makes the step's artifact: no Job, no duplicate work


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Decision:
    status: MLPerfRunStatus
    create: list[Step] = field(default_factory=list)
    # Artifacts to record in the cache index: what each producing step's pod reported it wrote.
    cached: list[tuple[Step, ProducedArtifact]] = field(default_factory=list)
    waiting: list[Step] = field(default_factory=list)  # steps waiting for another run's producer of their artifact
    suspend: list[str] = field(default_factory=list)  # Jobs that can never run (unschedulable past the deadline)
    finished: list[tuple[Step, StepStatus]] = field(default_factory=list)  # steps that ended now
    events: list[Event] = field(default_factory=list)


def decide(
    run_name: str,
    generation: int,
    spec: MLPerfRunSpec,
    steps: list[Step],
    previous: MLPerfRunStatus,
    jobs: dict[str, JobView],
    cache: Mapping[str, str],
    claim: str,
    producing: dict[str, str] | None = None,
) -> Decision:
    """`cache`: the planned artifacts (relpath) the claim holds -> the artifact there that answers each.
    `producing`: artifacts that another run's step is making now (relpath -> who), which this run takes from
    the cache when they are done instead of making them too."""
    producing = producing or {}
    status = previous.model_copy(deep=True)
    status.scenarioList = ",".join(spec.scenarios)
    status.storageClaim = claim
    status.observedGeneration = generation
    status.startTime = status.startTime or now()
    decision = Decision(status=status)
    by_name: dict[str, StepStatus] = {}
    run_failed = previous.phase == Phase.FAILED

    for step in steps:
        old = previous.step(step.name)
        job = jobs.get(step.name)
        current = _observe(step, old, job, cache, claim, spec.schedulingTimeoutSeconds)
        if current.state in ("Succeeded", "Failed") and (old is None or old.state != current.state):
            decision.finished.append((step, current))
            made = job.outcome.artifact if job and job.outcome else None
            if step.artifact and made and current.state == "Succeeded" and current.job:  # made (or found) by its Job
                decision.cached.append((step, made))
        if current.state == "Failed":
            run_failed = True
        ready = (
            current.state == "Waiting" and not run_failed and all(by_name[n].state == "Succeeded" for n in step.needs)
        )
        if ready and step.artifact and step.artifact.relpath in producing:
            maker = producing[step.artifact.relpath]
            message = f"{step.artifact.relpath} is being made by {maker}; taken from the cache when done"
            current = current.model_copy(update={"state": "Pending", "reason": IN_PRODUCTION, "message": message})
            decision.waiting.append(step)
        elif ready:
            current = current.model_copy(
                update={"state": "Pending", "job": job_name(run_name, step.name), "startTime": now()}
            )
            decision.create.append(step)
        by_name[step.name] = current

    status.steps = [by_name[s.name] for s in steps]
    decision.suspend = [st.job for st in status.steps if st.state == "Failed" and st.reason == UNSCHEDULABLE and st.job]
    _collect_results(status, steps, jobs)
    _set_phase(decision, steps, previous.phase, run_failed, generation, spec)
    _step_events(decision, previous)
    return decision


def _observe(
    step: Step, old: StepStatus | None, job: JobView | None, cache: Mapping[str, str], claim: str, timeout: int
) -> StepStatus:
    if old and old.state in ("Succeeded", "Failed"):
        return old  # terminal: the Job may be gone (TTL), the status remembers
    if job is not None and job.unschedulable:
        waited = _seconds_since(job.unschedulable_since)
        if waited > timeout:
            message = f"unschedulable for {waited:.0f} s (spec.schedulingTimeoutSeconds {timeout}): {job.unschedulable}"
            return StepStatus(name=step.name, job=job.name, state="Failed", reason=UNSCHEDULABLE, message=message)
        return StepStatus(
            name=step.name,
            job=job.name,
            state="Pending",
            startTime=old.startTime if old else None,
            reason=UNSCHEDULABLE,
            message=f"unschedulable since {job.unschedulable_since} (the run fails after "
            f"spec.schedulingTimeoutSeconds: {timeout}): {job.unschedulable}",
        )
    if job is not None:
        return StepStatus(
            name=step.name,
            job=job.name,
            state=job.state,
            startTime=job.start or (old.startTime if old else None),
            endTime=job.end,
            cacheHit=bool(job.outcome and job.outcome.cacheHit),
            reason=job.reason,
            message=job.message or (job.outcome.message if job.outcome else ""),
        )
    if step.artifact and step.artifact.relpath in cache:
        return StepStatus(
            name=step.name,
            state="Succeeded",
            cacheHit=True,
            endTime=now(),
            message=f"{cache[step.artifact.relpath]} already on claim {claim}",
        )
    return StepStatus(name=step.name)


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def _collect_results(status: MLPerfRunStatus, steps: list[Step], jobs: dict[str, JobView]) -> None:
    """Results come from the outcomes of finished harness and audit Jobs (the status remembers those whose Jobs
    are gone), in step order."""
    remembered = StepOutcome(step="status", ok=True, results=status.results, audits=status.audits)
    results, audits = collect([remembered, *(j.outcome for s in steps if (j := jobs.get(s.name)))])
    order = {s.name: i for i, s in enumerate(steps)}
    status.results = sorted(results, key=lambda r: order.get(_run_step(r.scenario, r.testMode), 0))
    status.audits = audits
    status.synthetic = status.synthetic or any(r.synthetic for r in status.results)


def _run_step(scenario: str, mode: str) -> str:
    return f"run-{scenario.lower()}-{'performance' if mode == 'PerformanceOnly' else 'accuracy'}"


def _set_phase(
    decision: Decision, steps: list[Step], old_phase: Phase, failed: bool, generation: int, spec: MLPerfRunSpec
) -> None:
    status = decision.status
    status.synthetic = status.synthetic or spec.synthetic
    if failed:
        phase = Phase.FAILED
    elif all(s.state == "Succeeded" for s in status.steps):
        phase = Phase.SUCCEEDED
    else:
        phase = _active_phase(status, steps)
    status.phase = phase

    stuck = [s for s in status.steps if s.reason == UNSCHEDULABLE]
    if stuck:
        status.set_condition(UNSCHEDULABLE, True, UNSCHEDULABLE, f"{stuck[0].name}: {stuck[0].message}", generation)
    elif any(c.type == UNSCHEDULABLE for c in status.conditions):
        status.set_condition(UNSCHEDULABLE, False, "Scheduled", "every step's pod found a node", generation)
    queued = [s for s in status.steps if s.state == "Queued"]
    if queued:  # Kueue's story: why the first waiting step's Job is not admitted
        status.set_condition(
            QUEUED, True, queued[0].reason or QUEUED, f"{queued[0].name}: {queued[0].message}", generation
        )
    elif any(c.type == QUEUED for c in status.conditions):
        status.set_condition(QUEUED, False, "Admitted", "Kueue admitted every queued step's Job", generation)

    if phase == Phase.FAILED:
        step = next((s for s in status.steps if s.state == "Failed"), None)
        message = f"step {step.name} (job {step.job}) failed: {step.message}" if step else status.message
        status.message = message
        reason = UNSCHEDULABLE if step and step.reason == UNSCHEDULABLE else "StepFailed"
        status.set_condition("Failed", True, reason, message, generation)
        status.set_condition("Progressing", False, "Failed", message, generation)
    elif phase == Phase.SUCCEEDED:
        judged = _summarise(status, spec)
        message = f"all {len(status.steps)} steps succeeded; result {status.result}"
        status.message = message
        status.set_condition("Succeeded", True, "PipelineComplete", message, generation)
        status.set_condition("Progressing", False, "Complete", message, generation)
        status.set_condition("Passed", judged.passed, status.result or "NoResults", judged.summary, generation)
    else:
        running = [s.name for s in status.steps if s.state in ACTIVE]
        status.message = f"{phase.value}: {', '.join(running) or 'waiting'}"
        if phase == Phase.QUEUED:
            status.message += f" ({queued[0].message})"
        status.set_condition("Progressing", True, phase.value, status.message, generation)

    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        status.completionTime = status.completionTime or now()
    # One Event per phase change; the end's says how it ended, in the same Event (not a Phase* one beside it).
    moved = f"{old_phase.value} -> {phase.value}"
    if phase != old_phase and phase == Phase.FAILED:
        decision.events.append(Event("Warning", "RunFailed", f"{moved}: {status.message}"))
    elif phase != old_phase and phase == Phase.SUCCEEDED:
        decision.events.append(Event("Normal", "RunSucceeded", f"{moved}: {status.message}"))
    elif phase != old_phase:
        decision.events.append(Event("Normal", f"Phase{phase.value}", moved))


def _active_phase(status: MLPerfRunStatus, steps: list[Step]) -> Phase:
    """The phase of the first step still in flight; Queued when every Job in flight waits for a quota."""
    active = [(st, step) for st, step in zip(status.steps, steps, strict=True) if st.state in ACTIVE]
    if not active:
        return Phase.PENDING
    if all(st.state == "Queued" for st, _ in active):
        return Phase.QUEUED
    return active[0][1].phase


def _summarise(status: MLPerfRunStatus, spec: MLPerfRunSpec) -> RunVerdict:
    perf = [r for r in status.results if r.testMode == "PerformanceOnly"]
    status.samplesPerSecond = perf[0].samplesPerSecond if perf else None
    judged = verdict(status.results, status.audits, status.synthetic)
    status.result = judged.result
    status.submittable = (
        bool(status.results) and not spec.fast and not status.synthetic and all(r.submittable for r in status.results)
    )
    return judged


def _step_events(decision: Decision, previous: MLPerfRunStatus) -> None:
    """The steps' Events, those of one kind in one reconcile aggregated into one (as client-go's recorder
    aggregates similar Events): at scale each Event is an API write, and a run that finds its artifacts in the
    cache finds several at once."""
    if created := [s.name for s in decision.create]:
        jobs = "Jobs" if len(created) > 1 else "Job"
        decision.events.append(Event("Normal", "StepStarted", f"{', '.join(created)}: created {jobs}"))
    for st in decision.status.steps:
        old = previous.step(st.name)
        if st.reason == UNSCHEDULABLE and st.state != "Failed" and (old is None or old.reason != UNSCHEDULABLE):
            decision.events.append(Event("Warning", UNSCHEDULABLE, f"{st.name}: {st.message}"))
        if st.state == "Queued" and st.reason not in QUIET and (old is None or old.reason != st.reason):
            decision.events.append(Event("Normal", QUEUED, f"{st.name}: {st.message}"))
    if hits := [f"{step.name}: {st.message}" for step, st in decision.finished if st.cacheHit]:
        decision.events.append(Event("Normal", "CacheHit", "; ".join(hits)))
    for step, st in decision.finished:
        if st.cacheHit:
            continue
        if st.state == "Succeeded" and step.verb == "audit" and _audit_failed(decision.status, step):
            decision.events.append(Event("Warning", "AuditFailed", f"{step.name}: {st.message}".rstrip(": ")))
        elif st.state == "Succeeded":
            decision.events.append(Event("Normal", "StepSucceeded", f"{step.name}: {st.message}".rstrip(": ")))
        else:
            decision.events.append(Event("Warning", "StepFailed", f"{step.name}: {st.message}"))


def _audit_failed(status: MLPerfRunStatus, step: Step) -> bool:
    """The audit step ran to its end and its test's verdict is FAIL: the run goes on, the result will not pass."""
    test, scenario = step.args[1], step.args[3]  # --test T --scenario S
    tests = {test, "TEST04-A", "TEST04-B"} if test == "TEST04" else {test}
    return any(a.test in tests and a.scenario == scenario and not a.passed for a in status.audits)
