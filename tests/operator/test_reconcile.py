"""The pure reconcile decision: ordering, cache hits, failures, results and phases."""

from __future__ import annotations

from datetime import UTC, datetime

from mlperf_harness.pipeline import Phase, plan
from mlperf_harness.results import AuditResult, ProducedArtifact, ScenarioResult, StepOutcome
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_operator.reconcile import JobView, decide
from mlperf_operator.status import MLPerfRunStatus

SPEC = MLPerfRunSpec.model_validate(
    {"benchmark": "resnet50", "storage": {"existingClaim": "cache"}, "audits": ["TEST05"], "fast": True}
)
STEPS = plan(SPEC, "test")


def _decide(previous: MLPerfRunStatus, jobs: dict[str, JobView], cache: set[str] = frozenset()):  # type: ignore[assignment]
    """`cache`: the planned artifacts the claim holds, each under its planned name."""
    return decide("r", 1, SPEC, STEPS, previous, jobs, {p: p for p in cache}, "cache")


def test_first_reconcile_creates_only_the_steps_without_needs() -> None:
    d = _decide(MLPerfRunStatus(), {})
    assert [s.name for s in d.create] == ["download-data", "download-model"]
    assert d.status.phase == Phase.DOWNLOADING
    assert d.status.step("download-data").job == "r-download-data"  # type: ignore[union-attr]
    (started,) = [e for e in d.events if e.reason == "StepStarted"]  # one Event for the Jobs of one reconcile
    assert started.message == "download-data, download-model: created Jobs"


def test_a_decision_is_the_same_when_repeated() -> None:
    first = _decide(MLPerfRunStatus(), {})
    jobs = {s.name: JobView(name=f"r-{s.name}", state="Running") for s in first.create}
    again = _decide(first.status, jobs)
    assert again.create == []
    assert again.status.phase == Phase.DOWNLOADING


def test_cached_artifacts_are_skipped_and_said_so() -> None:
    cache = {s.artifact.relpath for s in STEPS if s.artifact}
    d = _decide(MLPerfRunStatus(), {}, cache)
    hits = {s.name for s in d.status.steps if s.cacheHit}
    assert {"download-data", "download-model", "preprocess"} <= hits
    assert any(n.startswith("build-engine") for n in hits)
    assert [s.name for s in d.create] == ["run-offline-performance", "run-offline-accuracy"]
    (hit,) = [e for e in d.events if e.reason == "CacheHit"]  # one Event for the hits of one reconcile
    assert all(f"{name}: " in hit.message for name in hits), hit.message


def test_failed_step_fails_the_run_with_its_message() -> None:
    first = _decide(MLPerfRunStatus(), {})
    jobs = {
        "download-data": JobView(name="r-download-data", state="Failed", message="BackoffLimitExceeded: boom"),
        "download-model": JobView(name="r-download-model", state="Running"),
    }
    d = _decide(first.status, jobs)
    assert d.status.phase == Phase.FAILED
    failed = next(c for c in d.status.conditions if c.type == "Failed")
    assert failed.status == "True" and "download-data" in failed.message and "boom" in failed.message
    assert d.create == []
    # One Event for the end (not a PhaseFailed beside it), saying the phase it ended from and why.
    (end,) = [e for e in d.events if e.reason.startswith(("Run", "Phase"))]
    assert end.type == "Warning" and end.reason == "RunFailed" and end.message.startswith("Downloading -> Failed: ")


def test_results_flow_into_status_and_the_run_passes() -> None:
    perf = ScenarioResult(
        scenario="Offline", testMode="PerformanceOnly", valid=True, samplesPerSecond=123.0, synthetic=True
    )
    acc = ScenarioResult(
        scenario="Offline", testMode="AccuracyOnly", accuracy=100.0, accuracyTarget=75.7, accuracyPassed=True
    )
    audit = AuditResult(test="TEST05", scenario="Offline", verdict="PASS")
    outcomes = {
        "run-offline-performance": StepOutcome(step="run-harness", ok=True, results=[perf]),
        "run-offline-accuracy": StepOutcome(step="run-harness", ok=True, results=[acc]),
        "audit-test05-offline": StepOutcome(step="audit", ok=True, audits=[audit]),
    }
    jobs = {s.name: JobView(name=f"r-{s.name}", state="Succeeded", outcome=outcomes.get(s.name)) for s in STEPS}
    d = _decide(MLPerfRunStatus(), jobs)
    assert d.status.phase == Phase.SUCCEEDED
    assert d.status.result == "PASS" and d.status.samplesPerSecond == 123.0
    assert d.status.synthetic and not d.status.submittable
    assert [r.testMode for r in d.status.results] == ["PerformanceOnly", "AccuracyOnly"]
    passed = next(c for c in d.status.conditions if c.type == "Passed")
    assert "SYNTHETIC" in passed.message


def test_invalid_performance_makes_the_result_invalid() -> None:
    perf = ScenarioResult(scenario="Offline", testMode="PerformanceOnly", valid=False, resultValidity="INVALID")
    jobs = {
        s.name: JobView(
            name=f"r-{s.name}",
            state="Succeeded",
            outcome=StepOutcome(step="x", ok=True, results=[perf]) if s.name == "run-offline-performance" else None,
        )
        for s in STEPS
    }
    assert _decide(MLPerfRunStatus(), jobs).status.result == "INVALID"


def test_a_deleted_job_of_an_unfinished_step_is_created_again() -> None:
    first = _decide(MLPerfRunStatus(), {})
    again = _decide(first.status, {})
    assert [s.name for s in again.create] == ["download-data", "download-model"]


def test_a_failed_audit_is_a_warning_event() -> None:
    audit = AuditResult(test="TEST05", scenario="Offline", verdict="FAIL", details="ratio 0.91")
    outcome = StepOutcome(step="audit", ok=True, message="TEST05 Offline: FAIL", audits=[audit])
    jobs = {
        s.name: JobView(name=f"r-{s.name}", state="Succeeded", outcome=outcome if s.verb == "audit" else None)
        for s in STEPS
    }
    d = _decide(MLPerfRunStatus(), jobs)
    failed = [e for e in d.events if e.reason == "AuditFailed"]
    assert len(failed) == 1 and failed[0].type == "Warning" and "audit-test05-offline" in failed[0].message
    assert not any(e.reason == "StepSucceeded" and "audit" in e.message for e in d.events)


def test_an_artifact_another_run_makes_is_waited_for_without_a_job() -> None:
    data = next(s for s in STEPS if s.name == "download-data").artifact
    assert data is not None
    d = decide("r", 1, SPEC, STEPS, MLPerfRunStatus(), {}, {}, "cache", {data.relpath: "run other"})
    assert [s.name for s in d.create] == ["download-model"]
    waiting = d.status.step("download-data")
    assert waiting is not None and waiting.state == "Pending" and waiting.job == ""
    assert waiting.reason == "ArtifactInProduction" and "run other" in waiting.message
    assert d.status.phase == Phase.DOWNLOADING
    # Once made, it is a cache hit.
    done = _decide(d.status, {}, {data.relpath})
    assert done.status.step("download-data").cacheHit  # type: ignore[union-attr]


def test_an_unschedulable_step_waits_saying_why_then_fails_after_the_deadline() -> None:
    first = _decide(MLPerfRunStatus(), {})
    why = "0/8 nodes are available: 8 node(s) didn't match Pod's node affinity/selector."
    recent = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stuck = {
        "download-data": JobView(name="r-download-data", state="Pending", unschedulable=why, unschedulable_since=recent)
    }
    d = _decide(first.status, stuck)
    st = d.status.step("download-data")
    assert st is not None and st.reason == "Unschedulable" and why in st.message and d.status.phase == Phase.DOWNLOADING
    assert [e.reason for e in d.events if e.type == "Warning"] == ["Unschedulable"]
    assert next(c for c in d.status.conditions if c.type == "Unschedulable").status == "True"
    assert not [e for e in _decide(d.status, stuck).events if e.reason == "Unschedulable"]  # said once

    long_ago = "2020-01-01T00:00:00Z"
    late = {
        "download-data": JobView(
            name="r-download-data", state="Pending", unschedulable=why, unschedulable_since=long_ago
        )
    }
    failed = _decide(d.status, late)
    assert failed.status.phase == Phase.FAILED and failed.suspend == ["r-download-data"]
    cond = next(c for c in failed.status.conditions if c.type == "Failed")
    assert cond.reason == "Unschedulable" and "schedulingTimeoutSeconds" in cond.message and why in cond.message


def test_a_run_whose_every_job_waits_for_kueue_is_queued_saying_kueues_reason() -> None:
    first = _decide(MLPerfRunStatus(), {})
    why = "Kueue: couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor h200"
    waiting = {s.name: JobView(name=f"r-{s.name}", state="Queued", reason="Pending", message=why) for s in first.create}
    d = _decide(first.status, waiting)
    st = d.status.step("download-data")
    assert st is not None and st.state == "Queued" and st.reason == "Pending" and st.message == why
    assert d.status.phase == Phase.QUEUED and why in d.status.message
    cond = next(c for c in d.status.conditions if c.type == "Queued")
    assert cond.status == "True" and cond.reason == "Pending" and why in cond.message
    assert [e.reason for e in d.events].count("Queued") == 2  # one per step
    assert not [e for e in _decide(d.status, waiting).events if e.reason == "Queued"]  # said once

    one_admitted = {**waiting, "download-data": JobView(name="r-download-data", state="Running")}
    assert _decide(d.status, one_admitted).status.phase == Phase.DOWNLOADING  # not every Job in flight waits
    running = {s: JobView(name=v.name, state="Running") for s, v in waiting.items()}
    after = _decide(d.status, running).status
    assert next(c for c in after.conditions if c.type == "Queued").status == "False"


def test_a_producing_job_records_the_artifact_its_pod_wrote_not_the_plan() -> None:
    engine = next(s for s in STEPS if s.verb == "build-engine")
    assert engine.artifact is not None
    made = ProducedArtifact(kind="engine", key="resnet50-onnxruntime-fp32-b8-0123456789abcdef", inputs={"batch": 8})
    first = _decide(MLPerfRunStatus(), {})
    built = {
        engine.name: JobView(
            name=f"r-{engine.name}", state="Succeeded", outcome=StepOutcome(step="build-engine", ok=True, artifact=made)
        ),
        "download-data": JobView(name="r-download-data", state="Succeeded", outcome=StepOutcome(step="x", ok=True)),
    }
    d = _decide(first.status, built)
    assert d.cached == [(engine, made)]  # a Job that reported no artifact records nothing
    # A planned artifact the index answers with another one: a cache hit that names what is on the claim.
    hit = decide("r", 1, SPEC, STEPS, MLPerfRunStatus(), {}, {engine.artifact.relpath: made.relpath}, "cache")
    st = hit.status.step(engine.name)
    assert st is not None and st.cacheHit and made.relpath in st.message
