"""resnet50's Server target found by the tuner on one NVIDIA GPU, then a fresh run at it (the pytorch backend).

    python3 benchmarks/gpu_tune.py [--probe-seconds 5] [--seconds 10] [--max-probes 8] [--tries 1]

The tuner's probes (real LoadGen runs, bracketed by an Offline probe, bisected on VALID / INVALID) find
the highest VALID Server target at the round's 15 ms; the run then uses 0.9 of it. Each try retunes
from scratch and is followed by a fresh Server run at the tuned target, of --seconds. Synthetic data
and a random-weight ResNet-50: the GPU's figures, not a submission's. Writes $OUT/gpu_tune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from _common import machine, stamp, workspace
from mlperf_harness import steps, tune

GPU = {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}
T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"  [{time.perf_counter() - T0:5.0f} s] {text}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe-seconds", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="the fresh Server run at the tuned target")
    ap.add_argument("--max-probes", type=int, default=8)
    ap.add_argument("--tries", type=int, default=1)
    ap.add_argument("--samples", type=int, default=1024)
    args = ap.parse_args()
    print(f"gpu_tune: {stamp()}, {machine()}", flush=True)
    tries = []
    for i in range(args.tries):
        ws = workspace(
            f"gpu-tune-{i}",
            backend="pytorch",
            precision="fp16",
            category="datacenter",
            scenarios=["Server"],
            system=GPU,
            tune=True,
            dataset={"synthetic": {"samples": args.samples}},
            loadgen={"minDurationMs": int(args.seconds * 1000), "minQueryCount": 1},
        )
        shutil.rmtree(ws.run_dir, ignore_errors=True)
        steps.build_engine(ws, "Server")
        found = tune.tune(
            ws, "Server", retune=True, probe_ms=int(args.probe_seconds * 1000), max_probes=args.max_probes, say=say
        )
        say(f"try {i + 1}: {found.describe()}")
        [r] = steps.run_harness(ws, "Server", "PerformanceOnly").results  # reuses the finding
        p99 = (r.latencyNs.p99 or 0) / 1e6 if r.latencyNs else 0.0
        say(
            f"try {i + 1}: fresh {args.seconds:g} s run at {found.value:,.0f} QPS: {r.resultValidity}, p99 {p99:.1f} ms"
        )
        tries.append(
            {
                "tuned": found.value,
                "measured": found.measured,
                "probes": [p.model_dump() for p in found.probes],
                "run": {"validity": r.resultValidity, "qps": r.samplesPerSecond, "p99Ms": p99, "seconds": args.seconds},
            }
        )
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_tune.json").write_text(json.dumps(tries, indent=1))
    valid = sum(t["run"]["validity"] == "VALID" for t in tries)
    print(f"\n{valid} of {len(tries)} fresh runs at the tuned target were VALID")
    for t in tries:
        print(
            f"| tuned {t['tuned']:,.0f} QPS (highest VALID probe {t['measured']:,.0f}, {len(t['probes'])} probes) | "
            f"fresh run {t['run']['validity']}, p99 {t['run']['p99Ms']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
