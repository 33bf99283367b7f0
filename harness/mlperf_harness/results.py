"""Results models: what a harness step reports, the operator's status and the local table show.

A step's outcome travels to the operator as compact JSON in the container's termination message,
which Kubernetes caps at 4096 bytes, so the models hold figures, never logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINATION_LOG_ENV = "MLPERF_TERMINATION_LOG"
KUBERNETES_TERMINATION_LOG = Path("/dev/termination-log")
MAX_TERMINATION_MESSAGE = 4096


class ResultModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class LatencyNs(ResultModel):
    p50: int | None = Field(default=None, description="50th percentile latency (ns).")
    p90: int | None = Field(default=None, description="90th percentile latency (ns).")
    p95: int | None = Field(default=None, description="95th percentile latency (ns).")
    p97: int | None = Field(default=None, description="97th percentile latency (ns).")
    p99: int | None = Field(default=None, description="99th percentile latency (ns).")
    p999: int | None = Field(default=None, description="99.9th percentile latency (ns).")


class TuningProbe(ResultModel):
    """One short LoadGen run of the tuner (a probe, not a result)."""

    scenario: str = Field(description="Scenario the probe ran (Offline probes bound a Server search).")
    target: float = Field(description="The probe's target: QPS (Offline, Server) or expected latency in ms.")
    valid: bool = Field(description="LoadGen's validity of the probe (and the round's bound).")
    samplesPerSecond: float | None = Field(default=None, description="Throughput the probe reached.")
    latencyMs: float | None = Field(
        default=None, description="The scenario's percentile latency of the probe (p99 Server, p90 SingleStream)."
    )


class Tuning(ResultModel):
    """What the tuner found for one scenario and the probes it took (or the cached finding it reused)."""

    parameter: Literal["targetQps", "expectedQps", "targetLatencyMs"] = Field(
        description="The LoadGen setting the tuner sets (spec.loadgen's name); it replaces the spec's and the table's."
    )
    value: float = Field(
        description="What the run uses: Server: measured x margin; Offline: measured / margin (a faster run "
        "would end early); SingleStream / MultiStream: the measured latency."
    )
    measured: float = Field(
        description="Highest VALID Server probe, Offline throughput, or the measured percentile latency (ms)."
    )
    margin: float = Field(default=1.0, description="Safety factor applied to the measured value.")
    key: str = Field(default="", description="Cache key: cache/tuning/<key>/tuning.json.")
    reused: bool = Field(default=False, description="Taken from the cache without probing.")
    probes: list[TuningProbe] = Field(default_factory=list, description="Every probe, in order.")

    def describe(self) -> str:
        """One line: the value, how it was found, and whether the cache answered."""
        unit = "ms" if self.parameter == "targetLatencyMs" else "QPS"
        if self.parameter == "targetQps":
            how = f"{self.margin:g} x the highest VALID probe {self.measured:g}"
        elif self.parameter == "expectedQps":
            how = f"the measured Offline throughput {self.measured:g} / {self.margin:g}"
        else:
            how = "the measured percentile latency"
        cache = ", reused from the cache without probing" if self.reused else ""
        return f"tuned {self.parameter} {self.value:g} {unit} ({how}, {len(self.probes)} probes{cache})"


class ScenarioResult(ResultModel):
    scenario: str = Field(description="LoadGen scenario.")
    testMode: str = Field(description="PerformanceOnly or AccuracyOnly.")
    valid: bool | None = Field(default=None, description="LoadGen's result validity (performance runs).")
    resultValidity: str = Field(default="", description="VALID or INVALID as LoadGen printed it.")
    invalidReason: str = Field(
        default="",
        description="Why the run is INVALID: the LoadGen checks that failed (min duration, min queries, "
        "early stopping) or the round's latency bound.",
    )
    samplesPerSecond: float | None = Field(
        default=None, description="Offline samples/s, Server completed QPS, or the stream equivalent."
    )
    latencyNs: LatencyNs | None = Field(default=None, description="Latency percentiles in nanoseconds.")
    accuracy: float | None = Field(default=None, description="Accuracy metric value (accuracy runs).")
    accuracyMetric: str = Field(default="", description="Name of the accuracy metric, e.g. top-1.")
    accuracyTarget: float | None = Field(default=None, description="Threshold the accuracy must reach.")
    accuracyPassed: bool | None = Field(default=None, description="The accuracy reached its target.")
    synthetic: bool = Field(default=False, description="Produced from synthetic data or a generated model.")
    submittable: bool = Field(default=False, description="Fit for a submission (not fast, not synthetic).")
    device: str = Field(default="", description="Device the backend ran on, e.g. cpu or cuda:0 NVIDIA H200.")
    backend: str = Field(default="", description="Backend name and version.")
    logDir: str = Field(default="", description="Where the LoadGen logs are, relative to the work directory.")
    tuning: Tuning | None = Field(default=None, description="The tuner's finding the run used (spec.tune).")

    @property
    def passed(self) -> bool:
        if self.testMode == "AccuracyOnly":
            return bool(self.accuracyPassed)
        return bool(self.valid)


AuditVerdict = Literal["PASS", "FAIL", "NOT JUDGED"]


class AuditResult(ResultModel):
    test: str = Field(description="Compliance test, e.g. TEST01.")
    scenario: str = Field(description="Scenario the test ran in.")
    verdict: AuditVerdict = Field(
        description=(
            "PASS: the official criteria were met. FAIL: they were not. NOT JUDGED: only the timing "
            "comparison missed its band, in a run shortened below the round's minimum duration, by less "
            "than such short runs vary on a shared machine (details say why); a full-length run judges it."
        )
    )
    details: str = Field(default="", description="Short verdict, e.g. the performance ratio.")
    synthetic: bool = Field(default=False, description="Produced from synthetic data or a generated model.")

    @property
    def passed(self) -> bool:
        """Nothing failed: what the run's exit code and phase follow."""
        return self.verdict != "FAIL"


class ProducedArtifact(ResultModel):
    """The artifact a step left on the work directory, under the key the step itself computed: only the
    pod knows its node's GPU and its backend's version, so the operator records this, never its own plan."""

    kind: str = Field(description="dataset, preprocessed, model or engine.")
    key: str = Field(description="The artifact's key: its directory under cache/<kind>/.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="What the key is a digest of.")

    @property
    def relpath(self) -> str:
        return f"cache/{self.kind}/{self.key}"


class StepOutcome(ResultModel):
    step: str = Field(description="The verb that produced the outcome.")
    ok: bool = Field(description="The step itself succeeded (a result may still be INVALID).")
    cacheHit: bool = Field(default=False, description="Nothing had to be done: the artifact existed.")
    message: str = Field(default="", description="One-line summary or error.")
    results: list[ScenarioResult] = Field(default_factory=list, description="Harness run results.")
    audits: list[AuditResult] = Field(default_factory=list, description="Audit verdicts.")
    artifact: ProducedArtifact | None = Field(
        default=None, description="The artifact the step made or found complete (download, preprocess, engine)."
    )

    def to_message(self) -> str:
        text = self.model_dump_json(exclude_defaults=True)
        if len(text.encode()) > MAX_TERMINATION_MESSAGE:
            raise ValueError(f"step outcome is {len(text)} bytes, over the {MAX_TERMINATION_MESSAGE}-byte limit")
        return text


def read_termination_message(text: str) -> StepOutcome:
    return StepOutcome.model_validate_json(text)


def write_termination_message(outcome: StepOutcome) -> Path | None:
    """Write the outcome where Kubernetes (or the local executor) picks it up; None when nowhere."""
    target = os.environ.get(TERMINATION_LOG_ENV)
    path = Path(target) if target else KUBERNETES_TERMINATION_LOG
    if not target and not (path.exists() and os.access(path, os.W_OK)):
        return None
    path.write_text(outcome.to_message())
    return path


# --- a run's outcomes and its verdict: the one place the operator, `mlperf run` and the report derive them ----


def collect(outcomes: Iterable[StepOutcome | None]) -> tuple[list[ScenarioResult], list[AuditResult]]:
    """Every result and audit verdict of the outcomes, in their order; a later one for the same scenario and
    test mode (or test and scenario) replaces an earlier one, in its place (a rerun step's newer outcome)."""
    results: dict[tuple[str, str], ScenarioResult] = {}
    audits: dict[tuple[str, str], AuditResult] = {}
    for outcome in outcomes:
        if outcome is None:
            continue
        for r in outcome.results:
            results[(r.scenario, r.testMode)] = r
        for a in outcome.audits:
            audits[(a.test, a.scenario)] = a
    return list(results.values()), list(audits.values())


RunResult = Literal["PASS", "FAIL", "INVALID", ""]


@dataclass(frozen=True)
class RunVerdict:
    result: RunResult  # "" while there is no result at all
    reasons: tuple[str, ...]  # why it did not pass, one line each (empty when it passed)
    summary: str  # every result and audit verdict in one line

    @property
    def passed(self) -> bool:
        """What `mlperf run`'s exit code and the operator's Passed condition follow."""
        return self.result == "PASS"


def _line(r: ScenarioResult) -> str:
    if r.testMode == "PerformanceOnly":
        why = f" ({r.invalidReason})" if r.invalidReason else ""
        return f"{r.scenario} performance {r.resultValidity or '?'}{why} {r.samplesPerSecond or 0:.1f}/s"
    return f"{r.scenario} accuracy {r.accuracy} (target {r.accuracyTarget})"


def verdict(results: list[ScenarioResult], audits: list[AuditResult], synthetic: bool = False) -> RunVerdict:
    """PASS when there are results and every one is VALID or reaches its accuracy target and no audit FAILs;
    INVALID when a performance result is INVALID; else FAIL."""
    reasons = [_line(r) for r in results if not r.passed]
    reasons += [f"{a.test}/{a.scenario} {a.verdict}: {a.details}" for a in audits if not a.passed]
    result: RunResult
    if any(r.testMode == "PerformanceOnly" and r.valid is False for r in results):
        result = "INVALID"
    elif reasons:
        result = "FAIL"
    elif results:
        result = "PASS"
    else:
        result, reasons = "", ["no results"]
    parts = [_line(r) for r in results] + [f"{a.test}/{a.scenario} {a.verdict}" for a in audits]
    if synthetic or any(r.synthetic for r in results):
        parts.append("SYNTHETIC data or model: not a real result")
    return RunVerdict(result, tuple(reasons), "; ".join(parts))
