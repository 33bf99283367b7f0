"""The run's steps, defined once: the operator turns each into a Job, the local runner into a call.

A step is a harness verb with its arguments, the steps it needs, the phase it belongs to, whether
it needs a GPU, and the artifact it produces (when it produces a cacheable one). ``plan`` is a
pure function of the spec, so the operator, after any restart, and the local runner always derive
the same graph and the same names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from . import artifacts
from .artifacts import Artifact
from .spec import MLPerfRunSpec
from .suites import load_suite


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    DOWNLOADING = "Downloading"
    PREPROCESSING = "Preprocessing"
    BUILDING_ENGINES = "BuildingEngines"
    RUNNING = "Running"
    AUDITING = "Auditing"
    REPORTING = "Reporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


MODE_SLUG = {"PerformanceOnly": "performance", "AccuracyOnly": "accuracy"}
# TEST01 checks the performance run's logged outputs against the accuracy run's.
AUDITS_NEEDING_ACCURACY = {"TEST01"}


@dataclass(frozen=True)
class Step:
    name: str
    verb: str
    args: tuple[str, ...]
    needs: tuple[str, ...]
    phase: Phase
    gpu: bool = False
    artifact: Artifact | None = None

    @property
    def command(self) -> list[str]:
        """The harness command line, without the options every verb shares (spec, workdir, run)."""
        return ["mlperf", self.verb, *self.args]


def _slug(text: str) -> str:
    return text.lower().replace("_", "-")


def plan(spec: MLPerfRunSpec, backend_version: str) -> list[Step]:
    """Every step of the run, in an order that respects ``needs`` (a topological order)."""
    steps: list[Step] = [
        Step("download-data", "download-data", (), (), Phase.DOWNLOADING, artifact=artifacts.dataset(spec)),
        Step("download-model", "download-model", (), (), Phase.DOWNLOADING, artifact=artifacts.model(spec)),
        Step(
            "preprocess",
            "preprocess",
            (),
            ("download-data",),
            Phase.PREPROCESSING,
            artifact=artifacts.preprocessed(spec),
        ),
    ]

    # One engine per distinct (precision, batch size) among the scenarios; the null backend has none.
    engine_step: dict[str, str] = {}
    if spec.backend != "null":
        for scenario in spec.scenarios:
            engine = artifacts.engine(spec, scenario, backend_version)
            name = f"build-engine-{artifacts.precision_of(spec)}-b{artifacts.batch_size_of(spec, scenario)}"
            if name not in {s.name for s in steps}:
                steps.append(
                    Step(
                        name,
                        "build-engine",
                        ("--scenario", scenario),
                        ("download-model",),
                        Phase.BUILDING_ENGINES,
                        gpu=spec.uses_gpu,
                        artifact=engine,
                    )
                )
            engine_step[scenario] = name

    for scenario in spec.scenarios:
        needs = ("preprocess", engine_step.get(scenario, "download-model"))
        for mode in spec.testModes:
            steps.append(
                Step(
                    f"run-{_slug(scenario)}-{MODE_SLUG[mode]}",
                    "run-harness",
                    ("--scenario", scenario, "--test-mode", mode),
                    needs,
                    Phase.RUNNING,
                    gpu=spec.uses_gpu,
                )
            )

    pairs = list(audits_to_run(spec))
    for test, audited in pairs:
        audit_needs: tuple[str, ...] = (f"run-{_slug(audited)}-performance",)
        if test in AUDITS_NEEDING_ACCURACY:
            audit_needs += (f"run-{_slug(audited)}-accuracy",)
        if test == "TEST04-B" and ("TEST04-A", audited) in pairs:
            audit_needs += (f"audit-test04-a-{_slug(audited)}",)  # one verb runs both halves
        steps.append(
            Step(
                f"audit-{_slug(test)}-{_slug(audited)}",
                "audit",
                ("--test", test, "--scenario", audited),
                audit_needs,
                Phase.AUDITING,
                gpu=spec.uses_gpu,
            )
        )

    steps.append(Step("report", "report", (), tuple(s.name for s in steps if s.phase in _REPORTED), Phase.REPORTING))
    return steps


_REPORTED = (Phase.RUNNING, Phase.AUDITING)


def audits_to_run(spec: MLPerfRunSpec) -> Iterable[tuple[str, str]]:
    """(test, scenario) pairs: audits need a performance run, TEST01 an accuracy run as well."""
    if "PerformanceOnly" not in spec.testModes:
        return
    suite = load_suite(spec.suite)
    for test in spec.effective_audits:
        if test in AUDITS_NEEDING_ACCURACY and "AccuracyOnly" not in spec.testModes:
            continue
        for scenario in spec.scenarios:
            if scenario not in suite.audit_exempt_scenarios(test):
                yield test, scenario


def ready(steps: list[Step], done: set[str]) -> list[Step]:
    """Steps not done whose needs are all done."""
    return [s for s in steps if s.name not in done and all(n in done for n in s.needs)]
