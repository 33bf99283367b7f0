"""The campaign's pure decide: points, concurrency, matrix edits, removals, retries and status."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from mlperf_harness.results import StepOutcome
from mlperf_operator.campaign import (
    MLPerfCampaignSpec,
    MLPerfCampaignStatus,
    build_run,
    decide,
    owned_by,
    points,
)
from mlperf_operator.observe import JobView

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TEMPLATE = {"suite": "v1.0", "backend": "null", "storage": {"existingClaim": "mlperf-cache"}, "kueue": {}}
CAMPAIGN = {"metadata": {"name": "c1", "namespace": "ns", "uid": "u-1", "labels": {"argocd.argoproj.io/x": "y"}}}


def gen(generation: int) -> dict[str, Any]:
    return {"metadata": {**CAMPAIGN["metadata"], "generation": generation}}


def spec(**over: Any) -> MLPerfCampaignSpec:
    base: dict[str, Any] = {
        "template": TEMPLATE,
        "matrix": {
            "benchmarks": ["resnet50"],
            "scenarios": ["Offline", "Server", "SingleStream"],
            "systems": [{"gpuProduct": "NVIDIA-H200"}, {"gpuProduct": "NVIDIA-A100-SXM4-80GB"}],
        },
        "concurrency": 2,
    }
    return MLPerfCampaignSpec.model_validate({**base, **over})


def run(point: Any, attempt: int = 0, phase: str | None = None, ended: datetime | None = None) -> dict[str, Any]:
    obj = build_run(CAMPAIGN, point, attempt)
    obj["metadata"]["uid"] = f"uid-{obj['metadata']['name']}"
    if phase:
        obj["status"] = {"phase": phase, "result": "PASS" if phase == "Succeeded" else "", "samplesPerSecond": 10.0}
        if ended:
            obj["status"]["completionTime"] = ended.strftime("%Y-%m-%dT%H:%M:%SZ")
    return obj


def test_points_are_the_matrix_with_stable_dns_names() -> None:
    got = points("c1", spec())
    assert len(got) == 6
    assert [p.name for p in got[:3]] == [
        "c1-resnet50-offline-nvidia-h200x1",
        "c1-resnet50-server-nvidia-h200x1",
        "c1-resnet50-singlestream-nvidia-h200x1",
    ]
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", p.name) for p in got)
    system = got[0].system.model_dump(mode="json")
    assert got[0].spec == {
        **TEMPLATE,
        **{"benchmark": "resnet50", "category": "datacenter", "scenarios": ["Offline"], "configVer": "default"},
        "system": system,
    }
    # The template's category where the round allows the scenario there, else the one that does.
    assert [p.spec["category"] for p in got[:3]] == ["datacenter", "datacenter", "edge"]
    # A point's name depends on its own coordinates: adding a scenario renames nothing.
    wider = spec(
        matrix={**spec().matrix.model_dump(), "scenarios": ["Offline", "Server", "SingleStream", "MultiStream"]}
    )
    assert {p.name for p in got} < {p.name for p in points("c1", wider)}


def test_a_point_the_round_refuses_is_invalid_not_run() -> None:
    s = spec(template={**TEMPLATE, "suite": "v6.1", "category": "edge"})  # v6.1: resnet50 is edge only, no Server
    d = decide(gen(1), s, [], MLPerfCampaignStatus(), at=T0)
    server = [p for p in d.status.points if p.scenario == "Server"]
    assert {p.phase for p in server} == {"Invalid"} and "Server" in server[0].message
    assert all(point.scenario != "Server" for point, _ in d.create)


def test_concurrency_bounds_the_runs_in_progress() -> None:
    s = spec()
    first = decide(gen(1), s, [], MLPerfCampaignStatus(), at=T0)
    assert [(p.name, a) for p, a in first.create] == [(p.name, 0) for p in points("c1", s)[:2]]
    assert [p.phase for p in first.status.points] == ["Pending", "Pending", "Waiting", "Waiting", "Waiting", "Waiting"]
    ps = points("c1", s)
    busy = [run(ps[0], phase="Running"), run(ps[1], phase="Preprocessing")]
    assert decide(gen(1), s, busy, first.status, at=T0).create == []
    one_done = [run(ps[0], phase="Succeeded"), run(ps[1], phase="Running")]
    d = decide(gen(1), s, one_done, first.status, at=T0)
    assert [p.name for p, _ in d.create] == [ps[2].name]
    assert (d.status.succeeded, d.status.running, d.status.phase) == (1, 2, "Running")


def test_editing_the_matrix_adds_only_the_new_points_and_stops_only_unfinished_removed_ones() -> None:
    s = spec(concurrency=10)
    ps = points("c1", s)
    runs = [run(p, phase="Succeeded") for p in ps]
    wider = spec(
        concurrency=10,
        matrix={**s.matrix.model_dump(), "scenarios": ["Offline", "Server", "SingleStream", "MultiStream"]},
    )
    d = decide(gen(2), wider, runs, MLPerfCampaignStatus(), at=T0)
    assert {p.scenario for p, _ in d.create} == {"MultiStream"} and len(d.create) == 2 and d.delete == []

    narrower = spec(concurrency=10, matrix={**s.matrix.model_dump(), "scenarios": ["Offline"]})
    runs[1]["status"]["phase"] = "Running"  # Server on the H200: unfinished, stopped
    d = decide(gen(3), narrower, runs, MLPerfCampaignStatus(), at=T0)
    assert d.delete == [ps[1].name] and d.create == [] and d.status.pointCount == 2
    pruned = spec(concurrency=10, matrix=narrower.matrix.model_dump(), pruneFinished=True)
    assert len(decide(gen(3), pruned, runs, MLPerfCampaignStatus(), at=T0).delete) == 4


def test_a_failed_point_is_retried_after_its_backoff_then_fails() -> None:
    s = spec(matrix={"benchmarks": ["resnet50"], "scenarios": ["Offline"]}, retries=1, retryBackoffSeconds=60)
    [p] = points("c1", s)
    failed = [run(p, phase="Failed", ended=T0)]
    waiting = decide(gen(1), s, failed, MLPerfCampaignStatus(), at=T0 + timedelta(seconds=30))
    assert waiting.create == [] and waiting.status.points[0].phase == "Retrying"
    due = decide(gen(1), s, failed, MLPerfCampaignStatus(), at=T0 + timedelta(seconds=61))
    assert due.create == [(p, 1)] and due.status.points[0].run == "c1-resnet50-offline-nvidia-h200x1-r1"
    assert build_run(CAMPAIGN, p, 1)["metadata"]["name"] == due.status.points[0].run
    both = [*failed, run(p, 1, phase="Failed", ended=T0 + timedelta(seconds=90))]
    final = decide(gen(1), s, both, MLPerfCampaignStatus(), at=T0 + timedelta(hours=1))
    assert final.create == [] and final.status.phase == "Failed" and final.status.points[0].attempts == 2
    assert any(reason == "Failed" for _, reason, _ in final.events)


def test_all_points_succeeded_then_one_job_assembles_and_checks_the_submission() -> None:
    s = spec(concurrency=6)
    runs = [run(p, phase="Succeeded") for p in points("c1", s)]
    runs[0]["status"]["results"] = [{"testMode": "AccuracyOnly", "accuracy": 76.2}]
    runs[0]["status"]["audits"] = [{"passed": True}, {"passed": False}]
    d = decide(gen(1), s, runs, MLPerfCampaignStatus(), at=T0)
    assert (d.status.phase, d.status.succeeded, d.status.pointCount) == ("Running", 6, 6)
    assert "assembling the submission" in d.status.message
    row = d.status.points[0]
    assert (row.result, row.samplesPerSecond, row.accuracy, row.audits) == ("PASS", 10.0, 76.2, "1/2")
    assert d.submit is not None and len(d.submit.runs) == 6 and d.submit.spec == runs[0]["spec"]
    assert d.submit.runs == sorted(f"{r['metadata']['name']}-{r['metadata']['uid'][:8]}" for r in runs)
    assert d.status.submission.tarball == f"{d.submit.out}/submission.tar.gz" and d.submit.out.startswith(
        "campaigns/c1-"
    )

    again = decide(gen(1), s, runs, d.status, {d.submit.name: JobView(d.submit.name, "Running")}, at=T0)
    assert again.submit is None and again.status.submission.state == "Running" and again.events == []

    checked = StepOutcome(step="submission", ok=False, message="6 run(s) in 1 tree(s), 2 problem(s); x; y")
    done = {d.submit.name: JobView(d.submit.name, "Succeeded", outcome=checked)}
    final = decide(gen(1), s, runs, again.status, done, at=T0)
    assert (final.status.phase, final.status.submission.state, final.status.submission.passed) == (
        "Succeeded",
        "Succeeded",
        False,
    )
    assert [c.type for c in final.status.conditions if c.status == "True"] == ["Succeeded"]
    assert [e[1] for e in final.events] == ["SubmissionChecked", "Succeeded"]
    assert "2 problem(s)" in final.events[0][2]
    quiet = decide(gen(1), s, runs, final.status, done, at=T0)
    assert quiet.events == [] and quiet.status == final.status  # level-triggered: nothing new, nothing written


def test_without_a_shared_claim_there_is_no_submission_but_the_campaign_ends() -> None:
    s = spec(concurrency=6, template={**TEMPLATE, "storage": {"create": {}}})
    runs = [run(p, phase="Succeeded") for p in points("c1", s)]
    d = decide(gen(1), s, runs, MLPerfCampaignStatus(), at=T0)
    assert d.submit is None and d.status.phase == "Succeeded"
    assert d.status.submission.state == "Unavailable" and "existingClaim" in d.status.submission.message


def test_a_points_run_is_owned_by_the_campaign_and_carries_none_of_its_labels() -> None:
    [p] = points("c1", spec(matrix={"benchmarks": ["resnet50"], "scenarios": ["Offline"]}))
    obj = build_run(CAMPAIGN, p, 0)
    assert owned_by(obj, CAMPAIGN) and obj["metadata"]["ownerReferences"][0]["controller"] is True
    assert "argocd.argoproj.io/x" not in obj["metadata"]["labels"]
    assert obj["metadata"]["labels"]["mlperf-operator.io/campaign"] == "c1"


def test_a_rerun_asked_in_the_spec_runs_a_finished_point_once_more() -> None:
    s = spec(matrix={"benchmarks": ["resnet50"], "scenarios": ["Offline"]}, retries=0)
    [p] = points("c1", s)
    runs = [run(p, phase="Succeeded")]
    again = spec(matrix=s.matrix.model_dump(), retries=0, reruns={p.name: "2026-12-04"})
    d = decide(gen(2), again, runs, MLPerfCampaignStatus(), at=T0)
    [(point, attempt)] = d.create
    assert attempt == 1 and d.status.points[0].run == f"{p.name}-r1" and d.events[0][1] == "Rerun"
    made = build_run(CAMPAIGN, point, attempt)
    assert made["metadata"]["annotations"]["mlperf-operator.io/rerun"] == "2026-12-04"
    made["metadata"]["uid"], made["status"] = "u-2", {"phase": "Succeeded"}
    # The same value again (the field stays in Git): nothing more.
    assert decide(gen(2), again, [*runs, made], MLPerfCampaignStatus(), at=T0).create == []
    # A run still going when the rerun is asked for finishes first.
    busy = [run(p, phase="Running")]
    assert decide(gen(2), again, busy, MLPerfCampaignStatus(), at=T0).create == []
