"""resnet50 through the harness with the pytorch backend on a GPU (fp16, channels-last, CUDA graphs).

    python3 benchmarks/pytorch_gpu.py [--batch 256] [--seconds 10] [--precision fp16]

The synthetic ResNet-50 (real architecture) converted from ONNX with onnx2torch; Offline
performance (LoadGen, shortened duration) and accuracy against the FP32 model's own labels.
"""

from __future__ import annotations

import argparse
import shutil

from _common import machine, stamp, workspace
from mlperf_harness import steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--expected-qps", type=float, default=5000)
    args = ap.parse_args()
    over = {
        "backend": "pytorch",
        "precision": args.precision,
        "batchSize": args.batch,
        "system": {"gpuProduct": "NVIDIA-H200", "gpuCount": 1},
        "testModes": ["PerformanceOnly", "AccuracyOnly"],
        "loadgen": {"minDurationMs": int(args.seconds * 1000), "minQueryCount": 1, "expectedQps": args.expected_qps},
    }
    ws = workspace(f"bench-torch-{args.precision}-b{args.batch}", **over)
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    print(f"pytorch backend, {args.precision}, batch {args.batch}, {machine()}, {stamp()}")
    [perf] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    print(f"  Offline: {perf.samplesPerSecond:,.1f} samples/s {perf.resultValidity} on {perf.device} ({perf.backend})")
    [acc] = steps.run_harness(ws, "Offline", "AccuracyOnly").results
    print(f"  accuracy vs FP32 labels: {acc.accuracy:.3f}%")


if __name__ == "__main__":
    main()
