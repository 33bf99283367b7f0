"""The cache index records what the pods wrote, and answers the operator's plan with it."""

from __future__ import annotations

import json

from mlperf_harness.results import ProducedArtifact
from mlperf_operator import cacheindex

PLANNED = "cache/engine/resnet50-onnxruntime-fp32-b1024-aaaa"  # the operator's plan: an H200's batch
MADE = ProducedArtifact(kind="engine", key="resnet50-onnxruntime-fp32-b8-bbbb", inputs={"batch": 8, "gpu": "cpu"})


def test_an_entry_is_keyed_by_what_the_pod_wrote_and_answers_the_plan() -> None:
    key, value = cacheindex.record({}, PLANNED, MADE, "run-a/build-engine-fp32-b1024")
    assert key == "engine.resnet50-onnxruntime-fp32-b8-bbbb"
    entry = json.loads(value)
    assert entry["relpath"] == MADE.relpath and entry["inputs"] == {"batch": 8, "gpu": "cpu"}
    data = {key: value, cacheindex.lease_key("cache/dataset/x"): json.dumps({"run": "b"})}
    assert cacheindex.answers(data) == {PLANNED: MADE.relpath}
    assert set(cacheindex.artifacts(data)) == {MADE.relpath}  # leases are not artifacts


def test_another_plan_answered_by_the_same_artifact_is_added_not_overwritten() -> None:
    key, value = cacheindex.record({}, PLANNED, MADE, "run-a/s")
    other = "cache/engine/resnet50-onnxruntime-fp32-b512-cccc"  # an A100 plan, built on the same CPU
    _, again = cacheindex.record({key: value}, other, MADE, "run-b/s")
    assert cacheindex.answers({key: again}) == {PLANNED: MADE.relpath, other: MADE.relpath}


def test_entries_of_an_older_operator_or_unreadable_ones_answer_nothing() -> None:
    old = {"engine.resnet50-x": json.dumps({"inputs": {}, "producedBy": "r/s"}), "model.y": "not json"}
    assert cacheindex.answers(old) == {} and cacheindex.artifacts(old) == {}
