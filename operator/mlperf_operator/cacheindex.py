"""The cache index of a claim (a ConfigMap): which artifacts the claim holds, and who makes one right now.

Who owns an artifact's key: the step that writes it. The operator plans each step's artifact from the
manifest alone, but the pod keys it from the system it really runs on (its node's GPU, or none) and the
backend version its image installed, which the operator cannot know; planning both from the same inputs
would mean guessing the image's contents. So a producing step reports the artifact it wrote in its
outcome, and the index records exactly that, under the artifact's own key, with the planned artifacts
("requests") it answers, which is how a later run's plan finds it:

    engine.resnet50-onnxruntime-fp32-b8-<digest>: {"relpath": "cache/engine/resnet50-onnxruntime-fp32-b8-<digest>",
        "inputs": {...what the pod keyed it from...}, "requests": ["cache/engine/resnet50-...-b1024-<digest>"],
        "producedBy": "<run>/<step>", "at": "..."}
    producing.engine.resnet50-onnxruntime-fp32-b1024-<digest>: {"run": ..., "uid": ..., "step": ..., "at": ...}

A lease names the planned artifact (one producer per request across runs); it is given back when its Job
ends. Pure: the controller reads and patches the ConfigMap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlperf_harness.results import ProducedArtifact

from .status import now

LEASE_PREFIX = "producing."  # index key of an artifact's producer while its Job runs


def index_key(relpath: str) -> str:
    """A ConfigMap key for an artifact (keys allow no '/')."""
    return relpath.removeprefix("cache/").replace("/", ".")


def lease_key(planned: str) -> str:
    return LEASE_PREFIX + index_key(planned)


def _entry(value: str | None) -> dict[str, Any]:
    try:
        entry = json.loads(value or "{}")
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def artifacts(data: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The artifacts the index says are on the claim, by relpath (leases and unreadable entries left out)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        entry = _entry(value)
        if not key.startswith(LEASE_PREFIX) and isinstance(entry.get("relpath"), str):
            out[entry["relpath"]] = entry
    return out


def answers(data: Mapping[str, str]) -> dict[str, str]:
    """Planned artifact (relpath) -> the artifact on the claim that answers it. An entry without requests (an
    older operator's, keyed by its own plan) answers nothing: the step's Job runs and finds out."""
    return {request: relpath for relpath, entry in artifacts(data).items() for request in entry.get("requests", [])}


def record(data: Mapping[str, str], planned: str, made: ProducedArtifact, produced_by: str) -> tuple[str, str]:
    """The entry (key, value) for an artifact a step reported it wrote, answering `planned` as well as what it
    answered before. `data` is the index as read in this reconcile: another run recording the same artifact
    in between costs its request one cache miss, after which its own pod finds the artifact and it is added."""
    key = index_key(made.relpath)
    requests = sorted({*_entry(data.get(key)).get("requests", []), planned})
    value = {"relpath": made.relpath, "inputs": made.inputs, "requests": requests, "producedBy": produced_by}
    return key, json.dumps({**value, "at": now()})


def lease(run: dict[str, Any], step: str) -> str:
    meta = run["metadata"]
    return json.dumps({"run": meta["name"], "uid": meta["uid"], "step": step, "at": now()})
