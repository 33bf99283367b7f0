"""The other benchmarks' full-size synthetic models on one NVIDIA GPU through the pytorch backend's general
path: per benchmark, the plain loop and the harness Offline through LoadGen, in the same run.

    python3 benchmarks/gpu_models.py [--benchmarks bert 3d-unet ...] [--samples 64] [--seconds 10]
    python3 benchmarks/gpu_models.py --size small --samples 8 --seconds 2   # the script itself, on a CPU

1. The work directory: the spec's synthetic data and the full-size synthetic model (`model.synthetic.size:
   full`), prepared by the harness's own steps (the answers come from the FP32 model on the CPU).
2. The plain loop: the benchmark's own batches (its collate and infer, every model part on the GPU in
   fp16), one after another for half of --seconds: what the backend does without LoadGen or the SUT.
3. The harness: LoadGen Offline for --seconds at that batch size.

Synthetic data and random weights of the real architectures: the GPU's figures, not a submission's.
Prints a table last; writes $OUT/gpu_models.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from _common import machine, stamp, workspace
from mlperf_harness import steps
from mlperf_harness.backends import get_backend
from mlperf_harness.benchmarks.base import MODEL

# (suite, category, batch); the anchor: the best published per-GPU Offline figure of the benchmark's round.
SETUP: dict[str, tuple[str, str, int]] = {
    "bert": ("v6.1", "edge", 64),
    "3d-unet": ("v6.1", "edge", 1),
    "ssd-resnet34": ("v1.0", "datacenter", 16),
    "rnnt": ("v1.0", "datacenter", 64),
}
ANCHORS = {"bert": ("bert-99 Offline, H200 v4.1 per GPU", 9_224.0), "3d-unet": ("3d-unet-99 Offline, H200 v4.1", 6.84)}
GPU = {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}
T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"  [{time.perf_counter() - T0:5.0f} s] {text}", flush=True)


def plain_loop(ws: Any, batch: int, seconds: float) -> dict[str, Any]:
    bench, store = ws.bench, ws.samples()
    parts = {}
    for part, path in bench.model_files(ws.model_dir).items():
        b = get_backend("pytorch")
        outputs = [s.name for s in bench.outputs] if part == MODEL else ()
        b.load(path, batch, "fp16", outputs=outputs)
        parts[part] = b
    # Batches of distinct samples in turn (3d-unet's cases differ in size).
    batches = [
        bench.collate([store.sample((k * batch + i) % store.count) for i in range(batch)])
        for k in range(max(1, min(8, store.count // batch)))
    ]
    for feeds in batches:
        bench.infer(parts, feeds)  # warm: kernels chosen, graphs captured where the shapes allow
    first = next(iter(parts.values()))
    general = getattr(first, "_general", first)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        bench.infer(parts, batches[(n // batch) % len(batches)])  # answers come back: each call ends the GPU's work
        n += batch
    rate = n / (time.perf_counter() - start)
    facts = {"graphed": getattr(general, "graphed", None), "eager": getattr(general, "eager_reason", "")}
    facts["attention"] = getattr(general, "attention", None)
    for b in parts.values():
        b.close()
    return {"plainSamplesPerSecond": rate, **facts}


def measure(name: str, samples: int, seconds: float, size: str) -> dict[str, Any]:
    suite, category, batch = SETUP[name]
    t = time.perf_counter()
    spec = {
        "benchmark": name,
        "suite": suite,
        "category": category,
        "backend": "pytorch",
        "precision": "fp16",
        "batchSize": batch,
        "system": GPU,
        "model": {"synthetic": {"size": size}},
        "dataset": {"synthetic": {"samples": samples}},
    }
    ws = workspace(f"gpu-{name}", **spec)
    say(f"{name}: data, full-size model and preprocessing in {time.perf_counter() - t:.0f} s")
    out: dict[str, Any] = {"benchmark": name, "batch": batch, "samples": samples, "size": size}
    out.update(plain_loop(ws, batch, seconds / 2))
    say(f"{name}: plain loop {out['plainSamplesPerSecond']:,.1f} samples/s ({out})")
    # Offline's one query is sized from the expected rate: above the plain loop's, the run lasts its minimum.
    expected = 3 * out["plainSamplesPerSecond"]
    loadgen = {"minDurationMs": int(seconds * 1000), "minQueryCount": 1, "expectedQps": expected}
    ws = workspace(f"gpu-{name}", **spec, loadgen=loadgen)
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    steps.build_engine(ws, "Offline")
    [r] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    out["harnessSamplesPerSecond"], out["validity"] = r.samplesPerSecond or 0.0, r.resultValidity
    out["ratio"] = out["harnessSamplesPerSecond"] / out["plainSamplesPerSecond"]
    if name in ANCHORS:
        label, anchor = ANCHORS[name]
        out["anchor"], out["anchorRatio"] = label, out["harnessSamplesPerSecond"] / anchor
    rate = out["harnessSamplesPerSecond"]
    say(f"{name}: harness Offline {rate:,.1f} samples/s {r.resultValidity}, ratio {out['ratio']:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", nargs="*", default=list(SETUP), choices=list(SETUP))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", choices=("full", "small"), default="full", help="small: a check of the script")
    args = ap.parse_args()
    print(f"gpu_models: {stamp()}, {machine()}", flush=True)
    results = []
    for name in args.benchmarks:
        try:
            results.append(measure(name, args.samples, args.seconds, args.size))
        except Exception as exc:  # one benchmark's failure is reported, the others still measured
            say(f"{name}: FAILED {type(exc).__name__}: {exc}")
            results.append({"benchmark": name, "error": f"{type(exc).__name__}: {exc}"})
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_models.json").write_text(json.dumps(results, indent=1))
    print("\n| benchmark | batch | plain loop | harness Offline | harness / plain | anchor |")
    for r in results:
        if "error" in r:
            print(f"| {r['benchmark']} | | failed: {r['error'][:80]} | | | |")
            continue
        anchor = f"{r['anchorRatio']:.3f} of {r['anchor']}" if "anchor" in r else "-"
        print(
            f"| {r['benchmark']} | {r['batch']} | {r['plainSamplesPerSecond']:,.1f} | "
            f"{r['harnessSamplesPerSecond']:,.1f} {r['validity']} | {r['ratio']:.3f} | {anchor} |"
        )


if __name__ == "__main__":
    main()
