"""The MLPerfRun status: pydantic models that generate the CRD's status schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from mlperf_harness.pipeline import Phase
from mlperf_harness.results import AuditResult, ScenarioResult
from pydantic import BaseModel, ConfigDict, Field

StepState = Literal["Waiting", "Pending", "Queued", "Running", "Succeeded", "Failed"]
TERMINAL_PHASES = (Phase.SUCCEEDED, Phase.FAILED)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Condition(StatusModel):
    """A condition in the metav1.Condition shape."""

    type: str = Field(description="Condition type: Progressing, Succeeded, Failed or Passed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the condition's last transition.")
    message: str = Field(default="", description="Human-readable details.")
    lastTransitionTime: str = Field(description="When the status last changed (RFC 3339).")
    observedGeneration: int = Field(default=0, description="The spec generation the condition is about.")


class Conditioned(StatusModel):
    """A status with standard conditions."""

    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")

    def set_condition(self, type_: str, status: bool, reason: str, message: str, generation: int) -> None:
        value: Literal["True", "False"] = "True" if status else "False"
        old = next((c for c in self.conditions if c.type == type_), None)
        if old and old.status == value and old.reason == reason and old.message == message:
            old.observedGeneration = generation
            return
        new = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            lastTransitionTime=old.lastTransitionTime if old and old.status == value else now(),
            observedGeneration=generation,
        )
        self.conditions = [c for c in self.conditions if c.type != type_] + [new]


class StepStatus(StatusModel):
    name: str = Field(description="Step name, e.g. preprocess or run-offline-performance.")
    job: str = Field(default="", description="Name of the step's Job (empty for a cache hit).")
    state: StepState = Field(default="Waiting", description="Waiting, Pending, Queued, Running, Succeeded or Failed.")
    startTime: str | None = Field(default=None, description="When the step's Job was created.")
    endTime: str | None = Field(default=None, description="When the step finished.")
    cacheHit: bool = Field(default=False, description="The step's artifact was already in the cache.")
    reason: str = Field(
        default="",
        description="Why the step waits or failed: Unschedulable when no node fits its pod; while its Job waits "
        "for Kueue (Queued), the reason of its Workload's QuotaReserved condition, e.g. Pending.",
    )
    message: str = Field(default="", description="Outcome or failure details.")


class MLPerfRunStatus(Conditioned):
    phase: Phase = Field(default=Phase.PENDING, description="Where the run is in its pipeline.")
    result: str = Field(
        default="",
        description="PASS when every result is VALID, reaches its accuracy target and passes its audits; "
        "else FAIL or INVALID. Empty until the results are in.",
    )
    samplesPerSecond: float | None = Field(
        default=None, description="Headline performance: the first scenario's samples (or queries) per second."
    )
    scenarioList: str = Field(default="", description="The run's scenarios, comma-separated (for kubectl get).")
    synthetic: bool = Field(default=False, description="Data or model were synthetic: not a real result.")
    submittable: bool = Field(default=False, description="The results could go into a submission.")
    observedGeneration: int = Field(default=0, description="The spec generation this status reflects.")
    storageClaim: str = Field(default="", description="PVC holding the run's artifacts and logs.")
    startTime: str | None = Field(default=None, description="When the operator started the run.")
    completionTime: str | None = Field(default=None, description="When the run reached Succeeded or Failed.")
    message: str = Field(default="", description="Latest human-readable message.")
    steps: list[StepStatus] = Field(default_factory=list, description="Every step of the pipeline.")
    results: list[ScenarioResult] = Field(
        default_factory=list, description="Per scenario and test mode: validity, throughput, latency, accuracy."
    )
    audits: list[AuditResult] = Field(default_factory=list, description="Per compliance test: pass or fail.")

    def step(self, name: str) -> StepStatus | None:
        return next((s for s in self.steps if s.name == name), None)
