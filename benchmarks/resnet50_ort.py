"""resnet50 with onnxruntime: Offline samples/s through the harness vs a plain onnxruntime loop.

    .venv/bin/python benchmarks/resnet50_ort.py [--seconds 20] [--batches 1 2 4 8 16 32]

Same process, same model (the synthetic ResNet-50 of the real architecture), same preprocessed
samples, same session options. The plain loop is timed at each batch size; the harness then runs
LoadGen Offline at the loop's best batch size (warm-up excluded on both sides).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from _common import images, machine, offline_run, stamp, workspace


def plain_loop(model: str, data: np.ndarray, batch: int, seconds: float) -> float:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(data[:batch])
    for _ in range(2):
        sess.run(["ArgMax:0"], {name: x})
    n, start = 0, time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        lo = (i * batch) % (len(data) - batch + 1)
        sess.run(["ArgMax:0"], {name: np.ascontiguousarray(data[lo : lo + batch])})
        n += batch
        i += 1
    return n / (time.perf_counter() - start)


def harness_run(best_batch: int, seconds: float, expected: float, tag: str) -> tuple[float, str]:
    return offline_run(f"bench-ort-harness-{tag}", seconds, expected, batchSize=best_batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each timed run")
    ap.add_argument("--sweep-seconds", type=float, default=4.0, help="plain loop time per batch size in the sweep")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=3, help="alternating plain/harness pairs")
    args = ap.parse_args()
    ws = workspace("bench-ort-prepare")
    data = images(ws)  # in RAM, as the harness's QSL holds it
    model = str(ws.bench.model_file(ws.model_dir))
    print(f"resnet50 onnxruntime {ort.__version__} Offline, {len(data)} synthetic samples, {machine()}, {stamp()}")
    sweep = {b: plain_loop(model, data, b, args.sweep_seconds) for b in args.batches}
    for b, v in sweep.items():
        print(f"  sweep: plain loop batch {b:>3}: {v:8.2f} samples/s")
    best = max(sweep, key=lambda b: sweep[b])
    ratios = []
    # Alternate the two so that load from other processes on a shared machine hits both alike.
    for i in range(args.rounds):
        plain = plain_loop(model, data, best, args.seconds)
        harness, validity = harness_run(best, args.seconds, plain, str(i))
        ratios.append(harness / plain)
        print(f"  round {i + 1}: plain {plain:7.2f}  harness {harness:7.2f} ({validity})  ratio {harness / plain:.3f}")
    print(
        f"batch {best}: harness / plain loop, median of {len(ratios)} rounds = {statistics.median(ratios):.3f} "
        "(goal >= 0.95)"
    )


if __name__ == "__main__":
    main()
