"""Shared set-up for the benchmark scripts: a synthetic resnet50 work directory, made once."""

from __future__ import annotations

import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from mlperf_harness import steps
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_harness.workspace import Workspace

WORKDIR = Path(os.environ.get("MLPERF_BENCH_WORKDIR", "/tmp/mlperf-bench-work"))


def spec(**over: Any) -> MLPerfRunSpec:
    base: dict[str, Any] = {
        "benchmark": "resnet50",
        "category": "edge",
        "scenarios": ["Offline"],
        "testModes": ["PerformanceOnly"],
        "storage": {"create": {}},
        "system": {"gpuCount": 0},
        "dataset": {"synthetic": {"samples": 64}},
        "audits": [],
    }
    base.update(over)
    return MLPerfRunSpec.model_validate(base)


def workspace(run: str, **over: Any) -> Workspace:
    ws = Workspace(spec(**over), WORKDIR, run, quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        step(ws)
    return ws


def images(ws: Workspace) -> np.ndarray:
    """resnet50's preprocessed images, (N, 3, 224, 224), in RAM."""
    from mlperf_harness.benchmarks.resnet50 import INPUT

    return np.asarray(ws.samples().fixed[INPUT])


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def offline_run(run: str, seconds: float, expected: float, **over: Any) -> tuple[float, str]:
    """One fresh Offline performance run through the harness: (samples/s, VALID or INVALID)."""
    ws = workspace(
        run, loadgen={"minDurationMs": int(seconds * 1000), "minQueryCount": 1, "expectedQps": expected}, **over
    )
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    [r] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    return r.samplesPerSecond or 0.0, r.resultValidity
