"""Prometheus metrics of the operator, served on /metrics."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from mlperf_harness.pipeline import Phase
from mlperf_harness.results import ScenarioResult
from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .campaign import MLPerfCampaignStatus

RUN_LABELS = ("namespace", "run", "benchmark", "scenario", "gpu_product", "synthetic")

RUNS_BY_PHASE = Gauge("mlperf_runs", "MLPerfRuns known to the operator, by phase.", ["phase"])
STEP_DURATION = Histogram(
    "mlperf_step_duration_seconds",
    "Wall time of finished pipeline steps.",
    ["step", "benchmark"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
SAMPLES_PER_SECOND = Gauge("mlperf_result_samples_per_second", "Performance result of a run.", RUN_LABELS)
LATENCY_P99 = Gauge("mlperf_result_latency_p99_seconds", "99th percentile latency of a run.", RUN_LABELS)
ACCURACY = Gauge("mlperf_result_accuracy", "Accuracy result of a run, in the metric's own unit.", RUN_LABELS)
RESULT_VALID = Gauge("mlperf_result_valid", "1 when LoadGen reported VALID.", RUN_LABELS)
CACHE_HITS = Counter("mlperf_cache_hits_total", "Steps skipped because their artifact was cached.", ["kind"])
JOBS_CREATED = Counter("mlperf_jobs_created_total", "Step Jobs created.", ["step"])
CAMPAIGN_POINTS = Gauge(
    "mlperf_campaign_points",
    "Points of a campaign, by state: total, succeeded, failed, running.",
    ["namespace", "campaign", "state"],
)
RECONCILES = Counter("mlperf_reconciles_total", "Reconciles of a run (a GET of it and a decision).")
API_REQUESTS = Counter(
    "mlperf_api_requests_total",
    "The operator's own API requests, by verb, resource and HTTP code.",
    ["verb", "resource", "code"],
)
RECONCILE_ERRORS = Counter("mlperf_reconcile_errors_total", "Reconciles that raised an error.", ["reason"])
LEADER = Gauge("mlperf_operator_leader", "1 while this replica holds the leader Lease and reconciles, 0 on standby.")

_phases: dict[str, str] = {}
_series: dict[tuple[str, str], set[tuple[str, ...]]] = {}  # a run's result series, removed with the run
_phase_lock = threading.Lock()  # reconciles of different runs call in from several threads
for _p in Phase:  # every phase is exported, 0 when no run is in it
    RUNS_BY_PHASE.labels(_p.value).set(0)


def observe_phase(run_key: str, phase: str | None) -> None:
    """Track one run's phase (None when it is gone) in the per-phase gauge: a move of one run, not a recount of
    them all (a thousand runs, a dozen phases, several calls per reconcile)."""
    with _phase_lock:
        old = _phases.pop(run_key, None) if phase is None else _phases.get(run_key)
        if phase is not None:
            _phases[run_key] = phase
        if old == phase:
            return
        if old is not None:
            RUNS_BY_PHASE.labels(old).dec()
        if phase is not None:
            RUNS_BY_PHASE.labels(phase).inc()


def forget_run(namespace: str, run: str) -> None:
    """A deleted run leaves no series behind: one series per live run, not per run ever seen."""
    observe_phase(f"{namespace}/{run}", None)
    for labels in _series.pop((namespace, run), set()):
        for gauge in (SAMPLES_PER_SECOND, LATENCY_P99, ACCURACY, RESULT_VALID):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)


def observe_result(namespace: str, run: str, benchmark: str, gpu: str, result: ScenarioResult) -> None:
    labels = (namespace, run, benchmark, result.scenario, gpu, str(result.synthetic).lower())
    _series.setdefault((namespace, run), set()).add(labels)
    if result.testMode == "PerformanceOnly":
        if result.samplesPerSecond is not None:
            SAMPLES_PER_SECOND.labels(*labels).set(result.samplesPerSecond)
        if result.latencyNs and result.latencyNs.p99 is not None:
            LATENCY_P99.labels(*labels).set(result.latencyNs.p99 / 1e9)
        if result.valid is not None:
            RESULT_VALID.labels(*labels).set(1 if result.valid else 0)
    elif result.accuracy is not None:
        ACCURACY.labels(*labels).set(result.accuracy)


def observe_campaign(namespace: str, campaign: str, status: MLPerfCampaignStatus | None) -> None:
    """A campaign's progress; its four series go with it."""
    if status is None:
        for state in ("total", "succeeded", "failed", "running"):
            with contextlib.suppress(KeyError):
                CAMPAIGN_POINTS.remove(namespace, campaign, state)
        return
    counts = {"total": status.pointCount, "succeeded": status.succeeded, "failed": status.failed}
    for state, value in {**counts, "running": status.running}.items():
        CAMPAIGN_POINTS.labels(namespace, campaign, state).set(value)
