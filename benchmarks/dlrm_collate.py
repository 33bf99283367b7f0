"""dlrm's collate of one GPU batch: the host work per batch that held the GPU harness to 0.38-0.48
of its plain loop (BENCHMARKS.md).

    PYTHONPATH=harness:benchmarks .venv/bin/python benchmarks/dlrm_collate.py [--users 249] [--rounds 3]

Times ``batching.collate`` of ``--users`` synthetic users (100 to 429 rows each: a batch of about
65,000 rows) taken from a loaded set of 512 (the QSL's packed rows, ``SampleList``), against the
collate before 926efd2 (each sample's ids transposed into the batch, one numpy call per
sample: written out here as the baseline), checks they give the same arrays, and times both
again while another thread runs Python (as the SUT's other workers and LoadGen do), at Python's
default GIL switch interval (5 ms) and at the SUT's (``sut.SWITCH_INTERVAL_S``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from _common import machine, stamp
from mlperf_harness.benchmarks.dlrm import batching
from mlperf_harness.benchmarks.dlrm.criteo import DENSE, SPARSE
from mlperf_harness.loadgen.sut import SWITCH_INTERVAL_S
from mlperf_harness.samples import Packed, SampleList


def per_sample(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The baseline: a numpy call or two per sample."""
    rows = sum(len(s["dense_x"]) for s in samples)
    indices = np.empty((SPARSE, rows), dtype=np.int64)
    offsets = np.empty((SPARSE, rows), dtype=np.int64)
    offsets[:] = np.arange(rows, dtype=np.int64)
    at = 0
    for s in samples:
        n = len(s["indices"])
        indices[:, at : at + n] = s["indices"].T
        at += n
    return {"dense_x": np.concatenate([s["dense_x"] for s in samples]), "offsets": offsets, "indices": indices}


def millis(fn: Callable[[], object], reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=249)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    loaded = [
        {
            "dense_x": rng.random((r, DENSE), dtype=np.float32),
            "indices": rng.integers(0, 1 << 30, (r, SPARSE), dtype=np.int32),
        }
        for r in rng.integers(100, 430, 512).tolist()
    ]
    packed = {k: Packed.of([s[k] for s in loaded]) for k in loaded[0]}
    views = [{k: p.sample(i) for k, p in packed.items()} for i in range(len(loaded))]
    at = rng.choice(len(loaded), args.users, replace=False)
    scratch: dict[str, np.ndarray] = {}
    plain = [loaded[i] for i in at]

    def new() -> object:
        return batching.collate(SampleList([views[i] for i in at], packed, at, scratch))

    def old() -> object:
        return per_sample(plain)

    got, want = batching.collate(SampleList([views[i] for i in at], packed, at, scratch)), old()
    assert all(np.array_equal(got[k], want[k]) for k in want), "collate differs from the baseline"
    rows = len(want["dense_x"])
    print(f"dlrm collate, {args.users} users, {rows} rows, {machine()}, {stamp()}")
    default = sys.getswitchinterval()
    stop = threading.Event()

    def python() -> None:
        while not stop.is_set():
            sum(range(50))

    for r in range(args.rounds):
        figures = [f"alone: per sample {millis(old, 20):.2f} ms, collate {millis(new, 20):.2f} ms"]
        beside = threading.Thread(target=python, daemon=True)
        beside.start()
        for interval in (default, SWITCH_INTERVAL_S):
            sys.setswitchinterval(interval)
            a, b = millis(old, 4), millis(new, 4)
            figures.append(f"beside Python, switch {interval * 1e3:g} ms: per sample {a:.1f} ms, collate {b:.1f} ms")
        stop.set()
        beside.join()
        stop.clear()
        sys.setswitchinterval(default)
        print(f"  round {r + 1}: " + "; ".join(figures))


if __name__ == "__main__":
    main()
