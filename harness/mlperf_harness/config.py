"""The typed harness config of one benchmark x scenario x system, built from the run spec.

Values come, in order, from the suite's round (LoadGen rules: durations, query counts, seeds,
latency bounds), the harness-config table (throughput/latency targets, workers, batching;
``extends`` / ``scales`` / config_ver blocks), ``fast``, the spec's loadgen overrides, and last what
the tuner found (or a probe's own target and duration): ``build_config(spec, scenario, tuned)``.
Batch size and precision come from ``artifacts`` so the engine key and the run always agree.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from . import artifacts
from .spec import LoadGenOverrides, MLPerfRunSpec
from .suites import Scenario, Seeds, load_suite

FAST_MIN_DURATION_MS = 60_000
FAST_MIN_QUERY_SCENARIOS = ("Offline", "MultiStream")


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoadGenConfig(_Cfg):
    model: str = Field(description="LoadGen model name (the mlperf.conf key)")
    scenario: Scenario
    compiledIn: bool = Field(description="the round's conf is LoadGen's own: user.conf + FromConfig")
    seeds: Seeds
    minDurationMs: int
    minQueryCount: int
    performanceSampleCount: int
    latencyPercentile: float
    offlineExpectedQps: float | None = None
    serverTargetQps: float | None = None
    serverLatencyNs: int | None = None
    singleStreamExpectedLatencyNs: int | None = None
    multiStreamExpectedLatencyNs: int | None = None
    multiStreamSamplesPerQuery: int | None = None
    # Keys that differ from the round's own values: what user.conf must carry in a compiled-in round.
    userConfKeys: tuple[str, ...] = ()


class HarnessConfig(_Cfg):
    benchmark: str
    suite: str
    scenario: Scenario
    configVer: str
    systemId: str
    backend: str
    precision: str
    inputDtype: str
    batchSize: int
    workers: int = Field(default=1, description="backend instances per device")
    devices: int = Field(default=1, description="GPUs the instances are spread over (1 on the CPU)")
    startFromDevice: bool = Field(
        default=False, description="keep the loaded samples in device memory where the backend can"
    )
    torchCompile: str = Field(default="off", description="pytorch backend: off, default or max-autotune")
    batchTimeoutUs: int = 0
    fast: bool
    synthetic: bool
    notSubmittable: tuple[str, ...] = Field(default=(), description="why the result cannot be submitted")
    latencyBoundNs: int | None = Field(default=None, description="bound the report checks (v1.0 MultiStream)")
    shortened: bool = Field(
        default=False, description="min duration below the round's: audit timing misses within noise are not judged"
    )
    userConfNotes: tuple[str, ...] = Field(default=(), description="comment lines for user.conf (the tuning)")
    loadgen: LoadGenConfig

    @property
    def submittable(self) -> bool:
        return not self.notSubmittable


@cache
def _tables() -> dict[str, Any]:
    text = resources.files("mlperf_harness").joinpath("suites/harness-configs.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def system_id(spec: MLPerfRunSpec) -> str:
    if not spec.uses_gpu:
        return "cpu"
    return f"{spec.system.gpuProduct}x{spec.system.gpuCount}"


def resolve_block(blocks: dict[str, Any], name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A system block with its ``extends`` chain merged in and ``scales`` applied."""
    if name in seen:
        raise ValueError(f"harness config: extends cycle {' -> '.join((*seen, name))}")
    block = dict(blocks.get(name, {}))
    parent = block.pop("extends", None)
    scales: dict[str, float] = block.pop("scales", {})
    merged = {**(resolve_block(blocks, parent, (*seen, name)) if parent else {}), **block}
    for key, factor in scales.items():
        if key in merged:
            merged[key] = merged[key] * factor
    return merged


def table_values(implementation: str, scenario: str, system: str, config_ver: str) -> dict[str, Any]:
    """The harness-config values of a benchmark's implementation (``benchmarks.implementation``)."""
    entry = _tables().get(implementation, {}).get(scenario, {})
    values = dict(entry.get("default", {}))
    values.update(resolve_block(entry.get("systems", {}), system))
    values.update(entry.get("configVer", {}).get(config_ver, {}))
    return values


def build_config(
    spec: MLPerfRunSpec, scenario: Scenario, tuned: LoadGenOverrides | None = None, notes: tuple[str, ...] = ()
) -> HarnessConfig:
    """``tuned``: values that replace the spec's loadgen overrides (the tuner's finding, or a probe's
    settings); ``notes``: how they were found, written into user.conf as comments."""
    suite = load_suite(spec.suite)
    rule = suite.rule(spec.benchmark)
    round_sc = suite.loadgen.scenarios[scenario]
    bench_lg = rule.loadgen
    system = system_id(spec)
    table = table_values(artifacts.implementation_of(spec), scenario, system, spec.configVer)
    over = spec.loadgen if tuned is None else spec.loadgen.model_copy(update=tuned.model_dump(exclude_none=True))
    reasons: list[str] = []
    changed: list[str] = []

    min_duration, min_queries = round_sc.minDurationMs, round_sc.minQueryCount
    if scenario == "Offline" and bench_lg.offlineMinQueryCount:
        min_queries = bench_lg.offlineMinQueryCount
    if spec.fast:
        reasons.append("fast")
        min_duration = FAST_MIN_DURATION_MS
        changed.append("min_duration")
        if scenario in FAST_MIN_QUERY_SCENARIOS:
            min_queries = 1
            changed.append("min_query_count")
    if over.minDurationMs is not None:
        if over.minDurationMs < round_sc.minDurationMs:
            reasons.append("min duration below the round's")
        min_duration = over.minDurationMs
        changed.append("min_duration")
    if over.minQueryCount is not None:
        if over.minQueryCount < min_queries and not spec.fast:
            reasons.append("min query count below the round's")
        min_queries = over.minQueryCount
        changed.append("min_query_count")
    perf_count = bench_lg.performanceSampleCount
    if over.performanceSampleCount is not None:
        if over.performanceSampleCount < perf_count:
            reasons.append("performance sample count below the round's")
        perf_count = over.performanceSampleCount
        changed.append("performance_sample_count_override")

    lg_values: dict[str, Any] = {}
    latency_bound: int | None = None
    if scenario == "Offline":
        lg_values["offlineExpectedQps"] = float(over.expectedQps or table.get("expectedQps", 1.0))
        changed.append("target_qps")
    elif scenario == "Server":
        lg_values["serverTargetQps"] = float(over.targetQps or table.get("targetQps", 1.0))
        bound_ms = bench_lg.serverLatencyMs or round_sc.latencyMs or 10.0
        lg_values["serverLatencyNs"] = int(bound_ms * 1e6)
        changed.append("target_qps")
    elif scenario == "SingleStream":
        ms = over.targetLatencyMs or table.get("targetLatencyMs", 10.0)
        lg_values["singleStreamExpectedLatencyNs"] = int(ms * 1e6)
        changed.append("target_latency")
    else:
        ms = over.targetLatencyMs or table.get("targetLatencyMs", 80.0)
        lg_values["multiStreamExpectedLatencyNs"] = int(ms * 1e6)
        spq = over.samplesPerQuery or round_sc.samplesPerQuery or table.get("samplesPerQuery", 8)
        if over.samplesPerQuery and round_sc.samplesPerQuery and over.samplesPerQuery != round_sc.samplesPerQuery:
            reasons.append("samples per query differs from the round's")
            changed.append("samples_per_query")
        lg_values["multiStreamSamplesPerQuery"] = int(spq)
        changed.append("target_latency")
        if not suite.loadgen.compiledIn:
            ms_bound = bench_lg.multiStreamLatencyMs or round_sc.latencyMs
            latency_bound = int(ms_bound * 1e6) if ms_bound else None

    if spec.synthetic:
        reasons.append("synthetic")
    if spec.backend == "null":
        reasons.append("null backend")

    loadgen = LoadGenConfig(
        model=spec.benchmark,
        scenario=scenario,
        compiledIn=suite.loadgen.compiledIn,
        seeds=suite.loadgen.seeds,
        minDurationMs=int(min_duration),
        minQueryCount=int(min_queries),
        performanceSampleCount=int(perf_count),
        latencyPercentile=round_sc.latencyPercentile,
        userConfKeys=tuple(dict.fromkeys(changed)),
        **lg_values,
    )
    return HarnessConfig(
        benchmark=spec.benchmark,
        suite=spec.suite,
        scenario=scenario,
        configVer=spec.configVer,
        systemId=system,
        backend=spec.backend,
        precision=artifacts.precision_of(spec),
        inputDtype=artifacts.input_dtype_of(spec),
        batchSize=artifacts.batch_size_of(spec, scenario),
        workers=spec.instancesPerDevice or int(table.get("workers", 1)),
        devices=spec.system.gpuCount if spec.uses_gpu else 1,
        startFromDevice=bool(table.get("startFromDevice", False)),
        torchCompile=artifacts.torch_compile_of(spec, scenario),
        batchTimeoutUs=int(table.get("batchTimeoutUs", 0)) if scenario == "Server" else 0,
        fast=spec.fast,
        synthetic=spec.synthetic,
        notSubmittable=tuple(dict.fromkeys(reasons)),
        latencyBoundNs=latency_bound,
        userConfNotes=notes,
        shortened=min_duration < round_sc.minDurationMs,
        loadgen=loadgen,
    )
