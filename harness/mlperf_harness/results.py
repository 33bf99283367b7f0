"""Results models: what a harness step reports, the operator's status and the local table show.

A step's outcome travels to the operator as compact JSON in the container's termination message,
which Kubernetes caps at 4096 bytes, so the models hold figures, never logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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


class StepOutcome(ResultModel):
    step: str = Field(description="The verb that produced the outcome.")
    ok: bool = Field(description="The step itself succeeded (a result may still be INVALID).")
    cacheHit: bool = Field(default=False, description="Nothing had to be done: the artifact existed.")
    message: str = Field(default="", description="One-line summary or error.")
    results: list[ScenarioResult] = Field(default_factory=list, description="Harness run results.")
    audits: list[AuditResult] = Field(default_factory=list, description="Audit verdicts.")

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
