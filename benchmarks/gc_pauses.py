"""Does Python's garbage collector stall a Server run? Full (generation 2) collections during a
null-backend Server run, in a process whose heap is as large as a GPU run's.

    PYTHONPATH=harness:benchmarks python3 benchmarks/gc_pauses.py [--qps 20000] [--seconds 12] [--ballast 2]

First ``--ballast`` pytorch backends of the synthetic ResNet-50 are loaded (fp32, on the CPU: the
objects a GPU run's instances hold, some 300,000), and a full collection is timed. Then Server
runs at ``--qps`` through run-harness, once as the harness runs and once after ``gc.freeze()``
(the loaded objects out of the collector's reach). Each run prints the full collections seen
during it and their pauses, and LoadGen's p99 and p99.9. A pause of 150 ms here is the length of a
stall that would make a Server run at 15 ms INVALID.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import time
from typing import Any

from _common import machine, stamp, workspace
from mlperf_harness import steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", type=float, default=20_000.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--ballast", type=int, default=2, help="pytorch backends loaded first (needs torch)")
    args = ap.parse_args()
    print(f"null-backend Server at {args.qps:,.0f} QPS, {args.seconds:g} s, {machine()}, {stamp()}")
    held: list[Any] = []
    if args.ballast:
        from mlperf_harness.backends import get_backend

        ws = workspace("gc-ballast")
        for _ in range(args.ballast):
            b = get_backend("pytorch")
            b.load(ws.bench.model_file(ws.model_dir), 8, "fp32", outputs=["softmax_tensor:0"])
            held.append(b)
    start = time.perf_counter()
    gc.collect()
    took = (time.perf_counter() - start) * 1e3
    print(f"{len(gc.get_objects()):,} objects tracked; a full collection took {took:.0f} ms")

    pauses: list[float] = []
    began = [0.0]

    def watch(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                pauses.append((time.perf_counter() - began[0]) * 1e3)

    gc.callbacks.append(watch)
    for label in ("as the harness runs", "after gc.freeze()"):
        if label.startswith("after"):
            gc.collect()
            gc.freeze()
        pauses.clear()
        ws = workspace(
            "gc-null-server", backend="null", category="datacenter", scenarios=["Server"], batchSize=64,
            loadgen={"minDurationMs": int(args.seconds * 1000), "minQueryCount": 100, "targetQps": args.qps},
        )  # fmt: skip
        shutil.rmtree(ws.run_dir, ignore_errors=True)
        [r] = steps.run_harness(ws, "Server", "PerformanceOnly").results
        ms = {k: (getattr(r.latencyNs, k) or 0) / 1e6 if r.latencyNs else 0.0 for k in ("p99", "p999")}
        seen = f"{len(pauses)} full collections" + (f", longest {max(pauses):.0f} ms" if pauses else "")
        print(f"  {label}: {r.resultValidity}, p99 {ms['p99']:.2f} ms, p99.9 {ms['p999']:.2f} ms; {seen}", flush=True)
    gc.callbacks.remove(watch)
    gc.unfreeze()


if __name__ == "__main__":
    main()
