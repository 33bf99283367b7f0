"""MLPerfCampaign: a run template times a matrix, one MLPerfRun per point (the models and a pure decide).

The campaign is the one object a Git repository holds. Each point of its matrix becomes a run of a
deterministic name, owned by the campaign and labelled as its child; the operator never writes the
campaign's spec. Like ``reconcile.decide``, ``decide`` is level-triggered: what it knows is the
campaign's spec, its runs as the API server has them, and the time; its only memory is the runs
themselves (an attempt is a run) and the status it writes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mlperf_harness.errors import HarnessError
from mlperf_harness.pipeline import Phase
from mlperf_harness.spec import MLPerfRunSpec, SpecModel, System
from mlperf_harness.suites import BenchmarkName, ConfigVer, Scenario, load_suite
from pydantic import Field, ValidationError

from .api import CAMPAIGN_KIND, GROUP, KIND, VERSION
from .jobs import PART_OF, dns_name, run_key, run_label
from .observe import JobView
from .status import Conditioned, StatusModel

# The fields a point sets; the template holds every other field of an MLPerfRun's spec.
MATRIX_FIELDS = ("benchmark", "scenarios", "configVer", "system")
CAMPAIGN_LABEL = "mlperf-operator.io/campaign"
POINT_ANNOTATION = "mlperf-operator.io/point"
ATTEMPT_ANNOTATION = "mlperf-operator.io/attempt"
RERUN_ANNOTATION = "mlperf-operator.io/rerun"


class Matrix(SpecModel):
    benchmarks: list[BenchmarkName] = Field(
        min_length=1,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Benchmarks to run: resnet50, ssd-resnet34, bert, dlrm, rnnt, 3d-unet.",
    )
    scenarios: list[Scenario] = Field(
        min_length=1,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Scenarios, one run each: Offline, Server, SingleStream, MultiStream. A point runs in "
        "the template's category where the round allows the scenario there, else in the category that "
        "allows it; a point the round allows nowhere is listed as Invalid, not run.",
    )
    configVers: list[ConfigVer] = Field(
        default=["default"],
        min_length=1,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Accuracy levels: default (99 %) and/or high_accuracy (99.9 %, where the round has it).",
    )
    systems: list[System] = Field(
        default_factory=lambda: [System()],
        min_length=1,
        max_length=16,
        description="GPU products and counts; each point runs on one of them.",
    )


class MLPerfCampaignSpec(SpecModel):
    """A submission campaign: the template's run for every point of the matrix."""

    template: dict[str, Any] = Field(
        description="An MLPerfRun spec without the fields the matrix sets (benchmark, scenarios, configVer, "
        "system): suite, category, storage, backend, loadgen and the rest. Give storage as an existingClaim "
        "that every point shares (its cache then serves every point). Edits apply to points created later.",
    )
    matrix: Matrix = Field(description="The points: benchmarks x scenarios x configVers x systems.")
    concurrency: int = Field(
        default=4, ge=1, le=1000, description="Runs of the campaign in progress at once; the other points wait."
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Times a point whose run Failed is run again (a new run named <point>-r<n>) before the "
        "point counts as Failed. A step's own retries (template.retries) come first.",
    )
    retryBackoffSeconds: int = Field(
        default=60, ge=0, le=86400, description="Wait before a point's next attempt; doubled for every attempt."
    )
    pruneFinished: bool = Field(
        default=False,
        description="When a point leaves the matrix, delete its run even if it finished. Unset, only an "
        "unfinished run is deleted, and finished results stay with the campaign.",
    )
    reruns: dict[str, str] = Field(
        default_factory=dict,
        description="Run points again on demand: a point's name (as in status.points) and any value, e.g. a "
        "date. A point whose latest run finished and was not made for that value gets a new run; setting "
        "the same value again does nothing, so the field can stay in Git.",
    )


PointState = Literal[
    "Waiting",
    "Invalid",
    "Retrying",
    "Pending",
    "Queued",
    "Downloading",
    "Preprocessing",
    "BuildingEngines",
    "Running",
    "Auditing",
    "Reporting",
    "Succeeded",
    "Failed",
]


class PointStatus(StatusModel):
    name: str = Field(description="The point's name: its run's, without the attempt suffix.")
    run: str = Field(default="", description="The point's current run (empty until it is created).")
    benchmark: str = Field(description="The point's benchmark.")
    scenario: str = Field(description="The point's scenario.")
    configVer: str = Field(description="The point's accuracy level.")
    category: str = Field(default="", description="The point's category: datacenter or edge.")
    system: str = Field(description="The point's GPUs, as <gpuProduct>x<gpuCount>.")
    phase: PointState = Field(
        default="Waiting",
        description="Waiting (for a free place of concurrency), Invalid (the round does not allow it), "
        "Retrying (after a failed attempt), or its run's phase.",
    )
    result: str = Field(default="", description="The run's verdict: PASS, FAIL or INVALID.")
    samplesPerSecond: float | None = Field(default=None, description="The run's headline performance.")
    accuracy: float | None = Field(default=None, description="The accuracy run's metric, where it ran.")
    audits: str = Field(default="", description="Compliance tests passed of those run, as passed/run.")
    attempts: int = Field(default=0, description="Runs made for the point so far.")
    message: str = Field(default="", description="Why the point is Invalid or Failed.")


class SubmissionStatus(StatusModel):
    state: Literal["Waiting", "Unavailable", "Pending", "Running", "Succeeded", "Failed"] = Field(
        default="Waiting",
        description="Waiting (for every point to finish), Unavailable (no shared claim, or no point "
        "succeeded), or the state of the Job that assembles and checks the tree.",
    )
    job: str = Field(default="", description="The Job that assembles the submission.")
    runs: int = Field(default=0, description="Runs (the points that succeeded) in the submission.")
    tarball: str = Field(default="", description="The submission's .tar.gz, relative to the claim's root.")
    passed: bool | None = Field(default=None, description="The round's checks found no problem in the tree.")
    message: str = Field(default="", description="The check's findings: the problem count and the first ones.")


class MLPerfCampaignStatus(Conditioned):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = Field(
        default="Pending",
        description="Running while a point waits or runs; Succeeded when every valid point's run "
        "Succeeded; Failed when every point finished and one of them Failed or is Invalid.",
    )
    points: list[PointStatus] = Field(default_factory=list, description="Every point of the matrix.")
    pointCount: int = Field(default=0, description="Points of the matrix.")
    succeeded: int = Field(default=0, description="Points whose run Succeeded.")
    failed: int = Field(default=0, description="Points that Failed after their retries, or are Invalid.")
    running: int = Field(default=0, description="Points with a run in progress.")
    submission: SubmissionStatus = Field(
        default_factory=SubmissionStatus, description="The campaign's one submission tree, once every point finished."
    )
    observedGeneration: int = Field(default=0, description="The spec generation this status reflects.")
    message: str = Field(default="", description="Latest human-readable message.")


@dataclass(frozen=True)
class Point:
    name: str
    benchmark: str
    scenario: str
    configVer: str
    system: System
    spec: dict[str, Any] = field(compare=False, hash=False)  # the run's spec
    error: str = ""  # why the round refuses it
    rerun: str = ""  # the rerun asked for in the campaign's spec.reruns

    def row(self, **status: Any) -> PointStatus:
        """The point's line of the campaign's status."""
        system = f"{self.system.gpuProduct}x{self.system.gpuCount}"
        coords = {"benchmark": self.benchmark, "scenario": self.scenario, "configVer": self.configVer}
        return PointStatus(name=self.name, category=self.spec["category"], system=system, **coords, **status)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _category(template: dict[str, Any], benchmark: str, scenario: str) -> str:
    """The template's category where the round allows the scenario there, else the one that does (resnet50's
    Server is datacenter, its SingleStream edge): one matrix names a system's whole submission."""
    fields = MLPerfRunSpec.model_fields
    wanted = template.get("category", fields["category"].default)
    try:
        allowed = load_suite(template.get("suite", fields["suite"].default)).rule(benchmark).scenarios
    except (HarnessError, KeyError, ValueError):
        return str(wanted)  # the point's validation says what is wrong
    fits = [c for c in (wanted, *sorted(allowed)) if scenario in allowed.get(c, [])]
    return str(fits[0]) if fits else str(wanted)


def points(campaign: str, spec: MLPerfCampaignSpec) -> list[Point]:
    """The matrix's points in order, each with its run's spec; a point's name depends on its own
    coordinates only, so that editing the matrix renames nothing."""
    out = []
    for bench in spec.matrix.benchmarks:
        for system in spec.matrix.systems:
            for config_ver in spec.matrix.configVers:
                for scenario in spec.matrix.scenarios:
                    parts = [campaign, bench, scenario, _slug(system.gpuProduct) + f"x{system.gpuCount}"]
                    if config_ver != "default":
                        parts.append("ha")
                    run_spec = {
                        **{k: v for k, v in spec.template.items() if k not in MATRIX_FIELDS},
                        "benchmark": bench,
                        "category": _category(spec.template, bench, scenario),
                        "scenarios": [scenario],
                        "configVer": config_ver,
                        "system": system.model_dump(mode="json"),
                    }
                    error = ""
                    try:
                        MLPerfRunSpec.model_validate(run_spec)
                    except ValidationError as exc:
                        error = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    name = dns_name(*parts, limit=200)  # room for an attempt suffix within 253
                    rerun = spec.reruns.get(name, "")
                    out.append(Point(name, bench, scenario, config_ver, system, run_spec, error, rerun))
    return out


def attempt_name(point: str, attempt: int) -> str:
    return point if attempt == 0 else f"{point}-r{attempt}"


def campaign_labels(campaign: str) -> dict[str, str]:
    """The labels of the campaign's children: its runs and its submission Job."""
    return {
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": PART_OF,
        CAMPAIGN_LABEL: run_label(campaign),
    }


def build_run(campaign: dict[str, Any], point: Point, attempt: int) -> dict[str, Any]:
    """A point's run: owned by the campaign (Argo CD and Flux show it as the campaign's child, and the
    garbage collector removes it with the campaign), none of the campaign's own labels or annotations
    copied (a GitOps tool's tracking label on a child would make it prune the child as extraneous)."""
    meta = campaign["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": attempt_name(point.name, attempt),
            "namespace": meta["namespace"],
            "labels": campaign_labels(meta["name"]),
            "annotations": {
                POINT_ANNOTATION: point.name,
                ATTEMPT_ANNOTATION: str(attempt),
                RERUN_ANNOTATION: point.rerun,
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": CAMPAIGN_KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": point.spec,
    }


def owned_by(run: dict[str, Any], campaign: dict[str, Any]) -> bool:
    uid = campaign["metadata"]["uid"]
    return any(o.get("uid") == uid for o in run["metadata"].get("ownerReferences") or [])


@dataclass(frozen=True)
class SubmissionJob:
    name: str
    runs: list[str]  # the runs' directories on the claim
    out: str  # where the trees and the tarball go, relative to the claim's root
    spec: dict[str, Any]  # a point's run spec: the Job's image, account and placement


@dataclass
class CampaignDecision:
    create: list[tuple[Point, int]] = field(default_factory=list)  # (point, attempt)
    delete: list[str] = field(default_factory=list)  # run names
    submit: SubmissionJob | None = None  # the submission Job to create
    status: MLPerfCampaignStatus = field(default_factory=MLPerfCampaignStatus)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def _parse(t: str | None) -> datetime | None:
    return datetime.fromisoformat(t.replace("Z", "+00:00")) if t else None


def _attempt(run: dict[str, Any]) -> int:
    return int((run["metadata"].get("annotations") or {}).get(ATTEMPT_ANNOTATION, "0"))


def _point_of(run: dict[str, Any]) -> str:
    return str((run["metadata"].get("annotations") or {}).get(POINT_ANNOTATION, ""))


def _summary(point: Point, run: dict[str, Any], attempts: int) -> PointStatus:
    st = run.get("status") or {}
    results = st.get("results") or []
    audits = st.get("audits") or []
    return point.row(
        run=run["metadata"]["name"],
        phase=st.get("phase") or "Pending",
        result=st.get("result", ""),
        samplesPerSecond=st.get("samplesPerSecond"),
        accuracy=next((r.get("accuracy") for r in results if r.get("testMode") == "AccuracyOnly"), None),
        audits=f"{sum(1 for a in audits if a.get('passed'))}/{len(audits)}" if audits else "",
        attempts=attempts,
        message=st.get("message", "") if st.get("phase") == Phase.FAILED else "",
    )


def decide(
    campaign: dict[str, Any],
    spec: MLPerfCampaignSpec,
    runs: list[dict[str, Any]],
    previous: MLPerfCampaignStatus,
    jobs: dict[str, JobView] | None = None,
    at: datetime | None = None,
) -> CampaignDecision:
    """What to create and delete, and the status, from the campaign, its runs and its submission Jobs."""
    name, generation = campaign["metadata"]["name"], campaign["metadata"].get("generation", 1)
    at = at or datetime.now(UTC)
    d = CampaignDecision()
    wanted = points(name, spec)
    by_point: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_point.setdefault(_point_of(run), []).append(run)
    for attempts in by_point.values():
        attempts.sort(key=_attempt)

    # Runs of points that left the matrix: an unfinished one is stopped, a finished one kept unless pruned.
    names = {p.name for p in wanted}
    for key, runs_of_key in sorted(by_point.items()):
        if key in names:
            continue
        for run in runs_of_key:
            if spec.pruneFinished or (run.get("status") or {}).get("phase") not in (Phase.SUCCEEDED, Phase.FAILED):
                d.delete.append(run["metadata"]["name"])

    active = sum(
        1
        for p in wanted
        for run in by_point.get(p.name, [])[-1:]
        if (run.get("status") or {}).get("phase") not in (Phase.SUCCEEDED, Phase.FAILED)
    )
    rows: list[PointStatus] = []
    succeeded: list[dict[str, Any]] = []
    for point in wanted:
        if point.error:
            rows.append(point.row(phase="Invalid", message=point.error))
            continue
        attempts = by_point.get(point.name, [])
        if not attempts:
            if active < spec.concurrency:
                d.create.append((point, 0))
                active += 1
                rows.append(point.row(run=attempt_name(point.name, 0), phase="Pending", attempts=1))
            else:
                rows.append(point.row())
            continue
        last, n = attempts[-1], len(attempts)
        row = _summary(point, last, n)
        made_for = (last["metadata"].get("annotations") or {}).get(RERUN_ANNOTATION, "")
        # Another attempt: asked for (now: no backoff, no limit), or a retry of a failure once its backoff is over.
        event: tuple[str, str] | None = None
        hold: PointState | None = None  # the point's phase while the attempt waits
        if row.phase in (Phase.SUCCEEDED, Phase.FAILED) and point.rerun and made_for != point.rerun:
            event, hold = ("Rerun", f"point {point.name}: run again as asked ({point.rerun})"), "Waiting"
        elif row.phase == Phase.FAILED and n <= spec.retries:
            ended = _parse((last.get("status") or {}).get("completionTime")) or at
            if at >= ended + timedelta(seconds=spec.retryBackoffSeconds * 2 ** (n - 1)):
                event = ("Retrying", f"point {point.name}: run {row.run} failed; attempt {n + 1}")
            hold = "Retrying"  # until then, the operator's periodic resync comes back for it
        if hold:
            if event and active < spec.concurrency:
                d.create.append((point, n))
                d.events.append(("Normal", *event))
                active += 1
                row = row.model_copy(update={"run": attempt_name(point.name, n), "phase": "Pending", "result": ""})
                row.attempts += 1
            else:
                row.phase = hold
        elif row.phase == Phase.SUCCEEDED:
            succeeded.append(last)
        rows.append(row)

    points_done = all(r.phase in (Phase.SUCCEEDED, Phase.FAILED, "Invalid") for r in rows)
    submission, d.submit = _submission(campaign, spec, succeeded, points_done, jobs or {})
    d.status = _status(previous, rows, submission, generation)
    if submission.state != previous.submission.state and submission.state in ("Succeeded", "Failed"):
        kind = "Normal" if submission.passed else "Warning"
        d.events.append((kind, "SubmissionChecked", f"{submission.tarball}: {submission.message}"))
    if d.status.phase != previous.phase and d.status.phase in ("Succeeded", "Failed"):
        kind = "Normal" if d.status.phase == "Succeeded" else "Warning"
        d.events.append((kind, d.status.phase, d.status.message))
    return d


def _submission(
    campaign: dict[str, Any],
    spec: MLPerfCampaignSpec,
    succeeded: list[dict[str, Any]],
    points_done: bool,
    jobs: dict[str, JobView],
) -> tuple[SubmissionStatus, SubmissionJob | None]:
    """The submission's state, and the Job to create for it when it is due: one per set of runs, so a
    campaign that grows gets a new tree and the old one stays."""
    if not (spec.template.get("storage") or {}).get("existingClaim"):
        why = "needs template.storage.existingClaim: the one claim every point writes to"
        return SubmissionStatus(state="Unavailable", message=why), None
    if not points_done:
        return SubmissionStatus(message="waiting for every point to finish"), None
    if not succeeded:
        return SubmissionStatus(state="Unavailable", message="no point succeeded: nothing to submit"), None
    keys = sorted(run_key(r) for r in succeeded)
    digest = hashlib.sha256(",".join(keys).encode()).hexdigest()[:8]
    job_name = dns_name(campaign["metadata"]["name"], "submission", digest)
    out = f"campaigns/{run_key(campaign)}/{digest}"
    st = SubmissionStatus(state="Pending", job=job_name, runs=len(keys), tarball=f"{out}/submission.tar.gz")
    job = jobs.get(job_name)
    if job is None:
        return st, SubmissionJob(job_name, keys, out, succeeded[0]["spec"])
    if job.state in ("Running", "Succeeded", "Failed"):
        st.state = job.state
    if job.outcome is not None:
        st.passed, st.message = job.outcome.ok, job.outcome.message
    elif job.message:
        st.message = job.message
    return st, None


def _status(
    previous: MLPerfCampaignStatus, rows: list[PointStatus], submission: SubmissionStatus, generation: int
) -> MLPerfCampaignStatus:
    st = previous.model_copy(deep=True)
    st.points, st.submission = rows, submission
    st.pointCount = len(rows)
    st.succeeded = sum(r.phase == Phase.SUCCEEDED for r in rows)
    st.failed = sum(r.phase in (Phase.FAILED, "Invalid") for r in rows)
    st.running = sum(r.phase not in (Phase.SUCCEEDED, Phase.FAILED, "Invalid", "Waiting") for r in rows)
    st.observedGeneration = generation
    done = st.succeeded + st.failed == len(rows) and submission.state in ("Unavailable", "Succeeded", "Failed")
    if not done:
        st.phase = "Running" if any(r.run for r in rows) else "Pending"
        st.message = f"{st.succeeded} of {len(rows)} points succeeded, {st.running} in progress"
        if submission.state in ("Pending", "Running"):
            st.message += "; assembling the submission"
    elif st.failed:
        st.phase = "Failed"
        bad = ", ".join(r.name for r in rows if r.phase in (Phase.FAILED, "Invalid"))
        st.message = f"{st.failed} of {len(rows)} points failed or are invalid: {bad}"
    else:
        st.phase = "Succeeded"
        st.message = f"all {len(rows)} points succeeded; submission: {submission.state}"
    st.set_condition("Succeeded", st.phase == "Succeeded", st.phase, st.message, generation)
    return st
