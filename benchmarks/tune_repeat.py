"""How often a full Server run at the tuner's target is VALID: N tries of tune (fresh probes) + run.

    .venv/bin/python benchmarks/tune_repeat.py [--tries 10] [--pace 0.005] [--instances 2] [--seconds 3]

Each try retunes (Offline bracket + Server bisection, 2 s probes), then runs Server through
run-harness with ``tune: true`` at the found target (reused from the cache). The backend is the null
backend paced at ``--pace`` s per batch of 1 in ``--instances`` instances (capacity at most
instances / pace samples/s on any machine), on bert's synthetic set (v1.0: 130 ms p99 bound).
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

from _common import WORKDIR, machine, stamp
from mlperf_harness import steps, tune
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_harness.workspace import Workspace


def workspace(run: str, pace: float, **over: Any) -> Workspace:
    spec: dict[str, Any] = {
        "benchmark": "bert",
        "backend": "null",
        "category": "datacenter",
        "scenarios": ["Server"],
        "testModes": ["PerformanceOnly"],
        "storage": {"create": {}},
        "system": {"gpuCount": 0},
        "dataset": {"synthetic": {"samples": 12, "seed": 5}},
        "model": {"synthetic": {"seed": 5}},
        "audits": [],
        "batchSize": 1,
        "tune": True,
        **over,
    }
    ws = Workspace(MLPerfRunSpec.model_validate(spec), WORKDIR, run, quiet=True)
    for step in (steps.download_data, steps.preprocess):
        step(ws)
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    ws.perf_backend_wrapper = lambda b: Paced(b, pace)
    return ws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tries", type=int, default=10)
    ap.add_argument("--pace", type=float, default=0.005)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="min duration of each full run")
    ap.add_argument("--probe-ms", type=int, default=2000)
    args = ap.parse_args()
    capacity = args.instances / args.pace
    print(
        f"tune + full Server run, null backend paced {args.pace * 1000:g} ms x {args.instances} instances "
        f"(capacity <= {capacity:g}/s), bert v1.0 130 ms p99, {machine()}, {stamp()}"
    )
    loadgen = {"minDurationMs": int(args.seconds * 1000), "minQueryCount": 1}
    valid = 0
    for i in range(args.tries):
        start = time.monotonic()
        ws = workspace(f"tune-repeat-{i}", args.pace, instancesPerDevice=args.instances, loadgen=loadgen)
        found = tune.tune(ws, "Server", retune=True, probe_ms=args.probe_ms, say=lambda _: None)
        [r] = steps.run_harness(ws, "Server", "PerformanceOnly").results
        valid += bool(r.valid)
        p99 = (r.latencyNs.p99 or 0) / 1e6 if r.latencyNs else float("nan")
        print(
            f"  try {i + 1:>2}: tuned {found.value:7.1f} QPS ({found.value / capacity:.0%} of capacity, "
            f"{len(found.probes)} probes), full run {r.resultValidity:7} {r.samplesPerSecond or 0:7.1f}/s "
            f"p99 {p99:6.1f} ms  ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
    print(f"{valid} of {args.tries} full runs at the tuned target were VALID")


if __name__ == "__main__":
    main()
