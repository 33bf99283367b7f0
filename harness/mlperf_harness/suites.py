"""MLPerf rounds as data: which benchmarks, scenarios, accuracy targets and audits each allows.

The tables live in ``suites/<name>.yaml``; this module only loads and queries them, so a rule
changes in one place and both the CRD's admission rules and the harness follow.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Scenario = Literal["Offline", "Server", "SingleStream", "MultiStream"]
Category = Literal["datacenter", "edge"]
ConfigVer = Literal["default", "high_accuracy"]

SUITE_NAMES: tuple[str, ...] = ("v1.0", "v6.0")
BENCHMARKS: tuple[str, ...] = ("resnet50", "ssd-resnet34", "bert", "dlrm", "rnnt", "3d-unet")
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


class BenchmarkRule(_Model):
    scenarios: dict[Category, list[Scenario]]
    accuracy: AccuracyRule
    audits: list[str]
    highAccuracyCategories: list[Category] = ["datacenter", "edge"]

    def allows_high_accuracy(self, category: Category) -> bool:
        return "high_accuracy" in self.accuracy.targets and category in self.highAccuracyCategories


class Suite(_Model):
    name: str
    description: str
    benchmarks: dict[str, BenchmarkRule]
    auditExemptScenarios: dict[str, list[Scenario]] = {}

    def audit_exempt_scenarios(self, test: str) -> list[Scenario]:
        return self.auditExemptScenarios.get(test, [])

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
