"""Highest Server QPS that stays VALID with the null backend at resnet50's 15 ms p99 bound.

    .venv/bin/python benchmarks/null_server.py [--seconds 10] [--low 5000] [--high 80000]

A bisection over target_qps: each probe is one real LoadGen Server run through run-harness
(v1.0 rules: 15 ms at the 99th percentile; min_duration and min_query_count shortened).
"""

from __future__ import annotations

import argparse
import shutil

from _common import machine, stamp, workspace
from mlperf_harness import steps


def probe(qps: float, seconds: float, batch: int) -> tuple[bool, float, float]:
    run = f"bench-null-server-{int(qps)}"
    ws = workspace(
        run,
        backend="null",
        category="datacenter",
        scenarios=["Server"],
        batchSize=batch,
        loadgen={"minDurationMs": int(seconds * 1000), "minQueryCount": 100, "targetQps": qps},
    )
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    [r] = steps.run_harness(ws, "Server", "PerformanceOnly").results
    p99 = (r.latencyNs.p99 or 0) / 1e6 if r.latencyNs else float("nan")
    return bool(r.valid), r.samplesPerSecond or 0.0, p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--low", type=float, default=5_000)
    ap.add_argument("--high", type=float, default=200_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    print(
        f"null-backend Server, 15 ms p99 bound, min_duration {args.seconds:g} s per probe, "
        f"batch {args.batch}, {machine()}, {stamp()}"
    )
    low, high, best = args.low, args.high, 0.0
    ok, done, p99 = probe(low, args.seconds, args.batch)
    print(f"  target {low:>8,.0f}: {'VALID' if ok else 'INVALID':8} completed {done:>9,.0f}/s  p99 {p99:.2f} ms")
    if not ok:
        print("lowest probe INVALID; lower --low")
        return
    best = done
    for _ in range(args.steps):
        mid = (low + high) / 2
        ok, done, p99 = probe(mid, args.seconds, args.batch)
        print(f"  target {mid:>8,.0f}: {'VALID' if ok else 'INVALID':8} completed {done:>9,.0f}/s  p99 {p99:.2f} ms")
        if ok:
            low, best = mid, max(best, done)
        else:
            high = mid
    print(f"highest VALID target_qps: {low:,.0f} (completed {best:,.0f} samples/s; goal >= 20,000)")


if __name__ == "__main__":
    main()
