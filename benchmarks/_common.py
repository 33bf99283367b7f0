"""Shared set-up for the benchmark scripts: a synthetic resnet50 work directory, made once."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
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


def tuned_server(ws: Workspace, probe_seconds: float, max_probes: int, say: Callable[[str], None]) -> dict[str, Any]:
    """The tuner's highest VALID Server target for ``ws`` (a spec with ``tune: true``; probes of
    ``probe_seconds``, retuned from scratch), then a fresh Server run at its finding (0.9 of it)."""
    from mlperf_harness import tune
    from mlperf_harness.loadgen.pool import InstancePool

    shutil.rmtree(ws.run_dir, ignore_errors=True)
    steps.build_engine(ws, "Server")
    with InstancePool() as pool:  # the probes' instances run the fresh run too: loaded once
        ms = int(probe_seconds * 1000)
        found = tune.tune(ws, "Server", retune=True, probe_ms=ms, max_probes=max_probes, say=say, pool=pool)
        [r] = steps.run_harness(ws, "Server", "PerformanceOnly", pool=pool).results  # at the finding
    ms_at = {k: (getattr(r.latencyNs, k) or 0) / 1e6 if r.latencyNs else 0.0 for k in ("p50", "p90", "p99", "p999")}
    p99 = ms_at["p99"]
    say(f"Server tuned {found.value:,.1f} QPS (highest VALID probe {found.measured:,.1f})")
    spread = ", ".join(f"{k} {v:.1f}" for k, v in ms_at.items())
    say(f"fresh Server run at it: {r.resultValidity}, {r.samplesPerSecond or 0:,.1f} samples/s, latency ms {spread}")
    return {
        "serverTuned": found.value,
        "serverMeasured": found.measured,
        "serverValidity": r.resultValidity,
        "serverP99Ms": p99,
    }


# CUDA runtime calls that show how the host drives the GPU: launches, graph replays, copies, waits.
HOST_CALLS = (
    "cudaLaunchKernel",
    "cudaGraphLaunch",
    "cudaMemcpyAsync",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
)


def gpu_profile(run: Callable[[], Any], top: int = 8) -> dict[str, Any]:
    """Where one call's time goes on the GPU: ``run`` once under torch's profiler (CPU and CUDA).
    Returns the kernels' GPU time (ms), the count of each host call of HOST_CALLS, and the ``top``
    kernels by GPU time as (ms, share %, count, name). Kernels inside a CUDA graph replay are traced
    where CUPTI supports it (CUDA 12+)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [
        e
        for e in events
        if e.device_type.name == "CUDA" and e.self_device_time_total > 0 and not e.key.startswith("Activity Buffer")
    ]
    total = sum(e.self_device_time_total for e in kernels) or 1
    largest = sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]
    return {
        "gpuMs": total / 1000,
        "kernelLaunches": sum(e.count for e in kernels),
        "hostCalls": {e.key: e.count for e in events if e.key in HOST_CALLS},
        "top": [
            (e.self_device_time_total / 1000, e.self_device_time_total / total * 100, e.count, e.key[:110])
            for e in largest
        ],
    }


def print_profile(figures: dict[str, Any], label: str) -> None:
    print(
        f"GPU time of {label}: {figures['gpuMs']:.2f} ms in {figures['kernelLaunches']} kernels;",
        f"host calls {figures['hostCalls']}",
    )
    for ms, share, count, name in figures["top"]:
        print(f"  {ms:7.3f} ms {share:5.1f} % x{count:<4} {name}")
