"""resnet50's Server target found by the tuner on one NVIDIA GPU, then a fresh run at it (the pytorch backend).

    python3 benchmarks/gpu_tune.py [--probe-seconds 10] [--seconds 10] [--max-probes 8] [--tries 1]
    python3 benchmarks/gpu_tune.py --timeline 28000                  # latency over a run's time, first

The tuner's probes (real LoadGen runs, bracketed by an Offline probe, bisected on VALID / INVALID) find
the highest VALID Server target at the round's 15 ms; the run then uses 0.9 of it. Each try retunes
from scratch and is followed by a fresh Server run at the tuned target, of --seconds. Synthetic data
and a random-weight ResNet-50: the GPU's figures, not a submission's. Writes $OUT/gpu_tune.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from _common import machine, stamp, workspace
from mlperf_harness import steps, tune
from mlperf_harness.config import build_config
from mlperf_harness.loadgen import sut
from mlperf_harness.spec import LoadGenOverrides
from mlperf_harness.workspace import Workspace

GPU = {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}
T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"  [{time.perf_counter() - T0:5.0f} s] {text}", flush=True)


def timeline(ws: Workspace, qps: float, seconds: float) -> None:
    """A Server run at ``qps`` whose every sample's latency (issue to response, as the SUT sees them)
    is recorded, printed per window of the run: does a start-up stall set the percentile?"""
    issued: dict[int, float] = {}
    done: dict[int, float] = {}
    issue, respond = sut.HarnessSUT.issue, sut.respond

    def timed_issue(self: sut.HarnessSUT, ids: list[int], indices: list[int]) -> None:
        now = time.perf_counter()
        issued.update(dict.fromkeys(ids, now))
        issue(self, ids, indices)

    def timed_respond(ids: np.ndarray, out: object) -> None:
        respond(ids, out)  # type: ignore[arg-type]
        done.update(dict.fromkeys(ids.tolist(), time.perf_counter()))

    sut.HarnessSUT.issue, sut.respond = timed_issue, timed_respond  # type: ignore[method-assign]
    try:
        over = LoadGenOverrides(targetQps=qps, minDurationMs=int(seconds * 1000), minQueryCount=1)
        cfg = build_config(ws.spec, "Server", over)
        summary, errors, _, _ = steps._execute(ws, cfg, "PerformanceOnly", ws.run_dir / "timeline")
    finally:
        sut.HarnessSUT.issue, sut.respond = issue, respond  # type: ignore[method-assign]
    ids = [i for i in issued if i in done]
    t0 = min(issued.values())
    at = np.array([issued[i] - t0 for i in ids])
    lat = np.array([done[i] - issued[i] for i in ids]) * 1000
    verdict = summary.values.get("Result is") if summary else errors
    say(
        f"timeline at {qps:,.0f} QPS, {seconds:g} s: LoadGen {verdict}; {len(ids):,} samples; "
        f"p99 {np.percentile(lat, 99):.1f} ms"
    )
    edges = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 1e9]
    for lo, hi in itertools.pairwise(edges):
        sel = lat[(at >= lo) & (at < hi)]
        if len(sel):
            say(
                f"  issued {lo:5.2f}-{min(hi, at.max()):5.2f} s: {len(sel):7,} samples, p50 {np.median(sel):6.2f} ms, "
                f"p99 {np.percentile(sel, 99):6.2f} ms, max {sel.max():7.2f} ms"
            )
    for skip in (0.25, 0.5, 1.0):
        sel = lat[at >= skip]
        say(f"  p99 without the first {skip:g} s: {np.percentile(sel, 99):.2f} ms")
    slow = at[lat > 15.0]
    if len(slow):
        say(f"  samples over 15 ms: {len(slow):,}, issued between {slow.min():.3f} and {slow.max():.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe-seconds", type=float, default=10.0)  # 5 s probes caught latency spikes, see BENCHMARKS.md
    ap.add_argument("--seconds", type=float, default=10.0, help="the fresh Server run at the tuned target")
    ap.add_argument("--max-probes", type=int, default=8)
    ap.add_argument("--tries", type=int, default=1)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--timeline", type=float, nargs="*", default=[], help="first, Server runs at these QPS, timed")
    ap.add_argument("--margin", type=float, default=tune.DEFAULT_MARGIN)
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
        for qps in args.timeline if i == 0 else []:
            timeline(ws, qps, args.probe_seconds)
        found = tune.tune(
            ws,
            "Server",
            retune=True,
            probe_ms=int(args.probe_seconds * 1000),
            max_probes=args.max_probes,
            margin=args.margin,
            say=say,
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
