"""MLPerf rounds as data: which benchmarks, scenarios, accuracy targets and audits each allows.

The tables live in ``suites/<name>.yaml``; this module only loads and queries them, so a rule
changes in one place and both the CRD's admission rules and the harness follow.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field

Scenario = Literal["Offline", "Server", "SingleStream", "MultiStream"]
Category = Literal["datacenter", "edge"]
ConfigVer = Literal["default", "high_accuracy"]

SUITE_NAMES: tuple[str, ...] = ("v1.0", "v6.1")
CURRENT_ROUND = "v6.1"
BenchmarkName = Literal["resnet50", "ssd-resnet34", "bert", "dlrm", "rnnt", "3d-unet"]  # the v1.0 suite's six
BENCHMARKS: tuple[str, ...] = get_args(BenchmarkName)
SCENARIOS: tuple[str, ...] = ("Offline", "Server", "SingleStream", "MultiStream")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccuracyRule(_Model):
    metric: str
    fp32Reference: float
    unit: str = ""
    targets: dict[ConfigVer, float] = Field(description="fraction of the FP32 reference to reach")

    def threshold(self, config_ver: ConfigVer = "default") -> float:
        return self.fp32Reference * self.targets[config_ver]


class BenchmarkLoadGen(_Model):
    """Per-benchmark LoadGen values of a round (the mlperf.conf lines that name the model)."""

    datasetSize: int = Field(description="QSL total sample count (the whole validation set)")
    performanceSampleCount: int = Field(description="performance_sample_count_override of the round")
    serverLatencyMs: float | None = Field(default=None, description="Server target_latency bound")
    multiStreamLatencyMs: float | None = Field(default=None, description="MultiStream latency bound")
    multiStreamTargetQps: float | None = Field(default=None, description="v1.0 MultiStream query rate")
    offlineMinQueryCount: int | None = Field(default=None, description="Offline min samples when not the default")
    test01SamplingTarget: int = Field(description="TEST01 accuracy_log_sampling_target")


class ScenarioLoadGen(_Model):
    """Per-scenario LoadGen values of a round (the ``*.<scenario>.*`` lines)."""

    minDurationMs: int
    minQueryCount: int
    latencyPercentile: float
    samplesPerQuery: int | None = None
    latencyMs: float | None = None


class Seeds(_Model):
    qsl: int
    sampleIndex: int
    schedule: int


class SuiteLoadGen(_Model):
    """A round's LoadGen conf as data. ``compiledIn``: LoadGen already carries these values (its
    mlperf.conf is this round's), so the harness only writes user.conf and calls FromConfig;
    otherwise the harness sets every value on TestSettings itself."""

    compiledIn: bool
    seeds: Seeds
    test05Seeds: Seeds | None = None
    test01Seed: int
    scenarios: dict[Scenario, ScenarioLoadGen]


class BenchmarkRule(_Model):
    submissionName: str | None = Field(default=None, description="the round's name for it, when not ours")
    implementation: str | None = Field(
        default=None,
        description="the benchmarks registry entry this round's version runs as, when not the benchmark's name "
        "(v1.0's 3d-unet is BraTS 2019, the current round's KiTS19)",
    )
    scenarios: dict[Category, list[Scenario]]
    accuracy: AccuracyRule
    audits: list[str]
    highAccuracyCategories: list[Category] = ["datacenter", "edge"]
    loadgen: BenchmarkLoadGen
    pending: str | None = Field(
        default=None, description="why this round's version of the benchmark cannot run yet (a spec is refused)"
    )

    def allows_high_accuracy(self, category: Category) -> bool:
        return "high_accuracy" in self.accuracy.targets and category in self.highAccuracyCategories


class SubmissionRules(_Model):
    """What the round's submission checker wants of a tree."""

    layout: Literal["v1.0", "v6.1"] = Field(description="directory layout of the round's tree")
    systemFields: list[str] = Field(description="the system description's fields, exactly these")
    meaningfulFields: list[str] = Field(default=[], description="system fields that may not be empty or 0")
    documents: list[str] = Field(default=[], description="files the tree's documentation/ must hold")
    truncateKeepBytes: int = Field(description="bytes of a truncated accuracy log kept at each end")


class Suite(_Model):
    name: str
    description: str
    benchmarks: dict[str, BenchmarkRule]
    submission: SubmissionRules
    auditExemptScenarios: dict[str, list[Scenario]] = {}
    loadgen: SuiteLoadGen
    # Audit tests of this round whose performance verdict compares against the submission run
    # (TEST04 of v6.1) rather than against a paired run (TEST04-A/B of v1.0).
    auditThresholds: dict[str, float] = {}

    def audit_exempt_scenarios(self, test: str) -> list[Scenario]:
        return self.auditExemptScenarios.get(test, [])

    def submission_benchmark(self, benchmark: str, config_ver: str = "default") -> str:
        """The benchmark's directory in this round's tree: its name there, with the accuracy
        level where the round has two (bert-99.9, dlrm-99, resnet)."""
        rule = self.rule(benchmark)
        name = rule.submissionName or benchmark
        if "high_accuracy" not in rule.accuracy.targets:
            return name
        return f"{name}-{'99.9' if config_ver == 'high_accuracy' else '99'}"

    def implementation(self, benchmark: str) -> str:
        """What the benchmark is in this round (inputs, model, dataset, metric): a registry entry
        of ``benchmarks``, which the artifact keys are labelled by."""
        return self.rule(benchmark).implementation or benchmark

    def rule(self, benchmark: str) -> BenchmarkRule:
        try:
            return self.benchmarks[benchmark]
        except KeyError:
            raise KeyError(
                f"benchmark {benchmark!r} is not part of suite {self.name} (it has: {', '.join(self.benchmarks)})"
            ) from None


@cache
def load_suite(name: str) -> Suite:
    if name not in SUITE_NAMES:
        raise KeyError(f"unknown suite {name!r}; known suites: {', '.join(SUITE_NAMES)}")
    text = resources.files("mlperf_harness").joinpath(f"suites/{name}.yaml").read_text()
    return Suite.model_validate(yaml.safe_load(text))


def all_suites() -> list[Suite]:
    return [load_suite(n) for n in SUITE_NAMES]
