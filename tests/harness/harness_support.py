"""Helpers shared by the harness tests (importable: the test directory is on sys.path)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlperf_harness.backends.base import Backend
from mlperf_harness.benchmarks.base import MODEL
from mlperf_harness.config import build_config
from mlperf_harness.loadgen.runner import RunOutput, run_loadgen
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


def answers(log_dir: Path) -> dict[int, str]:
    """qsl_idx -> response bytes (hex) of an accuracy log."""
    return {int(e["qsl_idx"]): e["data"] for e in json.loads((log_dir / "mlperf_log_accuracy.json").read_text())}


def run_direct(ws: Any, scenario: str, mode: str, factory: Callable[[], Backend], **cfg_update: Any) -> RunOutput:
    """One LoadGen run of ``ws`` with backends from ``factory`` and harness-config fields changed."""
    cfg = build_config(ws.spec, scenario).model_copy(update=cfg_update)
    models = ws.model_paths(scenario) if ws.spec.backend != "null" else {MODEL: Path("/dev/null")}
    return run_loadgen(cfg, mode, ws.harness_dir(scenario, mode), ws.bench, ws.preprocessed_dir, models, factory)


def pooled_features(backend: Any, feeds: dict[str, Any]) -> Any:
    """The global-average-pooled features (N, C) as float64 numpy that an image-path pytorch
    backend's model computes for ``feeds`` (load it without CUDA graphs: a replay runs no hooks).
    Better conditioned than the synthetic model's softmax, whose calibrated margins are tiny."""
    import numpy as np

    [pool] = [m for m in backend._model.modules() if "GlobalAveragePool" in type(m).__name__]
    seen: list[Any] = []
    hook = pool.register_forward_hook(lambda mod, args, out: seen.append(out.detach().float().reshape(len(out), -1)))
    try:
        backend.predict(feeds)
    finally:
        hook.remove()
    return np.concatenate([s.cpu().numpy() for s in seen]).astype(np.float64)
