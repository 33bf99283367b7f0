"""A run's outcomes collected and its verdict: the one function the operator, `mlperf run` and the report use."""

from __future__ import annotations

from mlperf_harness.results import AuditResult, ScenarioResult, StepOutcome, collect, verdict

PERF = ScenarioResult(scenario="Offline", testMode="PerformanceOnly", valid=True, resultValidity="VALID")
ACC = ScenarioResult(
    scenario="Offline", testMode="AccuracyOnly", accuracy=76.5, accuracyTarget=75.7, accuracyPassed=True
)


def test_pass_fail_invalid_and_why() -> None:
    assert verdict([PERF, ACC], []).result == "PASS" and verdict([PERF, ACC], []).reasons == ()
    empty = verdict([], [])
    assert empty.result == "" and not empty.passed and empty.reasons == ("no results",)
    low = ACC.model_copy(update={"accuracy": 70.0, "accuracyPassed": False})
    failed = verdict([PERF, low], [])
    assert failed.result == "FAIL" and failed.reasons == ("Offline accuracy 70.0 (target 75.7)",)
    invalid = PERF.model_copy(update={"valid": False, "resultValidity": "INVALID", "invalidReason": "min queries"})
    assert verdict([invalid, low], []).result == "INVALID"
    assert "(min queries)" in verdict([invalid], []).reasons[0]
    audit = AuditResult(test="TEST01", scenario="Offline", verdict="FAIL", details="outputs differ")
    judged = verdict([PERF, ACC], [audit, audit.model_copy(update={"verdict": "NOT JUDGED"})], synthetic=True)
    assert judged.result == "FAIL" and judged.reasons == ("TEST01/Offline FAIL: outputs differ",)
    assert judged.summary.endswith(
        "TEST01/Offline FAIL; TEST01/Offline NOT JUDGED; SYNTHETIC data or model: not a real result"
    )


def test_collect_keeps_order_and_a_later_outcome_replaces_an_earlier_one() -> None:
    newer = PERF.model_copy(update={"samplesPerSecond": 2.0})
    audit = AuditResult(test="TEST05", scenario="Offline", verdict="PASS")
    outcomes = [StepOutcome(step="a", ok=True, results=[PERF]), None, StepOutcome(step="b", ok=True, results=[ACC])]
    outcomes.append(StepOutcome(step="c", ok=True, results=[newer], audits=[audit]))
    assert collect(outcomes) == ([newer, ACC], [audit])
