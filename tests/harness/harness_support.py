"""Helpers shared by the harness tests (importable: the test directory is on sys.path)."""

from __future__ import annotations

import copy
import os
from typing import Any

from mlperf_harness.spec import MLPerfRunSpec

SAMPLES = 32
BASE: dict[str, Any] = {
    "benchmark": "resnet50",
    "category": "edge",
    "scenarios": ["Offline"],
    "storage": {"create": {}},
    "system": {"gpuCount": 0},
    "dataset": {"synthetic": {"samples": SAMPLES}},
    "batchSize": 8,
    "audits": [],
}


MERGED = ("loadgen", "system", "submission")  # other keys (dataset, model: one source each) replace


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if k in MERGED and isinstance(out.get(k), dict) else v
    return out


def make_spec(**over: Any) -> MLPerfRunSpec:
    return MLPerfRunSpec.model_validate(merge(BASE, over))


# Subprocesses of the tests get the caller's PYTHONPATH only (where the package is not installed).
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
